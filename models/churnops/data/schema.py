"""The raw-table contract: the customer event tables the platform reads, and their calendar.

This is the one definition of the raw data: table and column names, types,
nullability, allowed values and ranges, plus the calendar of snapshots and
label horizon. The generator writes tables in this shape, validation checks
them against it, and the feature engine reads them through it, so a user's
own event tables in this schema get the same 116 features.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import pandas as pd

from churnops.errors import InvalidInputError

ENTITY = "customer_id"  # join key of every table
TIMESTAMP = "event_timestamp"  # snapshot time of labels and features (UTC)
TARGET = "churned_30d"  # the label: churned within the horizon after the snapshot

SEGMENTS = ("smb", "mid_market", "enterprise")
PLANS = ("starter", "growth", "business", "enterprise")
REGIONS = ("na", "emea", "apac", "latam")
INDUSTRIES = ("software", "finance", "healthcare", "retail", "manufacturing", "education", "media")
CONTRACTS = ("monthly", "annual", "multi_year")
PAYMENT_METHODS = ("card", "invoice", "ach")
CHANNELS = ("organic", "paid", "partner", "outbound")
TICKET_CATEGORIES = ("billing", "bug", "how_to", "outage")
SEVERITIES = ("low", "medium", "high", "critical")
INVOICE_STATUSES = ("paid", "failed")
PRODUCT_FEATURES = 20  # distinct product features a customer can adopt (bounds account_daily.features_used)

DAILY_METRICS = ("active_users", "logins", "session_minutes", "api_calls", "features_used", "reports_created")

# Categorical customer attributes that become features as they are.
CUSTOMER_CATEGORIES: dict[str, tuple[str, ...]] = {
    "segment": SEGMENTS,
    "plan": PLANS,
    "region": REGIONS,
    "industry": INDUSTRIES,
    "contract_type": CONTRACTS,
    "payment_method": PAYMENT_METHODS,
    "acquisition_channel": CHANNELS,
}


@dataclass(frozen=True)
class Column:
    name: str
    dtype: str  # "int64" | "float64" | "string" | "bool" | "timestamp" (UTC)
    nullable: bool = False
    allowed: tuple[str | int, ...] | None = None
    min: float | None = None
    max: float | None = None
    description: str = ""


def _categories() -> tuple[Column, ...]:
    return tuple(Column(name, "string", allowed=values) for name, values in CUSTOMER_CATEGORIES.items())


TABLES: dict[str, tuple[Column, ...]] = {
    "customers": (
        Column(ENTITY, "int64", description="customer account id (unique)"),
        Column("signup_date", "timestamp"),
        *_categories(),
        Column("company_size", "int64", min=1, max=10_000_000, description="employees"),
        Column("seats_purchased", "int64", min=1),
        Column("list_price_per_seat", "float64", min=0),
        Column("discount_pct", "float64", min=0, max=100),
        Column("mrr", "float64", min=0, description="monthly recurring revenue at signup terms"),
        Column("auto_renew", "bool"),
        Column("has_dedicated_csm", "bool"),
        Column("onboarding_completed", "bool"),
        Column("churn_date", "timestamp", nullable=True, description="day the customer left; null while active"),
        Column("renewal_date", "timestamp", description="a renewal date; renewals recur every contract_length_days"),
        Column("contract_length_days", "int64", min=1),
    ),
    "account_daily": (
        Column(ENTITY, "int64"),
        Column("date", "timestamp", description="day (UTC midnight); one row per customer and day while active"),
        Column("seats_purchased", "int64", min=1),
        Column("mrr", "float64", min=0),
        Column("active_users", "int64", min=0),
        Column("logins", "int64", min=0),
        Column("session_minutes", "float64", min=0),
        Column("api_calls", "int64", min=0),
        Column("features_used", "int64", min=0, max=PRODUCT_FEATURES),
        Column("reports_created", "int64", min=0),
    ),
    "tickets": (
        Column("ticket_id", "string"),
        Column(ENTITY, "int64"),
        Column("created_at", "timestamp"),
        Column("resolved_at", "timestamp"),
        Column("category", "string", allowed=TICKET_CATEGORIES),
        Column("severity", "string", allowed=SEVERITIES),
        Column("resolution_hours", "float64", min=0, max=24 * 90),
        Column("escalated", "bool"),
        Column("csat", "float64", nullable=True, min=1, max=5, description="1-5, null when the customer did not answer"),
    ),
    "invoices": (
        Column(ENTITY, "int64"),
        Column("invoice_date", "timestamp"),
        Column("amount", "float64", min=0),
        Column("status", "string", allowed=INVOICE_STATUSES),
        Column("days_late", "int64", min=0, max=365),
    ),
    "nps": (
        Column(ENTITY, "int64"),
        Column("responded_at", "timestamp"),
        Column("score", "int64", min=0, max=10),
    ),
    "labels": (
        Column(ENTITY, "int64"),
        Column(TIMESTAMP, "timestamp"),
        Column(TARGET, "int64", allowed=(0, 1)),
        Column("mrr", "float64", nullable=True, min=0),
    ),
}
RAW_TABLES = tuple(TABLES)
EVENT_TABLES = tuple(t for t in RAW_TABLES if t != "labels")  # what the feature engine reads


class SchemaError(InvalidInputError):
    """A raw table does not follow the contract; the message names the table and column."""


_KINDS = {"int64": "iu", "float64": "iuf", "bool": "b", "string": "OSU", "timestamp": "M"}


def check_columns(table: str, frame: pd.DataFrame) -> None:
    """Every contract column is present with a compatible type (extra columns are allowed and ignored)."""
    missing = [c.name for c in TABLES[table] if c.name not in frame.columns]
    if missing:
        raise SchemaError(f"lacks column(s) {missing}; see churnops.data.schema.TABLES", field=table)
    for col in TABLES[table]:
        dtype = frame[col.name].dtype
        kind = "O" if isinstance(dtype, pd.StringDtype) else dtype.kind
        if (col.dtype == "float64" and kind == "b") or kind not in _KINDS[col.dtype]:
            raise SchemaError(f"expected {col.dtype}, found {dtype}", field=f"{table}.{col.name}")


@dataclass(frozen=True)
class Calendar:
    """When the history starts, how long it runs, and when snapshots are taken and labelled.

    Day ``d`` is ``start_date + d days`` (UTC). Snapshots are taken every
    ``snapshot_every_days`` from the first day with a full feature window, and
    on the last day of history (the one served); a snapshot is labelled when
    its whole horizon lies inside the history.
    """

    start_date: dt.date
    history_days: int
    snapshot_every_days: int = 30
    feature_window_days: int = 90  # longest feature window; the first snapshot needs this much history
    horizon_days: int = 30  # churn label horizon

    def __post_init__(self) -> None:
        if self.history_days < self.feature_window_days:
            raise InvalidInputError(
                f"history_days={self.history_days} is too short: a snapshot needs {self.feature_window_days} days of history"
            )
        if self.snapshot_every_days < 1:
            raise InvalidInputError(f"snapshot_every_days must be positive, got {self.snapshot_every_days}")

    @property
    def end_date(self) -> dt.date:
        return self.start_date + dt.timedelta(days=self.history_days)

    def snapshot_days(self) -> list[int]:
        """Day indices of feature snapshots; the last one is the end of history (serving)."""
        days = list(range(self.feature_window_days, self.history_days + 1, self.snapshot_every_days))
        if days[-1] != self.history_days:
            days.append(self.history_days)
        return days

    def labelled_snapshot_days(self) -> list[int]:
        """Snapshot days whose whole label horizon lies inside the history."""
        return [d for d in self.snapshot_days() if d + self.horizon_days <= self.history_days]

    def day_timestamp(self, day: int) -> pd.Timestamp:
        return pd.Timestamp(self.start_date, tz="UTC") + pd.Timedelta(days=day)
