"""Training runs: the platform's data through Feast, or a user's own table."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from churnops.data.ingest import ingest
from churnops.data.raw import read_raw
from churnops.data.schema import ENTITY, TARGET, TIMESTAMP
from churnops.errors import CheckFailedError
from churnops.layout import Layout
from churnops.training import registry
from churnops.training.config import SearchPlan, TrainingConfig
from churnops.training.dataset import churn_spec, spec_from_schema
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
    layout: Layout, mode: feast_store.Mode, env: Mapping[str, str], cfg: TrainingConfig, reg: registry.RegistryConfig
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
        return train_and_register(frame, churn_spec(), cfg, reg, layout.reports / "training", lineage, progress)
    finally:
        progress.close()


@dataclass(frozen=True)
class OwnData:
    """A user's table and which of its columns mean what."""

    path: Path
    id_column: str
    time_column: str
    target_column: str
    segment_column: str | None = None
    revenue_column: str | None = None
    horizon_days: int = 30


def train_own_data(own: OwnData, out_dir: Path, cfg: TrainingConfig, reg: registry.RegistryConfig) -> TrainingOutcome:
    table = ingest(own.path, own.id_column, own.time_column, own.target_column)
    for note in table.notes:
        print(f"note: {note}", flush=True)
    spec = spec_from_schema(table.schema, own.segment_column, own.revenue_column, own.horizon_days)
    lineage = {
        "source": str(own.path),
        "rows": len(table.frame),
        "dataset_sha256": frame_digest(table.frame),
        "notes": "; ".join(table.notes) or "-",
    }
    progress = ConsoleProgress()
    try:
        outcome = train_and_register(table.frame, spec, cfg, reg, out_dir, lineage, progress)
    finally:
        progress.close()
    outcome.summary["ingest_notes"] = table.notes  # e.g. blank cells read as missing values
    return outcome
