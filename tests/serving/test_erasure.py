"""Erasure end to end: after `churnops privacy erase`, the customer is readable nowhere under the data directory.

A real predictor serves a copy of the data directory. Customer X is scored many times (V1 and V2,
champion and challenger), batch scoring includes X, labels name X. The erasure runs while the server
is still running and still receiving requests for other customers, and while X's latest rows wait in
the server's buffer (a long flush interval). Then every file under the data directory is read as what
it is (Parquet through pyarrow, SQLite through sqlite3, text and JSON) and must hold neither X's id
nor X's feature row; the audit chains verify; the receipt holds no id; X is a 404; nobody else lost
anything. The same scan run before the erasure finds X in every store, so it is not blind.
"""

from __future__ import annotations

import json
import re
import shutil
import sqlite3
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from feast.infra.key_encoding_utils import serialize_entity_key

from churnops.cli import main
from churnops.features.catalog import FEATURES
from churnops.layout import Layout
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.privacy.keys import subject
from churnops.serving.audit import read_records, verify_file
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import _entity_key, sqlite_reader
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import Registered, Server, start_server

pytestmark = groups.SERVING_MODELS

EVER = (pd.Timestamp("2000-01-01", tz="UTC").to_pydatetime(), pd.Timestamp("2100-01-01", tz="UTC").to_pydatetime())
STRINGS = {f.name for f in FEATURES if f.dtype == "string"}
SQLITE_MAGIC = b"SQLite format 3\x00"
TEXT_SUFFIXES = {".json", ".jsonl", ".csv", ".html", ".htm", ".log", ".txt", ".md", ".prom", ".yaml", ".yml", ".head", ".torn"}


# --- the scan: X as a value, read the way each file is meant to be read ------------------------------------------


def token(x: int) -> re.Pattern[str]:
    return re.compile(rf"(?<![\w.]){x}(?![\w]|\.\d)")


def json_hits(doc: Any, x: int, key: str = "") -> int:
    if isinstance(doc, dict):
        return sum(json_hits(v, x, k) for k, v in doc.items())
    if isinstance(doc, list):
        return sum(json_hits(v, x, key) for v in doc)
    is_id_field = "customer" in key.lower() or key.lower() in ("id", "entity")
    return int(is_id_field and not isinstance(doc, bool) and (doc == x or doc == str(x)))


def distinctive(row: Mapping[str, Any]) -> dict[str, Any]:
    """X's feature values worth matching on: numeric, present and non-zero (shared categories match many customers)."""
    return {k: float(v) for k, v in row.items() if k not in STRINGS and v is not None and float(v) != 0.0}


def parquet_hits(path: Path, x: int, row: Mapping[str, float]) -> list[str]:
    table = pq.read_table(path)
    found = []
    for name in table.column_names:
        col = table.column(name)
        is_id = "customer" in name.lower() and (pa.types.is_integer(col.type) or pa.types.is_string(col.type))
        if is_id and x in {int(v) for v in col.to_pylist() if v is not None and str(v).isdigit()}:
            found.append(f"{path}: id in column {name}")
    numeric = {f.name for f in table.schema if pa.types.is_floating(f.type) or pa.types.is_integer(f.type)}
    shared = [c for c in row if c in numeric]
    if len(shared) >= 3:
        frame = table.select(shared).to_pandas().astype(float)
        if ((frame - pd.Series({c: row[c] for c in shared})).abs() < 1e-9).all(axis=1).any():
            found.append(f"{path}: X's feature row ({len(shared)} columns)")
    return found


def sqlite_hits(path: Path, x: int, key: bytes) -> list[str]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    found = []
    try:
        for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')]:
                n = conn.execute(f'SELECT count(*) FROM "{table}" WHERE "{column}" IN (?, ?, ?)', (x, str(x), key)).fetchone()[0]
                if n:
                    found.append(f"{path}: {table}.{column} holds X ({n} row(s))")
    finally:
        conn.close()
    return found


def text_hits(path: Path, x: int) -> list[str]:
    text = path.read_text(errors="replace")
    found = [f"{path}: the id as a number in the text"] if token(x).search(text) else []
    if path.suffix == ".json":
        found += [f"{path}: a customer field holds X"] if json_hits(json.loads(text), x) else []
    if path.suffix in (".jsonl", ".torn"):
        found += [
            f"{path}: a record's customer field holds X" for line in text.splitlines() if line.strip() and json_hits(orjson.loads(line), x)
        ]
    if path.suffix == ".csv":
        frame = pd.read_csv(path, dtype=str)
        found += [f"{path}: CSV column {c} holds X" for c in frame.columns if "customer" in c.lower() and (frame[c] == str(x)).any()]
    return found


