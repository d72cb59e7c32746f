"""Data validation with Great Expectations.

Suites are plain lists of expectations built from the data contract (the raw
tables' columns and value sets, the feature catalog). ``validate`` runs one
suite on a DataFrame in an ephemeral GX context and returns a ``SuiteReport``;
``ValidationRun`` collects reports, computes the pass rate and raises
``DataValidationError`` with a readable list of what failed.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import great_expectations as gx
import great_expectations.expectations as gxe
import pandas as pd
from great_expectations.data_context.types.base import DataContextConfig, InMemoryStoreBackendDefaults, ProgressBarsConfig
from great_expectations.expectations.expectation import Expectation

from churnops_models.data import (
    CHANNELS,
    CONTRACTS,
    INDUSTRIES,
    PAYMENT_METHODS,
    PLANS,
    PRODUCT_FEATURES,
    REGIONS,
    SEGMENTS,
    SEVERITIES,
    TICKET_CATEGORIES,
)
from churnops_models.features import ENTITY, RECENCY_CAP_DAYS, TIMESTAMP, FeatureSpec, features_of


class DataValidationError(RuntimeError):
    """Raised when a validation run has failed expectations; the message is the report."""


@dataclass(frozen=True)
class Failure:
    expectation: str
    column: str | None
    details: str


@dataclass
class SuiteReport:
    suite: str
    rows: int
    evaluated: int
    successful: int
    failures: list[Failure] = field(default_factory=list)

    @property
    def success(self) -> bool:
        return not self.failures


@dataclass
class ValidationRun:
    reports: list[SuiteReport] = field(default_factory=list)

    @property
    def evaluated(self) -> int:
        return sum(r.evaluated for r in self.reports)

    @property
    def successful(self) -> int:
        return sum(r.successful for r in self.reports)

    @property
    def pass_rate(self) -> float:
        return self.successful / self.evaluated if self.evaluated else 1.0

    @property
    def success(self) -> bool:
        return all(r.success for r in self.reports)

    def render(self) -> str:
        lines = [f"Data validation: {self.successful}/{self.evaluated} expectations passed ({self.pass_rate:.1%})"]
        for r in self.reports:
            mark = "ok  " if r.success else "FAIL"
            lines.append(f"  [{mark}] {r.suite}: {r.successful}/{r.evaluated} on {r.rows:,} rows")
            for f in r.failures:
                col = f" column {f.column!r}" if f.column else ""
                lines.append(f"         - {f.expectation}{col}: {f.details}")
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return {
            "pass_rate": self.pass_rate,
            "evaluated": self.evaluated,
            "successful": self.successful,
            "success": self.success,
            "suites": [{**asdict(r), "success": r.success} for r in self.reports],
        }

    def write(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")

    def raise_for_failures(self) -> None:
        if not self.success:
            raise DataValidationError(self.render())


def _columns(expected: list[str]) -> list[Expectation]:
    return [gxe.ExpectColumnToExist(column=c) for c in expected]


def _not_null(cols: list[str]) -> list[Expectation]:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in cols]


def _in_set(col: str, values: tuple[str, ...] | list[Any]) -> Expectation:
    return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(values))


def _between(col: str, lo: float | None, hi: float | None, mostly: float = 1.0) -> Expectation:
    return gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi, mostly=mostly)


def raw_suites() -> dict[str, list[Expectation]]:
    """Expectations of each generated (or ingested in the same shape) raw table."""
    customers = [
        *_columns(
            [
                ENTITY,
                "signup_date",
                "segment",
                "plan",
                "region",
                "industry",
                "company_size",
                "contract_type",
                "payment_method",
                "seats_purchased",
                "discount_pct",
                "mrr",
                "churn_date",
                "renewal_date",
            ]
        ),
        *_not_null([ENTITY, "signup_date", "segment", "plan", "seats_purchased", "mrr", "renewal_date"]),
        gxe.ExpectColumnValuesToBeUnique(column=ENTITY),
        _in_set("segment", SEGMENTS),
        _in_set("plan", PLANS),
        _in_set("region", REGIONS),
        _in_set("industry", INDUSTRIES),
        _in_set("contract_type", CONTRACTS),
        _in_set("payment_method", PAYMENT_METHODS),
        _in_set("acquisition_channel", CHANNELS),
        _between("company_size", 1, 10_000_000),
        _between("seats_purchased", 1, None),
        _between("discount_pct", 0, 100),
        _between("mrr", 0, None),
        gxe.ExpectColumnMeanToBeBetween(column="discount_pct", min_value=0, max_value=30),
    ]
    daily = [
        *_columns(
            [
                ENTITY,
                "date",
                "seats_purchased",
                "mrr",
                "active_users",
                "logins",
                "session_minutes",
                "api_calls",
                "features_used",
                "reports_created",
            ]
        ),
        *_not_null([ENTITY, "date", "active_users", "logins"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[ENTITY, "date"]),
        _between("active_users", 0, None),
        _between("logins", 0, None),
        _between("session_minutes", 0, None),
        _between("features_used", 0, PRODUCT_FEATURES),
        gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="seats_purchased", column_B="active_users", or_equal=True),
    ]
    tickets = [
        *_columns(["ticket_id", ENTITY, "created_at", "resolved_at", "category", "severity", "resolution_hours", "csat"]),
        *_not_null(["ticket_id", ENTITY, "created_at", "severity"]),
        gxe.ExpectColumnValuesToBeUnique(column="ticket_id"),
        _in_set("severity", SEVERITIES),
        _in_set("category", TICKET_CATEGORIES),
        _between("resolution_hours", 0, 24 * 90),
        _between("csat", 1, 5),
        gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column="csat", min_value=0.2, max_value=0.9),
    ]
    invoices = [
        *_columns([ENTITY, "invoice_date", "amount", "status", "days_late"]),
        *_not_null([ENTITY, "invoice_date", "amount", "status"]),
        _in_set("status", ("paid", "failed")),
        _between("amount", 0, None),
        _between("days_late", 0, 365),
    ]
    nps = [*_columns([ENTITY, "responded_at", "score"]), *_not_null([ENTITY, "responded_at", "score"]), _between("score", 0, 10)]
    labels = [
        *_columns([ENTITY, TIMESTAMP, "churned_30d", "mrr"]),
        *_not_null([ENTITY, TIMESTAMP, "churned_30d"]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[ENTITY, TIMESTAMP]),
        _in_set("churned_30d", [0, 1]),
        # The business has 10-25 % 30-day churn among active customers; outside wider bounds the data is broken.
        gxe.ExpectColumnMeanToBeBetween(column="churned_30d", min_value=0.05, max_value=0.35),
    ]
    return {"customers": customers, "account_daily": daily, "tickets": tickets, "invoices": invoices, "nps": nps, "labels": labels}


def _feature_bounds(spec: FeatureSpec) -> Expectation | None:
    name = spec.name
    if name.startswith(("days_since_", "inactive_streak")):
        return _between(name, 0, RECENCY_CAP_DAYS)
    if name.endswith("_rate_90d") or name.endswith("_share_30d") or name == "feature_adoption_rate_30d":
        return _between(name, 0, 1)
    if name.startswith("nps_") and name != "nps_responses_90d":
        return _between(name, 0, 10)
    if name == "csat_mean_90d":
        return _between(name, 1, 5)
    if name == "engagement_score":
        return _between(name, 0, 100)
    if name in ("discount_pct",):
        return _between(name, 0, 100)
    if spec.dtype != "string" and not name.endswith(("_trend_7_30", "_trend_30_90", "_slope_30d", "mrr_change_30d")):
        return _between(name, 0, None)  # counts, sums, means and amounts are never negative
    return None


def feature_suite(domain: str) -> list[Expectation]:
    """Schema, nulls, ranges and distribution bounds of one feature domain."""
    specs = features_of(domain)
    exps: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=[ENTITY, TIMESTAMP, *(s.name for s in specs)], exact_match=True),
        *_not_null([ENTITY, TIMESTAMP]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[ENTITY, TIMESTAMP]),
    ]
    for s in specs:
        if not s.nullable:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=s.name))
        bound = _feature_bounds(s)
        if bound is not None:
            exps.append(bound)
    allowed = {
        "segment": SEGMENTS,
        "plan": PLANS,
        "region": REGIONS,
        "industry": INDUSTRIES,
        "contract_type": CONTRACTS,
        "payment_method": PAYMENT_METHODS,
        "acquisition_channel": CHANNELS,
    }
    exps += [_in_set(c, v) for c, v in allowed.items() if any(s.name == c for s in specs)]
    # Distribution bounds: a healthy population never averages outside these.
    distribution = {
        "seat_utilization_30d": (0.05, 0.95),
        "failed_payment_rate_90d": (0.0, 0.3),
        "tickets_per_seat_90d": (0.0, 2.0),
        "engagement_score": (20.0, 90.0),
    }
    exps += [
        gxe.ExpectColumnMeanToBeBetween(column=c, min_value=lo, max_value=hi)
        for c, (lo, hi) in distribution.items()
        if any(s.name == c for s in specs)
    ]
    return exps


def validate(frame: pd.DataFrame, suite_name: str, expectations: list[Expectation]) -> SuiteReport:
    """Run expectations on ``frame`` in an ephemeral context (nothing is written to disk)."""
    context = gx.get_context(mode="ephemeral", project_config=_project_config())
    asset = context.data_sources.add_pandas(name=f"{suite_name}_source").add_dataframe_asset(name=suite_name)
    batch = asset.add_batch_definition_whole_dataframe(name="all").get_batch(batch_parameters={"dataframe": frame})
    suite = gx.ExpectationSuite(name=suite_name, expectations=[e.copy() for e in expectations])
    result = batch.validate(suite)
    failures: list[Failure] = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = cfg.kwargs if cfg is not None else {}
        failures.append(Failure(cfg.type if cfg is not None else "unknown", kwargs.get("column"), _describe(r.result, r.exception_info)))
    evaluated = len(result.results)
    return SuiteReport(suite=suite_name, rows=len(frame), evaluated=evaluated, successful=evaluated - len(failures), failures=failures)


def _project_config() -> DataContextConfig:
    # In-memory stores, no usage analytics (no network here), no progress bars per metric.
    return DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(),
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False),
    )


def _describe(result: dict[str, Any], exception_info: dict[str, Any] | None) -> str:
    if exception_info and exception_info.get("raised_exception"):
        return f"could not be evaluated: {exception_info.get('exception_message')}"
    parts = []
    if "observed_value" in result:
        parts.append(f"observed {result['observed_value']!r}")
    if "unexpected_count" in result:
        parts.append(f"{result['unexpected_count']:,} unexpected ({result.get('unexpected_percent', 0):.2f} %)")
    sample = result.get("partial_unexpected_list")
    if sample:
        parts.append(f"e.g. {sample[:5]!r}")
    return ", ".join(parts) or "failed"
