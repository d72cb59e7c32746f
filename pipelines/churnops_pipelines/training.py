"""Training runs: the platform's data through Feast, or a user's own table."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm import tqdm

from churnops_features import store as feast_store
from churnops_features.definitions import TRAINING_SERVICE
from churnops_models import registry
from churnops_models.data import read_raw
from churnops_models.dataset import TARGET, churn_spec, spec_from_schema
from churnops_models.features import ENTITY, TIMESTAMP
from churnops_models.ingest import ingest
from churnops_models.train import TrainingConfig, TrainingOutcome, train_and_register
from churnops_pipelines.foundation import Layout


def training_frame(layout: Layout, mode: feast_store.Mode, env: Mapping[str, str]) -> pd.DataFrame:
    """Labels joined point-in-time with FeatureService churn_v1 (Feast historical retrieval)."""
    labels = read_raw(layout.raw, "labels")[[ENTITY, TIMESTAMP, TARGET]]
    store = feast_store.open_store(mode, env, layout.data_dir)
    frame = feast_store.historical_features(store, labels, TRAINING_SERVICE)
    if len(frame) != len(labels):
        raise ValueError(f"historical retrieval returned {len(frame)} rows for {len(labels)} labels")
    return frame.sort_values([TIMESTAMP, ENTITY]).reset_index(drop=True)


def frame_digest(frame: pd.DataFrame) -> str:
    """A content hash of the training table, for lineage."""
    return hashlib.sha256(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes()).hexdigest()


def _progress(total: int) -> tuple[tqdm[Any], Any]:
    bar = tqdm(total=total, desc="AutoML trials", unit="trial")

    def update(trial: int, best: float) -> None:
        bar.set_postfix(best_cv_auc=f"{best:.4f}")
        bar.update(1)

    return bar, update


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
    bar, update = _progress(cfg.budget.n_trials)
    with bar:
        return train_and_register(frame, churn_spec(), cfg, reg, layout.reports / "training", lineage, update)


def train_own_data(
    path: Path,
    id_column: str,
    time_column: str,
    target_column: str,
    segment_column: str | None,
    revenue_column: str | None,
    horizon_days: int,
    out_dir: Path,
    cfg: TrainingConfig,
    reg: registry.RegistryConfig,
) -> TrainingOutcome:
    table = ingest(path, id_column, time_column, target_column)
    spec = spec_from_schema(table.schema, segment_column, revenue_column, horizon_days)
    lineage = {
        "source": str(path),
        "rows": len(table.frame),
        "dataset_sha256": frame_digest(table.frame),
        "notes": "; ".join(table.notes) or "-",
    }
    bar, update = _progress(cfg.budget.n_trials)
    with bar:
        return train_and_register(table.frame, spec, cfg, reg, out_dir, lineage, update)
