"""Every online prediction and batch score reaches the prediction log with the feature values used.

A real `churnops serve` writes Parquet segments; after a clean stop nothing is missing. Batch
scoring through the CLI logs its rows too. Erasing a customer leaves the audit chain intact.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd
import pytest

from churnops.cli import main
from churnops.layout import Layout
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.serving.audit import verify_file
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import sqlite_reader
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import Registered, start_server

pytestmark = groups.SERVING_MODELS

EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


@pytest.mark.timeout(600)
def test_online_predictions_are_logged_with_their_features_and_survive_a_clean_stop(
    served_layout: Layout, registered: Registered, customers: list[int], tmp_path: Path
) -> None:
    log_dir = tmp_path / "predictions"
    srv = start_server(served_layout, registered.cfg.tracking_uri, ["champion"], tmp_path, ["--prediction-log", str(log_dir)])
    try:
        with srv.client() as c:
            answers = [
                c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": cid} for cid in customers[i : i + 5]]})
                for i in range(0, 20, 5)
            ]
        assert all(r.status_code == 200 for r in answers)
    finally:
        srv.stop()  # a clean stop drains the buffer
    predictions = [p for r in answers for p in r.json()["predictions"]]
    logged = ParquetStore(log_dir).read_window(*EVER).set_index("request_id")
    assert set(logged.index) == {p["request_id"] for p in predictions}
    for p in predictions:
        row = logged.loc[p["request_id"]]
        assert (row["customer_id"], row["score"], row["risk_band"]) == (p["customer_id"], p["churn_probability"], p["risk_band"])
        assert (row["model"], row["model_version"], row["source"]) == ("churn-classifier", registered.champion, "online")
    online = sqlite_reader(feast_store.open_store("embedded", {}, served_layout.data_dir), TRAINING_SERVICE).read(customers[0])
    assert online is not None
    first = logged[logged["customer_id"] == customers[0]].iloc[0]
    for feature in ("tenure_days", "mrr", "segment", "seat_utilization_30d"):
        if feature in first.index:
            assert (
                first[feature] == pytest.approx(online[feature])
                if isinstance(online[feature], float)
                else first[feature] == online[feature]
            )

    erased = ParquetStore(log_dir).erase_customer(customers[0])
    assert erased == 1
    assert customers[0] not in set(ParquetStore(log_dir).read_window(*EVER)["customer_id"])
    assert verify_file(srv.audit_log, audit_keys()).ok  # the audit chain holds digests, not values: erasure leaves it intact


def test_batch_scores_are_logged_as_batch_rows(registered: Registered, churn_table: pd.DataFrame, tmp_path: Path) -> None:
    src = tmp_path / "in.parquet"
    churn_table.drop(columns=["churned_30d"]).head(300).to_parquet(src)
    args = ["--data-dir", str(tmp_path / "data"), "score", str(src), "--out", str(tmp_path / "out.parquet"), "--top-k", "0"]
    assert main([*args, "--tracking-uri", registered.cfg.tracking_uri]) == 0
    logged = ParquetStore(tmp_path / "data" / "predictions").read_window(*EVER)
    scores = pd.read_parquet(tmp_path / "out.parquet")
    assert len(logged) == 300 and set(logged["source"]) == {"batch"}
    merged = logged.sort_values("request_id", key=lambda s: s.str.split("/").str[1].astype(int)).reset_index(drop=True)
    assert merged["score"].tolist() == scores["churn_probability"].tolist()
    assert merged["customer_id"].tolist() == scores["customer_id"].tolist()
