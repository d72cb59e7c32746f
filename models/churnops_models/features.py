"""Point-in-time feature engineering.

Every feature of a snapshot at time ``ts`` is computed from events strictly
before ``ts``: daily rows of days ``< ts``, tickets created (and, for
resolution time and CSAT, resolved) before ``ts``, invoices and NPS answers
dated before ``ts``. Windows of 7/30/90 days end just before ``ts``.

The catalog (``FEATURES``) is the single definition of each feature's name,
domain, type, description and lineage; the Feast repository and the feature
catalog document are built from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnops_models.data import DAILY_METRICS, RAW_TABLES, TICKET_CATEGORIES, GeneratorConfig
from churnops_models.parquet import read_parquet

ENTITY = "customer_id"
TIMESTAMP = "event_timestamp"
DOMAINS = ("demographic", "billing", "usage", "support", "engagement")
WINDOWS = (7, 30, 90)
USAGE_METRICS = DAILY_METRICS
RECENCY_CAP_DAYS = 365  # "never seen in the history" is reported as this many days
EPS = 1e-9


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    domain: str
    dtype: str  # "int64" | "float64" | "string"
    description: str
    lineage: str
    nullable: bool = False


def _usage_specs() -> list[FeatureSpec]:
    specs: list[FeatureSpec] = []
    for m in USAGE_METRICS:
        label = m.replace("_", " ")
        for w in WINDOWS:
            specs.append(
                FeatureSpec(
                    f"{m}_mean_{w}d",
                    "usage",
                    "float64",
                    f"Mean daily {label} over the last {w} days",
                    f"account_daily.{m}: mean over days [ts-{w}d, ts)",
                )
            )
        specs.append(
            FeatureSpec(
                f"{m}_trend_7_30",
                "usage",
                "float64",
                f"Ratio of the 7-day to the 30-day mean of daily {label} (below 1: declining)",
                f"account_daily.{m}: mean 7d / mean 30d",
            )
        )
        specs.append(
            FeatureSpec(
                f"{m}_trend_30_90",
                "usage",
                "float64",
                f"Ratio of the 30-day to the 90-day mean of daily {label}",
                f"account_daily.{m}: mean 30d / mean 90d",
            )
        )
    for m in ("logins", "active_users"):
        specs.append(
            FeatureSpec(
                f"{m}_std_30d",
                "usage",
                "float64",
                f"Standard deviation of daily {m.replace('_', ' ')} over 30 days",
                f"account_daily.{m}: std over [ts-30d, ts)",
            )
        )
    for m, col in (("login", "logins"), ("report", "reports_created"), ("api_call", "api_calls")):
        specs.append(
            FeatureSpec(
                f"days_since_last_{m}",
                "usage",
                "int64",
                f"Days since the last day with any {m.replace('_', ' ')} (capped at {RECENCY_CAP_DAYS})",
                f"account_daily.{col} > 0: last day before ts",
            )
        )
    for w in WINDOWS:
        specs.append(
            FeatureSpec(
                f"seat_utilization_{w}d",
                "usage",
                "float64",
                f"Mean daily active users per purchased seat over {w} days",
                f"account_daily.active_users / seats_purchased, mean over {w}d",
            )
        )
    for w in WINDOWS:
        specs.append(
            FeatureSpec(
                f"active_days_{w}d",
                "usage",
                "int64",
                f"Days with at least one login in the last {w} days",
                f"account_daily.logins > 0, count over {w}d",
            )
        )
    specs += [
        FeatureSpec(
            "active_users_max_30d", "usage", "float64", "Peak daily active users over 30 days", "account_daily.active_users: max over 30d"
        ),
        FeatureSpec(
            "weekend_login_share_30d",
            "usage",
            "float64",
            "Share of 30-day logins made on weekends",
            "account_daily.logins on Sat/Sun / all logins, 30d",
        ),
        FeatureSpec(
            "active_users_slope_30d",
            "usage",
            "float64",
            "Least-squares slope of daily active users over 30 days, relative to their mean (per day)",
            "account_daily.active_users: OLS slope / mean, 30d",
        ),
    ]
    return specs


_DEMOGRAPHIC = [
    FeatureSpec("segment", "demographic", "string", "Customer segment (smb, mid_market, enterprise)", "customers.segment"),
    FeatureSpec("plan", "demographic", "string", "Subscription plan", "customers.plan"),
    FeatureSpec("region", "demographic", "string", "Sales region", "customers.region"),
    FeatureSpec("industry", "demographic", "string", "Industry of the customer company", "customers.industry"),
    FeatureSpec("contract_type", "demographic", "string", "Contract type (monthly, annual, multi_year)", "customers.contract_type"),
    FeatureSpec("payment_method", "demographic", "string", "Payment method (card, invoice, ach)", "customers.payment_method"),
    FeatureSpec("acquisition_channel", "demographic", "string", "Channel that acquired the customer", "customers.acquisition_channel"),
    FeatureSpec("company_size", "demographic", "int64", "Number of employees of the customer company", "customers.company_size"),
    FeatureSpec("log_company_size", "demographic", "float64", "Natural log of the number of employees", "log(customers.company_size)"),
    FeatureSpec("tenure_days", "demographic", "int64", "Days since signup", "ts - customers.signup_date"),
    FeatureSpec("tenure_months", "demographic", "float64", "Months since signup", "(ts - customers.signup_date) / 30.44d"),
    FeatureSpec("is_new_customer", "demographic", "int64", "1 when the customer signed up less than 180 days ago", "tenure_days < 180"),
    FeatureSpec(
        "has_dedicated_csm", "demographic", "int64", "1 when a customer success manager is assigned", "customers.has_dedicated_csm"
    ),
    FeatureSpec("onboarding_completed", "demographic", "int64", "1 when onboarding was completed", "customers.onboarding_completed"),
    FeatureSpec("auto_renew", "demographic", "int64", "1 when the contract renews automatically", "customers.auto_renew"),
    FeatureSpec(
        "days_to_renewal", "demographic", "int64", "Days until the next contract renewal", "customers.renewal_date, contract_length_days"
    ),
    FeatureSpec("renewal_within_30d", "demographic", "int64", "1 when the contract renews within 30 days", "days_to_renewal < 30"),
    FeatureSpec("renewal_within_90d", "demographic", "int64", "1 when the contract renews within 90 days", "days_to_renewal < 90"),
]

_BILLING = [
    FeatureSpec("mrr", "billing", "float64", "Monthly recurring revenue on the last day before the snapshot", "account_daily.mrr at ts-1d"),
    FeatureSpec("arr", "billing", "float64", "Annual recurring revenue (12 x MRR)", "12 * mrr"),
    FeatureSpec("seats_purchased", "billing", "int64", "Seats under contract", "account_daily.seats_purchased at ts-1d"),
    FeatureSpec("list_price_per_seat", "billing", "float64", "List price per seat of the plan", "customers.list_price_per_seat"),
    FeatureSpec("discount_pct", "billing", "float64", "Contract discount in percent", "customers.discount_pct"),
    FeatureSpec("price_per_seat_paid", "billing", "float64", "MRR per purchased seat", "mrr / seats_purchased"),
    FeatureSpec("mrr_per_employee", "billing", "float64", "MRR per employee of the customer", "mrr / company_size"),
    FeatureSpec("mrr_change_30d", "billing", "float64", "Relative change of MRR over 30 days", "mrr(ts-1d) / mrr(ts-31d) - 1"),
    FeatureSpec("invoices_90d", "billing", "int64", "Invoices issued in the last 90 days", "invoices: count over 90d"),
    FeatureSpec("failed_payments_30d", "billing", "int64", "Failed payments in the last 30 days", "invoices.status == failed, 30d"),
    FeatureSpec("failed_payments_90d", "billing", "int64", "Failed payments in the last 90 days", "invoices.status == failed, 90d"),
    FeatureSpec(
        "failed_payment_rate_90d", "billing", "float64", "Share of invoices that failed in 90 days", "failed_payments_90d / invoices_90d"
    ),
    FeatureSpec(
        "days_since_last_failed_payment",
        "billing",
        "int64",
        f"Days since the last failed payment (capped at {RECENCY_CAP_DAYS})",
        "invoices.status == failed: last before ts",
    ),
    FeatureSpec("avg_days_late_90d", "billing", "float64", "Mean days late of paid invoices in 90 days", "invoices.days_late, paid, 90d"),
    FeatureSpec("max_days_late_90d", "billing", "int64", "Maximum days late of an invoice in 90 days", "invoices.days_late: max over 90d"),
    FeatureSpec("amount_billed_90d", "billing", "float64", "Amount invoiced in 90 days", "invoices.amount: sum over 90d"),
    FeatureSpec(
        "amount_failed_90d", "billing", "float64", "Amount of failed invoices in 90 days", "invoices.amount where failed: sum over 90d"
    ),
    FeatureSpec(
        "billed_to_mrr_ratio_90d", "billing", "float64", "Amount billed in 90 days relative to 3 x MRR", "amount_billed_90d / (3 * mrr)"
    ),
]

_SUPPORT = (
    [
        FeatureSpec(
            f"tickets_{w}d", "support", "int64", f"Support tickets opened in the last {w} days", f"tickets.created_at in [ts-{w}d, ts)"
        )
        for w in WINDOWS
    ]
    + [
        FeatureSpec(
            f"high_severity_tickets_{w}d",
            "support",
            "int64",
            f"High or critical tickets opened in the last {w} days",
            f"tickets.severity in (high, critical), {w}d",
        )
        for w in (30, 90)
    ]
    + [
        FeatureSpec("critical_tickets_90d", "support", "int64", "Critical tickets opened in 90 days", "tickets.severity == critical, 90d"),
        FeatureSpec(
            "avg_resolution_hours_30d",
            "support",
            "float64",
            "Mean resolution time of tickets resolved in 30 days",
            "tickets.resolution_hours, resolved_at in 30d",
            nullable=True,
        ),
        FeatureSpec(
            "avg_resolution_hours_90d",
            "support",
            "float64",
            "Mean resolution time of tickets resolved in 90 days",
            "tickets.resolution_hours, resolved_at in 90d",
            nullable=True,
        ),
        FeatureSpec(
            "max_resolution_hours_90d",
            "support",
            "float64",
            "Longest resolution time of a ticket resolved in 90 days (0 when none)",
            "tickets.resolution_hours: max, resolved_at in 90d",
        ),
        FeatureSpec("escalations_90d", "support", "int64", "Escalated tickets opened in 90 days", "tickets.escalated, 90d"),
        FeatureSpec("open_tickets", "support", "int64", "Tickets open at the snapshot", "tickets.created_at < ts <= tickets.resolved_at"),
        FeatureSpec(
            "csat_mean_90d",
            "support",
            "float64",
            "Mean CSAT (1-5) of tickets resolved in 90 days",
            "tickets.csat, resolved_at in 90d",
            nullable=True,
        ),
        FeatureSpec("csat_responses_90d", "support", "int64", "CSAT answers on tickets resolved in 90 days", "tickets.csat not null, 90d"),
        FeatureSpec("low_csat_90d", "support", "int64", "CSAT answers of 1 or 2 in 90 days", "tickets.csat <= 2, 90d"),
        FeatureSpec(
            "days_since_last_ticket",
            "support",
            "int64",
            f"Days since the last ticket (capped at {RECENCY_CAP_DAYS})",
            "tickets.created_at: last before ts",
        ),
        FeatureSpec(
            "ticket_trend_30_90",
            "support",
            "float64",
            "Tickets in 30 days relative to a third of the tickets in 90 days",
            "tickets_30d / (tickets_90d / 3)",
        ),
        FeatureSpec("tickets_per_seat_90d", "support", "float64", "Tickets in 90 days per purchased seat", "tickets_90d / seats_purchased"),
    ]
    + [
        FeatureSpec(f"{c}_tickets_90d", "support", "int64", f"Tickets of category {c} in 90 days", f"tickets.category == {c}, 90d")
        for c in TICKET_CATEGORIES
    ]
)

_ENGAGEMENT = [
    FeatureSpec("nps_last", "engagement", "float64", "Latest NPS answer (0-10)", "nps.score: last before ts", nullable=True),
    FeatureSpec("nps_mean_90d", "engagement", "float64", "Mean NPS answer in 90 days", "nps.score: mean over 90d", nullable=True),
    FeatureSpec("nps_responses_90d", "engagement", "int64", "NPS answers in 90 days", "nps: count over 90d"),
    FeatureSpec(
        "days_since_last_nps",
        "engagement",
        "int64",
        f"Days since the latest NPS answer (capped at {RECENCY_CAP_DAYS})",
        "nps.responded_at: last before ts",
    ),
    FeatureSpec("is_nps_detractor", "engagement", "int64", "1 when the latest NPS answer is 0-6", "nps_last <= 6"),
    FeatureSpec("is_nps_promoter", "engagement", "int64", "1 when the latest NPS answer is 9-10", "nps_last >= 9"),
    FeatureSpec(
        "features_used_max_30d",
        "engagement",
        "float64",
        "Most product features used on one day in 30 days",
        "account_daily.features_used: max over 30d",
    ),
    FeatureSpec(
        "feature_adoption_rate_30d",
        "engagement",
        "float64",
        "Share of the product's features used at peak in 30 days",
        "features_used_max_30d / 20",
    ),
    FeatureSpec(
        "feature_breadth_trend_30_90",
        "engagement",
        "float64",
        "Peak features used in 30 days relative to 90 days",
        "max 30d / max 90d of account_daily.features_used",
    ),
    FeatureSpec(
        "logins_per_active_user_30d", "engagement", "float64", "Logins per active user-day in 30 days", "sum logins / sum active_users, 30d"
    ),
    FeatureSpec(
        "minutes_per_login_30d", "engagement", "float64", "Session minutes per login in 30 days", "sum session_minutes / sum logins, 30d"
    ),
    FeatureSpec(
        "reports_per_active_user_30d",
        "engagement",
        "float64",
        "Reports created per active user-day in 30 days",
        "sum reports_created / sum active_users, 30d",
    ),
    FeatureSpec(
        "api_calls_per_seat_30d", "engagement", "float64", "API calls per seat per day in 30 days", "mean api_calls 30d / seats_purchased"
    ),
    FeatureSpec(
        "inactive_streak_days",
        "engagement",
        "int64",
        f"Consecutive days without logins up to the snapshot (capped at {RECENCY_CAP_DAYS})",
        "account_daily.logins == 0 streak ending at ts-1d",
    ),
    FeatureSpec(
        "engagement_score",
        "engagement",
        "float64",
        "Composite health score 0-100 from utilization, adoption, recency and NPS",
        "seat_utilization_30d, feature_adoption_rate_30d, days_since_last_login, nps_last",
    ),
]

FEATURES: tuple[FeatureSpec, ...] = tuple(_DEMOGRAPHIC + _BILLING + _usage_specs() + _SUPPORT + _ENGAGEMENT)
FEATURES_BY_NAME = {f.name: f for f in FEATURES}


def features_of(domain: str) -> list[FeatureSpec]:
    return [f for f in FEATURES if f.domain == domain]


class _Cube:
    """Per-customer daily matrices of one block, with cumulative sums for O(1) windows."""

    def __init__(self, n: int, days: int) -> None:
        self.n, self.days = n, days
        self.cs: dict[str, np.ndarray] = {}
        self.raw: dict[str, np.ndarray] = {}

    def add(self, name: str, matrix: np.ndarray, keep_raw: bool = False) -> None:
        self.cs[name] = np.concatenate([np.zeros((self.n, 1)), np.cumsum(matrix, axis=1)], axis=1)
        if keep_raw:
            self.raw[name] = matrix

    def wsum(self, name: str, s: int, w: int) -> np.ndarray:
        """Sum over days [s-w, s)."""
        out: np.ndarray = self.cs[name][:, s] - self.cs[name][:, max(s - w, 0)]
        return out


@dataclass(frozen=True)
class _Events:
    """Positions and day indices of event rows, for features that are not window sums."""

    tpos: np.ndarray
    tday: np.ndarray
    rday: np.ndarray
    resolution_hours: np.ndarray
    ipos: np.ndarray
    iday: np.ndarray
    days_late: np.ndarray


def _bin(pos: np.ndarray, day: np.ndarray, n: int, days: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Scatter event values into an (n, days) matrix; events outside the history are ignored."""
    ok = (day >= 0) & (day < days) & (pos >= 0)
    flat = pos[ok] * days + day[ok]
    w = None if weights is None else weights[ok]
    return np.bincount(flat, weights=w, minlength=n * days).reshape(n, days).astype(float)


