"""Inputs at the edges of what JSON allows reach the audit trail and the prediction log intact, or are refused.

A real `churnops serve`: a request id with a trailing newline is refused (it would be stored as sent), and a
feature value past int64 is scored and logged (it used to drop the whole record from the prediction log).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from churnops.layout import Layout
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import sqlite_reader
from tests.support import groups
from tests.support.serving import Registered, start_server

pytestmark = groups.SERVING_MODELS

EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


@pytest.mark.timeout(600)
def test_huge_integer_features_reach_the_prediction_log_and_newline_ids_are_refused(
    served_layout: Layout, registered: Registered, customers: list[int], tmp_path: Path
) -> None:
    record = sqlite_reader(feast_store.open_store("embedded", {}, served_layout.data_dir), TRAINING_SERVICE).read(customers[0])
    assert record is not None and isinstance(record["tenure_days"], int | float)
    log_dir = tmp_path / "predictions"
    srv = start_server(served_layout, registered.cfg.tracking_uri, ["champion"], tmp_path, ["--prediction-log", str(log_dir)])
    try:
        with srv.client() as c:
            scored = [
                c.post("/v1/models/champion:predict", json={"instances": [{"features": {**record, "tenure_days": big}}]})
                for big in (2**63, 2**64 - 1)
            ]
            v2 = {"id": "ok\n", "inputs": [{"name": "customer_id", "shape": [1], "datatype": "INT64", "data": [customers[0]]}]}
            body_id = c.post("/v2/models/champion/infer", json=v2)  # (HTTP itself forbids a newline in a header)
    finally:
        srv.stop()  # a clean stop drains the prediction log's buffer
    assert [r.status_code for r in scored] == [200, 200], scored[0].text
    logged = ParquetStore(log_dir).read_window(*EVER).set_index("request_id")
    for r in scored:
        assert r.json()["predictions"][0]["request_id"] in logged.index
    assert body_id.status_code == 400 and body_id.json()["error"].startswith("id: ")
    assert "ok\n" not in srv.audit_log.read_text()
