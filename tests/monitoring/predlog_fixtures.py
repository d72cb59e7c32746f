"""Fixtures and helpers for the prediction log tests: a private PostgreSQL database, stores of both kinds, test batches.

Test modules import the fixtures they use (``*_fixture``, registered under the
name without the suffix); this module is not a conftest, so the monitoring
conftest stays shared without edits.
"""

from __future__ import annotations

import datetime as dt
import os
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import FeatureLayout, LogStore, PredictionBatch, SegmentKey
from tests.support.services import DEFAULT_ADMIN_DSN, temporary_database

PG_ADMIN_DSN = os.environ.get("CHURNOPS_TEST_PG_DSN", DEFAULT_ADMIN_DSN)
SINKS = ("parquet", "postgres")
LAYOUT = FeatureLayout(("tenure_days", "mrr", "logins_mean_7d", "plan", "segment"), frozenset({"plan", "segment"}))
T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(name="pg_dsn")
def pg_dsn_fixture() -> Iterator[str]:
    """A libpq connection string for a fresh database, dropped (with its connections) afterwards."""
    with temporary_database(PG_ADMIN_DSN, prefix="churnops_predlog") as name:
        yield f"{PG_ADMIN_DSN} dbname={name}"


def make_store(sink: str, tmp_path: Path, request: pytest.FixtureRequest) -> LogStore:
    if sink == "parquet":
        return ParquetStore(tmp_path / "predictions")
    return PostgresStore(request.getfixturevalue("pg_dsn"))


@pytest.fixture(name="store", params=SINKS)
def store_fixture(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LogStore]:
    """Each store kind in turn: Parquet segments under tmp_path, or a table in a private database."""
    s = make_store(request.param, tmp_path, request)
    yield s
    s.close()


def epoch(t: dt.datetime) -> float:
    return t.timestamp()


def rows_batch(
    ids: Sequence[int | None],
    t: dt.datetime,
    *,
    model: str = "churn",
    version: str = "1",
    layout: FeatureLayout = LAYOUT,
    prefix: str = "r",
) -> PredictionBatch:
    """What the predictor records for one request: rows in layout order, some values missing."""
    rows = [
        [float(i or 0), None if (i or 0) % 3 == 0 else 10.5 * (i or 0), float("nan"), "growth", "smb"][: len(layout.names)] for i in ids
    ]
    return PredictionBatch(
        model,
        version,
        layout,
        list(ids),
        [((i or 0) % 100) / 100 for i in ids],
        ["high" if (i or 0) % 2 else "low" for i in ids],
        [f"{prefix}{k}" for k in range(len(ids))],
        rows,
        epoch(t),
    )


def frame_batch(ids: Sequence[int], t: dt.datetime, *, model: str = "churn", version: str = "1") -> PredictionBatch:
    """What the batch scorer records for one chunk: a frame with typed feature columns."""
    n = len(ids)
    features = pd.DataFrame(
        {
            "tenure_days": np.arange(n, dtype=np.int64),
            "mrr": np.where(np.arange(n) % 4 == 0, np.nan, np.arange(n) * 2.5),
            "logins_mean_7d": np.linspace(0, 1, n),
            "plan": (["starter", None, "", 'quo"te,\nlïne ✓'] * (n // 4 + 1))[:n],  # null, empty, CSV-hostile and multi-byte text
            "segment": ["enterprise"] * n,
        }
    )
    return PredictionBatch(
        model,
        version,
        LAYOUT,
        np.asarray(ids, dtype=np.int64),
        np.linspace(0.01, 0.99, n),
        np.asarray(["medium"] * n, dtype=object),
        [f"b{k}" for k in range(n)],
        features,
        epoch(t),
        source="batch",
        degraded=True,
    )


class GatedStore:
    """The real store behind a gate the test opens and closes (holds writes without faking their effect)."""

    def __init__(self, inner: LogStore) -> None:
        self.inner = inner
        self.open = threading.Event()
        self.open.set()
        self.writes = 0

    @property
    def sink(self) -> str:
        return self.inner.sink

    def write(self, key: SegmentKey, table: pa.Table) -> None:
        self.open.wait()
        self.inner.write(key, table)
        self.writes += 1

    def read_window(
        self,
        start: dt.datetime,
        end: dt.datetime,
        model: str | None = None,
        version: str | None = None,
        features: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        return self.inner.read_window(start, end, model, version, features)

    def erase_customer(self, customer_id: int) -> int:
        return self.inner.erase_customer(customer_id)

    def close(self) -> None:
        self.open.set()
        self.inner.close()


class FailingStore(GatedStore):
    """The real store, but the first ``failures`` writes raise OSError as a full disk would."""

    def __init__(self, inner: LogStore, failures: int) -> None:
        super().__init__(inner)
        self.failures = failures
        self.attempts = 0

    def write(self, key: SegmentKey, table: pa.Table) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise OSError(28, "No space left on device")
        super().write(key, table)