def _last_day(matrix: np.ndarray) -> np.ndarray:
    """For each (customer, day): the last day <= day with a non-zero value, or -1."""
    marks = np.where(matrix > 0, np.arange(matrix.shape[1])[None, :], -1)
    return np.maximum.accumulate(marks, axis=1)


def _days_since(last: np.ndarray, s: int) -> np.ndarray:
    lastd = last[:, s - 1]
    return np.where(lastd < 0, RECENCY_CAP_DAYS, np.minimum(s - lastd, RECENCY_CAP_DAYS)).astype(np.int64)


def _ratio(a: np.ndarray, b: np.ndarray, default: float = 0.0) -> np.ndarray:
    return np.where(np.abs(b) > EPS, a / np.where(np.abs(b) > EPS, b, 1.0), default)


def _day_index(ts: pd.Series, day0: pd.Timestamp) -> np.ndarray:
    return np.floor((ts - day0).dt.total_seconds().to_numpy() / 86_400).astype(np.int64)


def compute_block_features(cfg: GeneratorConfig, tables: dict[str, pd.DataFrame], snapshot_days: Iterable[int]) -> dict[str, pd.DataFrame]:
    """Features of every customer active at each snapshot, one frame per domain."""
    cust = tables["customers"].reset_index(drop=True)
    n, days = len(cust), cfg.history_days
    day0 = pd.Timestamp(cfg.start_date, tz="UTC")
    index = pd.Index(cust["customer_id"])

    cube = _Cube(n, days)
    daily = tables["account_daily"]
    dpos = index.get_indexer(daily["customer_id"])
    dday = _day_index(daily["date"], day0)
    for m in USAGE_METRICS:
        cube.add(
            m,
            _bin(dpos, dday, n, days, daily[m].to_numpy(float)),
            keep_raw=m in ("active_users", "logins", "features_used", "reports_created", "api_calls"),
        )
    cube.add("logins_sq", cube.raw["logins"] ** 2)
    cube.add("active_users_sq", cube.raw["active_users"] ** 2)
    cube.add("active_day", (cube.raw["logins"] > 0).astype(float))
    weekend = np.array([(day0 + pd.Timedelta(days=d)).dayofweek >= 5 for d in range(days)])
    cube.add("weekend_logins", cube.raw["logins"] * weekend[None, :])
    mrr_m = np.zeros((n, days))
    seats_m = np.zeros((n, days))
    mrr_m[dpos, dday] = daily["mrr"].to_numpy(float)
    seats_m[dpos, dday] = daily["seats_purchased"].to_numpy(float)

    t = tables["tickets"]
    tpos = index.get_indexer(t["customer_id"])
    tday = _day_index(t["created_at"], day0)
    rday = _day_index(t["resolved_at"], day0)
    sev = t["severity"].to_numpy()
    csat = t["csat"].to_numpy(float)
    has_csat = ~np.isnan(csat)
    cube.add("tickets", _bin(tpos, tday, n, days), keep_raw=True)
    cube.add("high_sev", _bin(tpos, tday, n, days, np.isin(sev, ("high", "critical")).astype(float)))
    cube.add("critical", _bin(tpos, tday, n, days, (sev == "critical").astype(float)))
    cube.add("escalated", _bin(tpos, tday, n, days, t["escalated"].to_numpy(float)))
    for c in TICKET_CATEGORIES:
        cube.add(f"cat_{c}", _bin(tpos, tday, n, days, (t["category"].to_numpy() == c).astype(float)))
    # Resolution time and CSAT are only known once a ticket is resolved: bin them by resolution day.
    cube.add("resolved", _bin(tpos, rday, n, days))
    cube.add("resolution_h", _bin(tpos, rday, n, days, t["resolution_hours"].to_numpy(float)))
    cube.add("csat_n", _bin(tpos, rday, n, days, has_csat.astype(float)))
    cube.add("csat_sum", _bin(tpos, rday, n, days, np.nan_to_num(csat)))
    cube.add("csat_low", _bin(tpos, rday, n, days, (has_csat & (csat <= 2)).astype(float)))

    inv = tables["invoices"]
    ipos = index.get_indexer(inv["customer_id"])
    iday = _day_index(inv["invoice_date"], day0)
    failed = (inv["status"].to_numpy() == "failed").astype(float)
    amount = inv["amount"].to_numpy(float)
    late = inv["days_late"].to_numpy(float)
    cube.add("invoices", _bin(ipos, iday, n, days))
    cube.add("failed", _bin(ipos, iday, n, days, failed), keep_raw=True)
    cube.add("amount", _bin(ipos, iday, n, days, amount))
    cube.add("amount_failed", _bin(ipos, iday, n, days, amount * failed))
    cube.add("paid", _bin(ipos, iday, n, days, 1 - failed))
    cube.add("late_sum", _bin(ipos, iday, n, days, late * (1 - failed)))

    nps = tables["nps"]
    npos = index.get_indexer(nps["customer_id"])
    nday = _day_index(nps["responded_at"], day0)
    cube.add("nps_n", _bin(npos, nday, n, days), keep_raw=True)
    cube.add("nps_sum", _bin(npos, nday, n, days, nps["score"].to_numpy(float)))
    nps_score_m = np.full((n, days), np.nan)
    ok = (nday >= 0) & (nday < days)
    nps_score_m[npos[ok], nday[ok]] = nps["score"].to_numpy(float)[ok]

    events = _Events(tpos, tday, rday, t["resolution_hours"].to_numpy(float), ipos, iday, late)
    last = {k: _last_day(cube.raw[k]) for k in ("logins", "reports_created", "api_calls", "failed", "tickets", "nps_n")}
    block = _Block(cust, cube, mrr_m, seats_m, last, nps_score_m, events)
    churn = cust["churn_date"]
    out: dict[str, list[pd.DataFrame]] = {d: [] for d in DOMAINS}
    for s in snapshot_days:
        ts = day0 + pd.Timedelta(days=s)
        active = (churn.isna() | (churn >= ts)).to_numpy()
        cols = _snapshot_columns(block, s, ts)
        base = pd.DataFrame({ENTITY: cust[ENTITY].to_numpy()[active], TIMESTAMP: ts})
        for domain in DOMAINS:
            frame = base.copy()
            for spec in features_of(domain):
                frame[spec.name] = _cast(cols[spec.name][active], spec.dtype)
            out[domain].append(frame)
    return {d: pd.concat(frames, ignore_index=True) for d, frames in out.items()}


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "string":
        return values.astype(object)
    if dtype == "int64":
        return np.asarray(values).astype(np.int64)
    return np.asarray(values, dtype=np.float64)


