"""Rows buffered before their customer's erasure are not written: the writer consults the suppression list at flush."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from prometheus_client import CollectorRegistry

from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.records import FeatureLayout
from churnops.monitoring.predlog.writer import PredictionLog
from churnops.privacy.cached import Suppression
from churnops.privacy.keys import erasure_token
from churnops.privacy.store import SqlitePrivacyStore

EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
LAYOUT = FeatureLayout(("tenure_days", "plan"), frozenset({"plan"}))


def test_buffered_rows_of_an_erased_customer_are_dropped_and_counted(tmp_path: Path) -> None:
    x, y = 100015, 100016
    server = SqlitePrivacyStore(tmp_path / "privacy.db")
    eraser = SqlitePrivacyStore(tmp_path / "privacy.db")
    registry = CollectorRegistry()
    plog = PredictionLog(
        ParquetStore(tmp_path / "predictions"), registry, flush_interval_s=3600, suppressor=Suppression(server, every_s=0.0)
    )
    for i, cid in enumerate([x, y, x, None, x]):  # buffered: the flush interval is an hour
        plog.record(
            model="churn", version="1", layout=LAYOUT, customer_id=cid, score=0.5, risk_band="low", request_id=f"r{i}", values=[1.0, "a"]
        )
    eraser.suppress(erasure_token(eraser.store_key(), x))  # the erasure, from another connection, while the rows wait
    plog.flush()
    plog.close()
    logged = ParquetStore(tmp_path / "predictions").read_window(*EVER)
    assert sorted(logged["request_id"]) == ["r1", "r3"]  # y and the row without an id stay
    dropped = registry.get_sample_value("churnops_prediction_log_dropped_total", {"sink": "parquet", "reason": "erased"})
    assert dropped == 3
    server.close()
    eraser.close()