def scan(root: Path, x: int, row: Mapping[str, float], key: bytes) -> list[str]:
    """Every place under ``root`` where X is readable (``key``: X's entity key as Feast stores it)."""
    found: list[str] = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        with path.open("rb") as f:
            head = f.read(16)
        if head == SQLITE_MAGIC:
            found += sqlite_hits(path, x, key)
        elif path.suffix == ".parquet":
            found += parquet_hits(path, x, row)
        elif path.suffix in TEXT_SUFFIXES:
            found += text_hits(path, x)
    return found


# --- the story ------------------------------------------------------------------------------------------------


def v1(c: httpx.Client, model: str, cid: int) -> httpx.Response:
    return c.post(f"/v1/models/{model}:predict", json={"instances": [{"customer_id": cid}]})


def v2(c: httpx.Client, model: str, cid: int) -> httpx.Response:
    return c.post(f"/v2/models/{model}/infer", json={"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [cid]}]})


@pytest.fixture
def data(served_layout: Layout, tmp_path: Path) -> Layout:
    layout = Layout(tmp_path / "data")
    shutil.copytree(served_layout.data_dir, layout.data_dir)
    return layout


@pytest.fixture
def predictor(data: Layout, registered: Registered, tmp_path: Path) -> Iterator[Server]:
    """Audit trail and prediction log inside the data directory; rows wait in the buffer until the server stops."""
    srv = start_server(
        data,
        registered.cfg.tracking_uri,
        ["champion", "challenger"],
        tmp_path / "server",
        ["--audit-log", str(data.audit / "predictions.jsonl"), "--prediction-log-flush-s", "600", "--rate", "2000", "--burst", "1000"],
    )
    yield srv
    srv.stop()


class Traffic:
    """Requests for other customers, one after another in a thread, until stopped; every answer is kept."""

    def __init__(self, srv: Server, customers: list[int]) -> None:
        self.answers: list[httpx.Response] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(srv, customers), daemon=True)

    def _run(self, srv: Server, customers: list[int]) -> None:
        with srv.client() as c:
            i = 0
            while not self._stop.is_set():
                self.answers.append(v1(c, "champion", customers[i % len(customers)]))
                i += 1

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.mark.timeout(900)
def test_after_erasure_the_customer_is_readable_nowhere_and_the_trails_still_verify(
    data: Layout, predictor: Server, registered: Registered, customers: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    reader = sqlite_reader(feast_store.open_store("embedded", {}, data.data_dir), TRAINING_SERVICE)
    rows = {cid: reader.read(cid) for cid in customers}
    x = max(customers[:10], key=lambda cid: len(distinctive(rows[cid] or {})))  # the customer with the most telling feature row
    others = [cid for cid in customers if cid != x]
    x_row = distinctive(rows[x] or {})
    x_key = serialize_entity_key(_entity_key(x), entity_key_serialization_version=reader.layout.key_version)
    assert len(x_row) >= 5

    # labels, and a batch input inside the data directory, both naming X
    (data.data_dir / "labels").mkdir()
    pd.DataFrame({"customer_id": [x, *others[:5]], "event_timestamp": "2025-01-01", "churned_30d": [1, 0, 0, 1, 0, 0]}).to_csv(
        data.data_dir / "labels" / "outcomes.csv", index=False
    )
    batch_in = pd.DataFrame([rows[cid] for cid in [x, *others[:30]]])
    for col in batch_in.columns:
        if col not in STRINGS:
            batch_in[col] = pd.to_numeric(batch_in[col]).astype(float)
    batch_in.insert(0, "customer_id", [x, *others[:30]])
    (data.data_dir / "batch").mkdir()
    batch_in.to_parquet(data.data_dir / "batch" / "customers.parquet")
    scores = data.reports / "scores.parquet"
    base = ["--data-dir", str(data.data_dir)]
    assert (
        main(
            [
                *base,
                "score",
                str(data.data_dir / "batch" / "customers.parquet"),
                "--out",
                str(scores),
                "--tracking-uri",
                registered.cfg.tracking_uri,
            ]
        )
        == 0
    )

    # X many times, online, both protocols and both versions; the others too
    with predictor.client() as c:
        answers = [f(c, m, x) for _ in range(5) for f in (v1, v2) for m in ("champion", "challenger")]
        answers += [v1(c, "champion", cid) for cid in others[:20]]
        assert all(r.status_code == 200 for r in answers), [r.text for r in answers if r.status_code != 200]
        before = scan(data.data_dir, x, x_row, x_key)
        assert {Path(h.split(":")[0]).relative_to(data.data_dir).parts[0] for h in before} >= {
            "privacy",
            "feast",
            "features",
            "raw",
            "reports",
            "batch",
            "labels",
            "predictions",
        }, before  # the scan sees X where X is (the server's own rows still wait in its buffer)
        assert [r for r in (v1(c, "challenger", x), v2(c, "champion", x)) if r.status_code != 200] == []  # X just before
    capsys.readouterr()

    with Traffic(predictor, others[:20]) as traffic:
        assert main([*base, "privacy", "erase", "--customer", str(x), "--settle-s", "2"]) == 0
    printed = capsys.readouterr().out
    assert traffic.answers and all(r.status_code == 200 for r in traffic.answers)  # the others were served throughout

    with predictor.client() as c:
        gone = [v1(c, "champion", x), v2(c, "challenger", x)]
        assert [r.status_code for r in gone] == [404, 404], [r.text for r in gone]  # no features: not a degraded score
        assert v1(c, "champion", others[0]).status_code == 200
    predictor.stop()  # a clean stop drains the buffer: X's waiting rows must be dropped, the others' written

    assert scan(data.data_dir, x, x_row, x_key) == []
    keys = audit_keys()
    for name in ("predictions.jsonl", "batch.jsonl", "erasures.jsonl"):
        assert verify_file(data.audit / name, keys).ok, name
    audited = list(read_records(data.audit / "predictions.jsonl"))
    assert audited and all("customer_id" not in r for r in audited) and all(r["subject"] for r in audited)

    receipts = list(read_records(data.audit / "erasures.jsonl"))
    assert len(receipts) == 1 and receipts[0]["type"] == "erasure" and receipts[0]["passes"] == 2
    erased = receipts[0]["erased"]
    assert erased["online_store"] > 0 and erased["prediction_log"] == 1 and erased["subject_keys"] >= 1
    assert {"raw", "features", "reports", "batch", "labels"} <= {k for k, n in erased["files"].items() if n > 0}, erased
    assert receipts[0]["receipt_id"] in printed and not token(x).search(json.dumps(receipts[0]))

    # nobody else lost anything: every answer for the others is in the log, and they are still served
    logged = ParquetStore(data.predictions).read_window(*EVER)
    served = {
        p["request_id"]
        for r in [*answers, *traffic.answers]
        if r.status_code == 200 and "predictions" in r.json()
        for p in r.json()["predictions"]
        if p["customer_id"] != x
    }
    assert served <= set(logged["request_id"])
    assert x not in set(logged["customer_id"].dropna().astype(int)) and len(set(logged["customer_id"].dropna())) > 20
    assert reader.read(others[0]) is not None and len(pd.read_parquet(scores)) == 30


class SentFeatures:
    """Requests naming one customer *with* their feature record (nothing to read from the store), until stopped."""

    def __init__(self, srv: Server, customer: int, record: Mapping[str, Any]) -> None:
        self.codes: list[int] = []
        self._body = {"instances": [{"customer_id": customer, "features": dict(record)}]}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(srv,), daemon=True)

    def _run(self, srv: Server) -> None:
        with srv.client() as c:
            while not self._stop.is_set():
                self.codes.append(c.post("/v1/models/champion:predict", json=self._body).status_code)

    def wait_for(self, n: int) -> None:
        """Until ``n`` answers were received (the stream goes on meanwhile)."""
        while len(self.codes) < n and self._thread.is_alive():
            self._thread.join(timeout=0.1)

    def __enter__(self) -> SentFeatures:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)