def _window_max(values: np.ndarray, pos: np.ndarray, day: np.ndarray, *, n: int, lo: int, hi: int) -> np.ndarray:
    out = np.zeros(n)
    ok = (day >= lo) & (day < hi) & (pos >= 0)
    np.maximum.at(out, pos[ok], values[ok])
    return out


@dataclass(frozen=True)
class _Block:
    """Everything about one block of customers that snapshot features are read from."""

    cust: pd.DataFrame
    cube: _Cube
    mrr: np.ndarray  # (customer, day) MRR
    seats: np.ndarray  # (customer, day) purchased seats
    last: dict[str, np.ndarray]  # (customer, day) -> last day with activity of a kind
    nps_score: np.ndarray  # (customer, day) NPS answer or NaN
    events: _Events


def _snapshot_columns(block: _Block, s: int, ts: pd.Timestamp) -> dict[str, np.ndarray]:
    cust, cube, mrr_m, seats_m, last, nps_score_m, ev = (
        block.cust,
        block.cube,
        block.mrr,
        block.seats,
        block.last,
        block.nps_score,
        block.events,
    )
    n = cube.n
    c: dict[str, np.ndarray] = {}
    # Demographic / firmographic
    for col in ("segment", "plan", "region", "industry", "contract_type", "payment_method", "acquisition_channel"):
        c[col] = cust[col].to_numpy()
    size = cust["company_size"].to_numpy(float)
    c["company_size"] = size
    c["log_company_size"] = np.log(size)
    tenure = (ts - cust["signup_date"]).dt.days.to_numpy()
    c["tenure_days"] = tenure
    c["tenure_months"] = tenure / 30.44
    c["is_new_customer"] = tenure < 180
    for col in ("has_dedicated_csm", "onboarding_completed", "auto_renew"):
        c[col] = cust[col].to_numpy()
    to_renewal = (cust["renewal_date"] - ts).dt.days.to_numpy() % cust["contract_length_days"].to_numpy()
    c["days_to_renewal"] = to_renewal
    c["renewal_within_30d"] = to_renewal < 30
    c["renewal_within_90d"] = to_renewal < 90

    # Billing
    mrr = mrr_m[:, s - 1]
    seats = np.maximum(seats_m[:, s - 1], 1)
    c["mrr"] = mrr
    c["arr"] = 12 * mrr
    c["seats_purchased"] = seats
    c["list_price_per_seat"] = cust["list_price_per_seat"].to_numpy(float)
    c["discount_pct"] = cust["discount_pct"].to_numpy(float)
    c["price_per_seat_paid"] = mrr / seats
    c["mrr_per_employee"] = mrr / size
    c["mrr_change_30d"] = _ratio(mrr, mrr_m[:, s - 31], 1.0) - 1
    inv90 = cube.wsum("invoices", s, 90)
    c["invoices_90d"] = inv90
    c["failed_payments_30d"] = cube.wsum("failed", s, 30)
    c["failed_payments_90d"] = cube.wsum("failed", s, 90)
    c["failed_payment_rate_90d"] = _ratio(c["failed_payments_90d"], inv90)
    c["days_since_last_failed_payment"] = _days_since(last["failed"], s)
    c["avg_days_late_90d"] = _ratio(cube.wsum("late_sum", s, 90), cube.wsum("paid", s, 90))
    c["max_days_late_90d"] = _window_max(ev.days_late, ev.ipos, ev.iday, n=n, lo=s - 90, hi=s)
    c["amount_billed_90d"] = cube.wsum("amount", s, 90)
    c["amount_failed_90d"] = cube.wsum("amount_failed", s, 90)
    c["billed_to_mrr_ratio_90d"] = _ratio(c["amount_billed_90d"], 3 * mrr)

    # Usage
    means = {(m, w): cube.wsum(m, s, w) / w for m in USAGE_METRICS for w in WINDOWS}
    for m in USAGE_METRICS:
        for w in WINDOWS:
            c[f"{m}_mean_{w}d"] = means[(m, w)]
        c[f"{m}_trend_7_30"] = _ratio(means[(m, 7)], means[(m, 30)], 1.0)
        c[f"{m}_trend_30_90"] = _ratio(means[(m, 30)], means[(m, 90)], 1.0)
    for m in ("logins", "active_users"):
        var = cube.wsum(f"{m}_sq", s, 30) / 30 - means[(m, 30)] ** 2
        c[f"{m}_std_30d"] = np.sqrt(np.maximum(var, 0))
    c["days_since_last_login"] = _days_since(last["logins"], s)
    c["days_since_last_report"] = _days_since(last["reports_created"], s)
    c["days_since_last_api_call"] = _days_since(last["api_calls"], s)
    for w in WINDOWS:
        c[f"seat_utilization_{w}d"] = means[("active_users", w)] / seats
        c[f"active_days_{w}d"] = cube.wsum("active_day", s, w)
    au30 = cube.raw["active_users"][:, s - 30 : s]
    c["active_users_max_30d"] = au30.max(axis=1)
    c["weekend_login_share_30d"] = _ratio(cube.wsum("weekend_logins", s, 30), cube.wsum("logins", s, 30))
    x = np.arange(30) - 14.5
    c["active_users_slope_30d"] = _ratio((au30 * x).sum(axis=1) / (x**2).sum(), means[("active_users", 30)])

    # Support
    for w in WINDOWS:
        c[f"tickets_{w}d"] = cube.wsum("tickets", s, w)
    for w in (30, 90):
        c[f"high_severity_tickets_{w}d"] = cube.wsum("high_sev", s, w)
    c["critical_tickets_90d"] = cube.wsum("critical", s, 90)
    c["avg_resolution_hours_30d"] = _ratio(cube.wsum("resolution_h", s, 30), cube.wsum("resolved", s, 30), np.nan)
    c["avg_resolution_hours_90d"] = _ratio(cube.wsum("resolution_h", s, 90), cube.wsum("resolved", s, 90), np.nan)
    c["max_resolution_hours_90d"] = _window_max(ev.resolution_hours, ev.tpos, ev.rday, n=n, lo=s - 90, hi=s)
    c["escalations_90d"] = cube.wsum("escalated", s, 90)
    c["open_tickets"] = np.bincount(ev.tpos[(ev.tday < s) & (ev.rday >= s) & (ev.tpos >= 0)], minlength=n)
    c["csat_responses_90d"] = cube.wsum("csat_n", s, 90)
    c["csat_mean_90d"] = _ratio(cube.wsum("csat_sum", s, 90), c["csat_responses_90d"], np.nan)
    c["low_csat_90d"] = cube.wsum("csat_low", s, 90)
    c["days_since_last_ticket"] = _days_since(last["tickets"], s)
    c["ticket_trend_30_90"] = _ratio(c["tickets_30d"], c["tickets_90d"] / 3, 1.0)
    c["tickets_per_seat_90d"] = c["tickets_90d"] / seats
    for cat in TICKET_CATEGORIES:
        c[f"{cat}_tickets_90d"] = cube.wsum(f"cat_{cat}", s, 90)

    # Engagement
    nps_hist = nps_score_m[:, :s]
    has_nps = last["nps_n"][:, s - 1] >= 0
    last_idx = np.maximum(last["nps_n"][:, s - 1], 0)
    nps_last = np.where(has_nps, nps_hist[np.arange(n), last_idx], np.nan)
    c["nps_last"] = nps_last
    c["nps_responses_90d"] = cube.wsum("nps_n", s, 90)
    c["nps_mean_90d"] = _ratio(cube.wsum("nps_sum", s, 90), c["nps_responses_90d"], np.nan)
    c["days_since_last_nps"] = _days_since(last["nps_n"], s)
    c["is_nps_detractor"] = np.nan_to_num(nps_last <= 6, nan=0.0)
    c["is_nps_promoter"] = np.nan_to_num(nps_last >= 9, nan=0.0)
    fu = cube.raw["features_used"]
    fmax30 = fu[:, s - 30 : s].max(axis=1)
    c["features_used_max_30d"] = fmax30
    c["feature_adoption_rate_30d"] = fmax30 / 20.0
    c["feature_breadth_trend_30_90"] = _ratio(fmax30, fu[:, s - 90 : s].max(axis=1), 1.0)
    au_sum30 = cube.wsum("active_users", s, 30)
    c["logins_per_active_user_30d"] = _ratio(cube.wsum("logins", s, 30), au_sum30)
    c["minutes_per_login_30d"] = _ratio(cube.wsum("session_minutes", s, 30), cube.wsum("logins", s, 30))
    c["reports_per_active_user_30d"] = _ratio(cube.wsum("reports_created", s, 30), au_sum30)
    c["api_calls_per_seat_30d"] = means[("api_calls", 30)] / seats
    c["inactive_streak_days"] = np.minimum(s - 1 - last["logins"][:, s - 1], RECENCY_CAP_DAYS)
    c["engagement_score"] = 100 * (
        0.35 * np.clip(c["seat_utilization_30d"] / 0.6, 0, 1)
        + 0.25 * c["feature_adoption_rate_30d"]
        + 0.25 * np.clip(1 - c["days_since_last_login"] / 14, 0, 1)
        + 0.15 * np.where(np.isnan(nps_last), 0.5, np.nan_to_num(nps_last) / 10)
    )
    return c


