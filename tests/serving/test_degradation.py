"""Redis (the cluster online store) hangs or stops while the predictor serves: it degrades or rejects, then recovers.

Real processes: a private redis-server we can pause (SIGSTOP), stop and restart
from its dump, a fresh PostgreSQL database for Feast, and `churnops serve --mode cluster`.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.processes import free_port
from tests.support.serving import Registered, Server, start_server


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
