"""The prediction log of a batch job: where it goes, and the per-chunk hook that records every scored row.

``BatchLogSettings`` is plain data, so a job's engine tasks open the same log in their own processes
(segment names are unique per writer, PostgreSQL takes concurrent writers).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from prometheus_client import CollectorRegistry

from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import SOURCE_BATCH, FeatureLayout, PredictionBatch
from churnops.monitoring.predlog.writer import PredictionLog
from churnops.privacy.cached import Suppression
from churnops.privacy.store import open_store
from churnops.serving.explain import CompiledModel


@dataclass(frozen=True)
class BatchLogSettings:
    """The log's store (Parquet segments under ``parquet_dir``, or PostgreSQL at ``dsn``) and the privacy store."""

    data_dir: Path
    parquet_dir: Path
    dsn: str | None = None
    privacy_path: Path | None = None
    privacy_dsn: str | None = None

    def open(self) -> PredictionLog:
        store = PostgresStore(self.dsn) if self.dsn else ParquetStore(self.parquet_dir)
        # erased customers in the input are scored (the output is the caller's) but never logged for monitoring
        suppression = Suppression(open_store(self.data_dir, self.privacy_dsn, self.privacy_path))
        return PredictionLog(store, CollectorRegistry(), flush_interval_s=5.0, suppressor=suppression)


def record_chunks(plog: PredictionLog, model_name: str, version: str, model: CompiledModel, job: str) -> Callable[..., None]:
    """The scorer's per-chunk hook: every scored row goes to the prediction log (request ids ``<job>/<row>``)."""
    layout = FeatureLayout(tuple(model.features), frozenset(model.categorical))

    def record(inputs: pd.DataFrame, scored: pd.DataFrame, first_row: int) -> None:
        ids = inputs["customer_id"].tolist() if "customer_id" in inputs else [None] * len(inputs)
        batch = PredictionBatch(
            model_name,
            version,
            layout,
            ids,
            scored["churn_probability"].to_numpy(),
            scored["risk_band"].to_numpy(),
            [f"{job}/{first_row + i}" for i in range(len(inputs))],
            inputs[list(layout.names)],
            time.time(),
            source=SOURCE_BATCH,
        )
        plog.record_many(batch, timeout_s=60)  # a batch job may wait for room rather than drop

    return record