def feature_schema(domain: str) -> pa.Schema:
    types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
    fields = [pa.field(ENTITY, pa.int64(), nullable=False), pa.field(TIMESTAMP, pa.timestamp("us", tz="UTC"), nullable=False)]
    fields += [pa.field(f.name, types[f.dtype], nullable=f.nullable) for f in features_of(domain)]
    return pa.schema(fields)


def build_features(cfg: GeneratorConfig, raw_dir: Path, out_dir: Path, progress: Callable[[int], object] | None = None) -> dict[str, int]:
    """Compute all snapshots' features block by block into ``out_dir/<domain>.parquet``.

    Raw parts are processed one block at a time (a block holds whole customer
    histories), so memory stays bounded whatever the number of customers.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = sorted((raw_dir / "customers").glob("part-*.parquet"))
    if not parts:
        raise FileNotFoundError(f"no raw data under {raw_dir}; run `churnops data generate` first")
    writers = {d: pq.ParquetWriter(out_dir / f"{d}.parquet", feature_schema(d)) for d in DOMAINS}
    rows = dict.fromkeys(DOMAINS, 0)
    try:
        for part in parts:
            tables = {t: read_parquet(raw_dir / t / part.name) for t in RAW_TABLES if t != "labels"}
            for domain, frame in compute_block_features(cfg, tables, cfg.snapshot_days()).items():
                writers[domain].write_table(pa.Table.from_pandas(frame, schema=feature_schema(domain), preserve_index=False))
                rows[domain] += len(frame)
            if progress is not None:
                progress(len(tables["customers"]))
    finally:
        for w in writers.values():
            w.close()
    return rows
