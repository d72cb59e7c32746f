"""The erasure's order and its second pass: a write that was in flight during the first pass is removed by the second.

Real stores (Parquet prediction log, SQLite privacy store, files) and the real receipt chain; the
"sleep" between the passes is where a server's flush that began before it saw the suppression
list lands its rows.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pandas as pd

from churnops.monitoring.erasure import ErasureSettings, ErasureTargets, erase_customer
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.records import FeatureLayout, PredictionBatch, SegmentKey, to_table
from churnops.privacy.keys import erasure_token
from churnops.privacy.store import SqlitePrivacyStore
from churnops.serving.audit import read_records, verify_file
from tests.support.audit import audit_keys, file_sink

EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))
LAYOUT = FeatureLayout(("tenure_days",))
X, Y = 100015, 100016


def write_rows(store: ParquetStore, ids: list[int], prefix: str) -> None:
    """What a writer's flush commits: one segment."""
    batch = PredictionBatch(
        "churn",
        "1",
        LAYOUT,
        ids,
        [0.5] * len(ids),
        ["low"] * len(ids),
        [f"{prefix}{i}" for i in range(len(ids))],
        [[1.0]] * len(ids),
        1_750_000_000.0,
    )
    store.write(SegmentKey("churn", "1", LAYOUT, batch.day), to_table([batch]))


def test_the_second_pass_removes_a_write_that_was_in_flight_and_the_receipt_names_no_one(tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = ParquetStore(data / "predictions")
    write_rows(store, [X, Y, X], "a")
    (data / "reports").mkdir(parents=True)
    pd.DataFrame({"customer_id": [X, Y], "churn_probability": [0.9, 0.1]}).to_parquet(data / "reports" / "scores.parquet")
    privacy = SqlitePrivacyStore(data / "privacy" / "privacy.db")
    privacy.subject_key(X)
    online_calls: list[int] = []
    order: list[str] = []

    def in_flight(seconds: float) -> None:
        order.append(f"sleep {seconds}")
        assert erasure_token(privacy.store_key(), X) in privacy.tokens()  # suppressed before anything was erased
        write_rows(store, [X], "late")  # a flush that began before the server saw the list lands now

    def online(cid: int) -> int:
        online_calls.append(cid)
        return 4  # rows of four feature views

    targets = ErasureTargets(privacy, store, online=online)
    receipts = data / "audit" / "erasures.jsonl"
    sink = file_sink(receipts, fsync="always")
    record = erase_customer(X, ErasureSettings(data, data / "audit", settle_s=2.0), targets, sink, "dpo", sleep=in_flight)
    sink.close()

    assert order == ["sleep 2.0"] and online_calls == [X, X]
    left = store.read_window(*EVER)
    assert list(left["customer_id"]) == [Y]  # the late row went in the second pass
    assert record["passes"] == 2 and record["suppressed"] == "added" and record["operator"] == "dpo"
    assert record["erased"] == {"online_store": 8, "prediction_log": 3, "subject_keys": 1, "files": {"reports": 1}}
    assert record["files_changed"] == {"reports/scores.parquet": "rows"}
    chained = list(read_records(receipts))
    assert [r["receipt_id"] for r in chained] == [record["receipt_id"]] and verify_file(receipts, audit_keys()).ok
    assert str(X) not in json.dumps(chained)
    # nor the erasure token: with the store key beside it in privacy.db, it gives the id away in a fraction of a second
    assert "erasure_token" not in chained[0] and erasure_token(privacy.store_key(), X) not in json.dumps(chained)
    privacy.close()
