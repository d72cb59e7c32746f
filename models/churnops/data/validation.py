"""Data validation with Great Expectations.

Suites are plain lists of expectations built from the raw-table contract
(``churnops.data.schema``) and, for features, from the feature catalog
(``churnops.features.validation``). ``validate`` runs one
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

from churnops.data.schema import ENTITY, RAW_TABLES, TABLES, TARGET, TIMESTAMP
from churnops.errors import DataValidationError


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


def columns(expected: list[str]) -> list[Expectation]:
    return [gxe.ExpectColumnToExist(column=c) for c in expected]


def not_null(cols: list[str]) -> list[Expectation]:
    return [gxe.ExpectColumnValuesToNotBeNull(column=c) for c in cols]


def in_set(col: str, values: tuple[str, ...] | list[Any]) -> Expectation:
    return gxe.ExpectColumnValuesToBeInSet(column=col, value_set=list(values))


def between(col: str, lo: float | None, hi: float | None, mostly: float = 1.0) -> Expectation:
    return gxe.ExpectColumnValuesToBeBetween(column=col, min_value=lo, max_value=hi, mostly=mostly)


def contract_expectations(table: str) -> list[Expectation]:
    """What the raw-table contract says of ``table``: columns, nulls, allowed values and ranges."""
    cols = TABLES[table]
    exps = columns([c.name for c in cols])
    exps += not_null([c.name for c in cols if not c.nullable])
    exps += [in_set(c.name, list(c.allowed)) for c in cols if c.allowed is not None]
    exps += [between(c.name, c.min, c.max) for c in cols if c.min is not None or c.max is not None]
    return exps


def raw_suites() -> dict[str, list[Expectation]]:
    """Expectations of each raw table: the contract's, plus keys, cross-column rules and distribution bounds."""
    extra: dict[str, list[Expectation]] = {
        "customers": [
            gxe.ExpectColumnValuesToBeUnique(column=ENTITY),
            gxe.ExpectColumnMeanToBeBetween(column="discount_pct", min_value=0, max_value=30),
        ],
        "account_daily": [
            gxe.ExpectCompoundColumnsToBeUnique(column_list=[ENTITY, "date"]),
            gxe.ExpectColumnPairValuesAToBeGreaterThanB(column_A="seats_purchased", column_B="active_users", or_equal=True),
        ],
        "tickets": [
            gxe.ExpectColumnValuesToBeUnique(column="ticket_id"),
            gxe.ExpectColumnProportionOfNonNullValuesToBeBetween(column="csat", min_value=0.2, max_value=0.9),
        ],
        "invoices": [],
        "nps": [],
        "labels": [
            gxe.ExpectCompoundColumnsToBeUnique(column_list=[ENTITY, TIMESTAMP]),
            # The business has 10-25 % 30-day churn among active customers; outside wider bounds the data is broken.
            gxe.ExpectColumnMeanToBeBetween(column=TARGET, min_value=0.05, max_value=0.35),
        ],
    }
    return {table: contract_expectations(table) + extra[table] for table in RAW_TABLES}


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
