"""The online store hangs, stops, locks or breaks while the predictor serves: it degrades or rejects, then recovers.

Real processes: a private redis-server we can pause (SIGSTOP), stop and restart
from its dump, a fresh PostgreSQL database for Feast, and `churnops serve --mode cluster`;
for the embedded SQLite store, a writer holding its lock and the file truncated or replaced.
"""

from __future__ import annotations

import json
import shutil
import signal
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.processes import free_port
from churnops_feast import store as feast_store
from tests.support import groups
from tests.support.serving import Registered, Server, start_server

pytestmark = groups.SERVING_MODELS


@dataclass
class RedisProcess:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [
            "redis-server",
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(self.workdir),
            "--save",
            "",
            "--appendonly",
            "no",
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        client = redis.Redis(port=self.port, socket_timeout=1)
        deadline = time.monotonic() + 20
        while True:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop_saving(self) -> None:
        """Shut down after writing dump.rdb, so a restart comes back with the same features."""
        redis.Redis(port=self.port, socket_timeout=30).shutdown(save=True)
        assert self.proc is not None
        self.proc.wait(timeout=30)

    def signal(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def redis_process(tmp_path: Path) -> Iterator[RedisProcess]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is required (Debian: apt-get install redis-server)")
    proc = RedisProcess(free_port(), tmp_path / "redis")
    proc.workdir.mkdir()
    proc.start()
    yield proc
    proc.kill()


def _ask(server: Server, cid: int) -> dict[str, object]:
    with server.client() as c:
        r = c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": cid}]}, timeout=5)
    assert r.status_code == 200, r.text
    return dict(r.json()["predictions"][0])


def _wait_for_recovery(server: Server, cid: int, within_s: float = 20) -> dict[str, object]:
    deadline = time.monotonic() + within_s
    while True:
        answer = _ask(server, cid)
        if not answer["degraded"] or time.monotonic() > deadline:
            return answer
        time.sleep(0.25)


def _wait_for_answer(server: Server, cid: int, timeout_s: float = 30) -> dict[str, object]:
    """The first 200 of a reject-mode server; anything but 200 or 503 (store still down) fails at once."""
    deadline = time.monotonic() + timeout_s
    with server.client() as c:
        while True:
            r = c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": cid}]}, timeout=5)
            if r.status_code == 200:
                answer: dict[str, object] = r.json()["predictions"][0]
                return answer
            assert r.status_code == 503, r.text
            assert time.monotonic() < deadline, f"reject-mode server still answers 503 after {timeout_s} s: {r.text}"
            time.sleep(0.25)


def test_degrades_when_redis_hangs_or_stops_and_recovers(
    layout_copy: Layout, redis_process: RedisProcess, pg_database: str, registered: Registered, tmp_path: Path
) -> None:
    env = {"CHURNOPS_REDIS": f"127.0.0.1:{redis_process.port}", "CHURNOPS_PG_DATABASE": pg_database, "CHURNOPS_PG_HOST": "127.0.0.1"}
    foundation.publish(layout_copy, "cluster", env)
    cid = foundation.active_customers(layout_copy, 1)[0]
    common = ["--mode", "cluster", "--store-timeout-ms", "50"]
    degrade = start_server(layout_copy, registered.cfg.tracking_uri, ["champion"], tmp_path / "degrade", common, env)
    reject = start_server(
        layout_copy, registered.cfg.tracking_uri, ["champion"], tmp_path / "reject", [*common, "--on-store-failure", "reject"], env
    )
    try:
        healthy = _ask(degrade, cid)
        assert healthy["degraded"] is False

        # Redis hangs: the 50 ms socket timeout answers for it
        redis_process.signal(signal.SIGSTOP)
        hung = _ask(degrade, cid)
        assert hung["degraded"] is True and hung["degraded_reason"] in ("store_error", "store_circuit_open")
        assert 0 <= float(hung["churn_probability"]) <= 1  # type: ignore[arg-type]
        with reject.client() as c:
            refused = c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": cid}]}, timeout=5)
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        assert "online feature store unavailable" in refused.json()["error"]
        redis_process.signal(signal.SIGCONT)
        back = _wait_for_recovery(degrade, cid)
        assert back["degraded"] is False and back["churn_probability"] == healthy["churn_probability"]

        # Redis stops, then comes back from its dump
        redis_process.stop_saving()
        assert _ask(degrade, cid)["degraded"] is True
        redis_process.start()
        recovered = _wait_for_recovery(degrade, cid)
        assert recovered["degraded"] is False and recovered["churn_probability"] == healthy["churn_probability"]
        # reject mode recovers too: 503 while the breaker is open, then the same answer as before the outage
        answered = _wait_for_answer(reject, cid)
        assert answered["degraded"] is False and answered["churn_probability"] == healthy["churn_probability"]

        # degraded answers are counted and audited like any other
        metrics = httpx.get(degrade.url + "/metrics").text
        assert "churnops_degraded_predictions_total" in metrics and 'reason="store_error"' in metrics
        records = [json.loads(line) for line in degrade.audit_log.read_text().splitlines()]
        assert any(r["degraded"] for r in records) and any(not r["degraded"] for r in records)
    finally:
        redis_process.signal(signal.SIGCONT)
        degrade.stop()
        reject.stop()


# --- the embedded SQLite online store: locked, broken, replaced --------------------------------------------

STORE_BUDGET_MS = 400  # the servers' --store-timeout-ms below
BEFORE_BUSY_TIMEOUT_S = 4.5  # SQLite's own busy timeout is 5 s: an answer within 4.5 s (>10x the budget) did not wait for it


@dataclass
class SqliteServers:
    layout: Layout
    store: Path
    degrade: Server
    reject: Server
    cid: int


@pytest.fixture(scope="module")
def sqlite_servers(small_layout: Layout, registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteServers]:
    """A private published copy of the data, served by a degrading and a rejecting predictor."""
    root = tmp_path_factory.mktemp("sqlite-store")
    layout = Layout(root / "data")
    shutil.copytree(small_layout.data_dir, layout.data_dir)
    foundation.publish(layout, "embedded", {})
    store = Path(feast_store.open_store("embedded", {}, layout.data_dir).config.online_store.path)
    common = ["--store-timeout-ms", str(STORE_BUDGET_MS)]
    degrade = start_server(layout, registered.cfg.tracking_uri, ["champion"], root / "degrade", common)
    reject = start_server(layout, registered.cfg.tracking_uri, ["champion"], root / "reject", [*common, "--on-store-failure", "reject"])
    try:
        yield SqliteServers(layout, store, degrade, reject, foundation.active_customers(layout, 1)[0])
    finally:
        degrade.stop()
        reject.stop()


def _predict(server: Server, cids: list[int]) -> httpx.Response:
    with server.client() as c:
        return c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": i} for i in cids]}, timeout=BEFORE_BUSY_TIMEOUT_S)


def _store_up(server: Server) -> float:
    for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines():
        if line.startswith('churnops_online_store_up{store="sqlite"}'):
            return float(line.split()[-1])
    raise AssertionError("churnops_online_store_up{store='sqlite'} is not exported")


def _until(check: Callable[[], bool], within_s: float = 30) -> bool:
    deadline = time.monotonic() + within_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def test_a_locked_sqlite_store_is_bounded_by_the_store_timeout_and_never_stalls_probes(sqlite_servers: SqliteServers) -> None:
    s = sqlite_servers
    healthy = _predict(s.degrade, [s.cid]).json()["predictions"][0]
    assert healthy["degraded"] is False and _store_up(s.degrade) == 1.0
    writer = sqlite3.connect(s.store, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")  # a writer holds the file: every read meets SQLITE_BUSY
    try:
        # a probe sent while a request waits on the store answers first: the store is read off the event loop
        finished: list[str] = []
        pending = threading.Thread(target=lambda: finished.append(f"predict {_predict(s.degrade, [s.cid]).status_code}"))
        pending.start()
        time.sleep(STORE_BUDGET_MS / 1000 / 4)
        finished.append(f"ready {httpx.get(s.degrade.url + '/v2/health/ready', timeout=BEFORE_BUSY_TIMEOUT_S).status_code}")
        pending.join()
        assert finished == ["ready 200", "predict 200"]

        one, many = _predict(s.degrade, [s.cid]), _predict(s.degrade, [s.cid] * 32)
        assert one.status_code == 200 and many.status_code == 200
        answers = one.json()["predictions"] + many.json()["predictions"]
        assert all(p["degraded"] for p in answers)
        assert {p["degraded_reason"] for p in answers} <= {"store_error", "store_circuit_open"}
        assert _store_up(s.degrade) == 0.0  # the breaker opened
        assert httpx.get(s.degrade.url + "/v2/health/ready").status_code == 200  # degrading: still answers, still ready

        for cids in ([s.cid], [s.cid] * 32):
            refused = _predict(s.reject, cids)
            assert refused.status_code == 503 and "online feature store unavailable" in refused.text
        assert httpx.get(s.reject.url + "/v2/health/ready", timeout=BEFORE_BUSY_TIMEOUT_S).status_code == 503
        assert httpx.get(s.reject.url + "/v2/health/live").status_code == 200
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert _until(lambda: _predict(s.degrade, [s.cid]).json()["predictions"][0]["degraded"] is False)
    assert _store_up(s.degrade) == 1.0
    # no request reaches the rejecting server meanwhile: its readiness probes find the store back themselves
    assert _until(lambda: httpx.get(s.reject.url + "/v2/health/ready").status_code == 200)
    answered = _predict(s.reject, [s.cid]).json()["predictions"][0]
    assert answered["degraded"] is False and answered["churn_probability"] == healthy["churn_probability"]


def test_a_truncated_then_restored_or_replaced_sqlite_store_is_reconnected(sqlite_servers: SqliteServers) -> None:
    s = sqlite_servers
    healthy = _predict(s.degrade, [s.cid]).json()["predictions"][0]
    saved = s.store.read_bytes()
    with s.store.open("r+b") as f:
        f.truncate(0)
    broken = _predict(s.degrade, [s.cid]).json()["predictions"][0]
    assert broken["degraded"] is True and _store_up(s.degrade) == 0.0
    with s.store.open("r+b") as f:
        f.write(saved)  # restored in place
    back = _until(lambda: _predict(s.degrade, [s.cid]).json()["predictions"][0]["degraded"] is False)
    assert back, f"still degraded after the store was restored:\n{s.degrade.log.read_text()[-2000:]}"
    assert _predict(s.degrade, [s.cid]).json()["predictions"][0]["churn_probability"] == healthy["churn_probability"]
    assert _store_up(s.degrade) == 1.0

    # a new materialization renamed over the file (here: one without this customer) is read within seconds
    replacement = s.store.with_suffix(".new")
    shutil.copyfile(s.store, replacement)
    with sqlite3.connect(replacement) as db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            db.execute(f'DELETE FROM "{table}"')
    replacement.replace(s.store)
    try:
        assert _until(lambda: _predict(s.degrade, [s.cid]).status_code == 404)
    finally:
        s.store.write_bytes(saved)
