"""Training runs: the platform's data through Feast, or a user's own table."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from churnops.data.ingest import CsvDialect, TableSchema, ingest_table
from churnops.data.raw import read_raw
from churnops.data.schema import ENTITY, TARGET, TIMESTAMP
from churnops.errors import CheckFailedError, InvalidInputError
from churnops.layout import Layout
from churnops.training import registry
from churnops.training.config import SearchPlan, TrainingConfig
from churnops.training.dataset import DatasetSpec, churn_spec, spec_from_schema
from churnops.training.refusal import FairnessColumns, FairnessRole
from churnops.training.train import TrainingOutcome, train_and_register
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE


def training_frame(layout: Layout, mode: feast_store.Mode, env: Mapping[str, str]) -> pd.DataFrame:
    """Labels joined point-in-time with FeatureService churn_v1 (Feast historical retrieval)."""
    labels = read_raw(layout.raw, "labels")[[ENTITY, TIMESTAMP, TARGET]]
    store = feast_store.open_store(mode, env, layout.data_dir)
    frame = feast_store.historical_features(store, labels, TRAINING_SERVICE)
    if len(frame) != len(labels):
        raise CheckFailedError(f"historical retrieval returned {len(frame)} rows for {len(labels)} labels")
    return frame.sort_values([TIMESTAMP, ENTITY]).reset_index(drop=True)


def frame_digest(frame: pd.DataFrame) -> str:
    """A content hash of the training table, for lineage."""
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


class ConsoleProgress:
    """Prints the search plan (with its expected time) before the search starts, then a bar of its trials."""

    def __init__(self) -> None:
        self.bar: tqdm[Any] | None = None

    def planned(self, plan: SearchPlan) -> None:
        print(plan.describe(), flush=True)
        self.bar = tqdm(total=plan.n_trials, desc="AutoML trials", unit="trial")

    def trial(self, number: int, best_cv_auc: float) -> None:
        if self.bar is not None:
            self.bar.set_postfix(best_cv_auc=f"{best_cv_auc:.4f}")
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def train_platform(
    layout: Layout,
    mode: feast_store.Mode,
    env: Mapping[str, str],
    cfg: TrainingConfig,
    reg: registry.RegistryConfig,
    register_rejected: bool = False,
) -> TrainingOutcome:
    frame = training_frame(layout, mode, env)
    lineage = {
        "source": f"feast:{TRAINING_SERVICE} ({mode} store)",
        "feature_service": TRAINING_SERVICE,
        "labels": str(layout.raw / "labels"),
        "rows": len(frame),
        "dataset_sha256": frame_digest(frame),
        "snapshots": ", ".join(sorted({str(t.date()) for t in frame[TIMESTAMP]})),
    }
    progress = ConsoleProgress()
    try:
        return train_and_register(
            frame, churn_spec(), cfg, reg, layout.reports / "training", lineage, progress, register_rejected=register_rejected
        )
    finally:
        progress.close()


@dataclass(frozen=True)
class OwnData:
    """A user's table, how its CSV is written, and which of its columns mean what.

    Fairness is measured across a protected attribute (gated, and never a feature: it is measured,
    not learned from) and across a business segment (reported; gated only with ``gate_segment``).
    """

    path: Path
    id_column: str
    time_column: str
    target_column: str
    segment_column: str | None = None
    revenue_column: str | None = None
    horizon_days: int = 30
    protected_column: str | None = None
    gate_segment: bool = False
    dialect: CsvDialect = field(default_factory=CsvDialect)

    def __post_init__(self) -> None:
        if self.horizon_days < 0:
            raise InvalidInputError(f"must be 0 or more days, got {self.horizon_days}", field="--horizon-days")
        if self.protected_column is not None and self.protected_column == self.segment_column:
            raise InvalidInputError(
                f"{self.segment_column!r} is given as the protected attribute too; a protected attribute is gated and never "
                "a business segment: give it once, as --protected-column",
                field="--segment-column",
            )
        if self.gate_segment and self.segment_column is None:
            raise InvalidInputError("gates the --segment-column's fairness; give --segment-column too", field="--gate-segment")
        if self.gate_segment and self.protected_column is not None:
            raise InvalidInputError(
                "with --protected-column the gate judges the protected attribute and the segment is reported; "
                "to gate the segment instead, give it alone with --gate-segment",
                field="--gate-segment",
            )

    @property
    def fairness_column(self) -> str | None:
        """The column the evaluation's fairness figures (and the gate, when gated) are across."""
        return self.protected_column or self.segment_column

    @property
    def fairness_columns(self) -> FairnessColumns:
        """The evaluated column's role; a business segment beside a protected attribute is reported, not gated;
        per-segment thresholds go by the business segment, never by the protected attribute."""
        role: FairnessRole = "protected" if self.protected_column else "segment"
        reported = (self.segment_column,) if self.protected_column and self.segment_column else ()
        return FairnessColumns(role, reported, self.segment_column)


def own_spec(own: OwnData, schema: TableSchema) -> DatasetSpec:
    """The dataset spec of a user's table; a protected attribute stays in the table but out of the features."""
    for flag, column in (("--protected-column", own.protected_column), ("--segment-column", own.segment_column)):
        if column is not None and column not in schema.features:
            raise InvalidInputError(f"{column!r} is not a feature column of the table; it has {list(schema.features)[:20]}", field=flag)
    if own.revenue_column is not None and own.revenue_column not in schema.numeric:
        found = "a text column" if own.revenue_column in schema.features else "not a feature column of the table"
        raise InvalidInputError(
            f"{own.revenue_column!r} is {found}; the revenue column must be numeric (monthly revenue per row); "
            f"numeric columns: {list(schema.numeric)[:20]}",
            field="--revenue-column",
        )
    spec = spec_from_schema(schema, own.segment_column, own.revenue_column, own.horizon_days)
    protected = own.protected_column
    if protected is None:
        return spec
    return replace(
        spec,
        numeric=tuple(c for c in spec.numeric if c != protected),
        categorical=tuple(c for c in spec.categorical if c != protected),
        segment_column=protected,
    )


def train_own_data(
    own: OwnData, out_dir: Path, cfg: TrainingConfig, reg: registry.RegistryConfig, register_rejected: bool = False
) -> TrainingOutcome:
    if cfg.gates.per_segment_thresholds and own.segment_column is None:
        raise InvalidInputError(
            "chooses a threshold per business segment: give --segment-column (thresholds are never set per protected value)",
            field="--per-segment-thresholds",
        )
    table = ingest_table(own.path, own.id_column, own.time_column, own.target_column, own.dialect)
    for note in table.notes:
        print(f"note: {note}", flush=True)
    spec = own_spec(own, table.schema)
    gated = own.protected_column is not None or own.gate_segment
    cfg = replace(cfg, gates=replace(cfg.gates, gate_fairness=gated))
    lineage = {
        "source": str(own.path),
        "rows": len(table.frame),
        "dataset_sha256": frame_digest(table.frame),
        "notes": "; ".join(table.notes) or "-",  # how the file was read (dialect, dates, blanks)
    }
    if own.protected_column:
        lineage["protected_attribute"] = f"{own.protected_column} (measured for fairness, not used as a feature)"
    progress = ConsoleProgress()
    try:
        outcome = train_and_register(table.frame, spec, cfg, reg, out_dir, lineage, progress, own.fairness_columns, register_rejected)
    finally:
        progress.close()
    outcome.summary["ingest_notes"] = table.notes  # e.g. blank cells read as missing values
    return outcome