@pytest.mark.timeout(600)
def test_an_erased_customer_sent_with_features_is_refused_and_never_keyed_again(
    data: Layout, predictor: Server, customers: list[int], capsys: pytest.CaptureFixture[str]
) -> None:
    """id + features needs no online store, so the 404 of an id-only request does not stop it: the suppression list must."""
    reader = sqlite_reader(feast_store.open_store("embedded", {}, data.data_dir), TRAINING_SERVICE)
    x, other = customers[0], customers[1]
    record = reader.read(x)
    assert record is not None
    body = {"instances": [{"customer_id": x, "features": record}]}
    with predictor.client() as c:
        assert c.post("/v1/models/champion:predict", json=body).status_code == 200
    with SentFeatures(predictor, x, record) as during:
        assert main(["--data-dir", str(data.data_dir), "privacy", "erase", "--customer", str(x), "--settle-s", "2"]) == 0
        during.wait_for(len(during.codes) + 3)  # a few more answers after the receipt, from the same stream
    capsys.readouterr()
    with predictor.client() as c:
        after = c.post("/v1/models/champion:predict", json=body)
        assert after.status_code == 404 and "instances[0].customer_id" in after.text and "erased" in after.text, after.text
        assert c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": other}]}).status_code == 200
    assert set(during.codes[-3:]) == {404}

    conn = sqlite3.connect(f"file:{data.data_dir / 'privacy' / 'privacy.db'}?mode=ro", uri=True)
    keys = dict(conn.execute("SELECT customer_id, key FROM subject_keys").fetchall())
    conn.close()
    assert x not in keys  # not re-created by the traffic during or after the erasure
    receipt = list(read_records(data.audit / "erasures.jsonl"))[-1]
    assert receipt["erased"]["subject_keys"] == 1 and "erasure_token" not in receipt
    later = [r for r in read_records(data.audit / "predictions.jsonl") if r["time"] > receipt["time"]]
    others = {subject(bytes(k), cid) for cid, k in keys.items()}
    assert later and all(r["subject"] in others for r in later)  # every record after the receipt names someone else
