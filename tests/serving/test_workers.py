"""A predictor of several workers: each keeps its own audit chain, nothing is lost or counted twice.

Runs a real `churnops serve --workers 2` over loopback HTTP; every request opens a new connection, so the
kernel spreads them over both workers' sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pyarrow.parquet as pq
import pytest
import uvicorn
from prometheus_client.parser import text_string_to_metric_families

from churnops.layout import Layout
from churnops.serving.audit import read_records, verify_file
from churnops.serving.http import DEFAULT_MAX_CONNECTIONS, RESERVED_FDS, connection_cap, protocol_factory
from churnops.serving.security import ASGIApp, HttpLimits, Receive, Scope, Send
from churnops.serving.workers import audit_log_for, labelled, merge
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import Registered, Server, start_server, token

pytestmark = groups.SERVING_MODELS

WORKERS = 2


def test_each_worker_writes_its_own_chain_beside_the_configured_log() -> None:
    assert audit_log_for(Path("/d/audit/predictions.jsonl"), 1) == Path("/d/audit/predictions.worker-1.jsonl")


def test_merged_expositions_keep_each_family_once_and_every_sample_with_its_worker() -> None:
    one = b'# HELP reqs_total Requests\n# TYPE reqs_total counter\nreqs_total{model="m",v="a b{"} 2.0\n# HELP up Up\n# TYPE up gauge\nup 1.0\n'
    two = b'# HELP reqs_total Requests\n# TYPE reqs_total counter\nreqs_total{model="m",v="a b{"} 3.0\n# HELP up Up\n# TYPE up gauge\nup 0.0\n'
    families = {f.name: f for f in text_string_to_metric_families(merge([(0, one), (1, two)]).decode())}
    assert {(s.labels["worker"], s.labels["v"], s.value) for s in families["reqs"].samples} == {("0", "a b{", 2.0), ("1", "a b{", 3.0)}
    assert {(s.labels["worker"], s.value) for s in families["up"].samples} == {("0", 1.0), ("1", 0.0)}
    assert labelled(b"x{} 1", 3) == b'x{worker="3"} 1'


def test_the_connection_cap_keeps_file_descriptors_in_reserve() -> None:
    assert connection_cap(1_048_576) == DEFAULT_MAX_CONNECTIONS
    assert connection_cap(4_096) == 4_096 - RESERVED_FDS
    assert connection_cap(1_048_576, 50_000) == 50_000


async def _ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"2")]})
    await send({"type": "http.response.body", "body": b"ok"})


async def _answered(app: ASGIApp, cap: int, connections: int) -> list[bool]:
    """Whether each of ``connections`` connections, all open at once, gets an answer from a server capped at ``cap``."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, http=protocol_factory(HttpLimits(), cap), log_config=None, lifespan="off"))
    serving = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        await asyncio.sleep(0.01)
    opened = [await asyncio.open_connection(*sock.getsockname()) for _ in range(connections)]
    answered = []
    for reader, writer in opened:
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        try:
            answered.append((await asyncio.wait_for(reader.read(1024), 10)).startswith(b"HTTP/1.1 200"))
        except ConnectionResetError:
            answered.append(False)
    for _, writer in opened:
        writer.close()
    server.should_exit = True
    await serving
    return answered


def test_a_connection_past_the_cap_is_closed_and_the_others_are_served() -> None:
    assert sorted(asyncio.run(_answered(_ok, cap=2, connections=3))) == [False, True, True]


@pytest.fixture(scope="module")
def workers(served_layout: Layout, registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("workers")
    extra = ["--workers", str(WORKERS), "--prediction-log", str(tmp / "predictions"), "--rate", "1e6", "--burst", "1000000"]
    srv = start_server(served_layout, registered.cfg.tracking_uri, ["champion"], tmp, extra)
    yield srv
    srv.stop()


def _chains(server: Server) -> list[Path]:
    return [audit_log_for(server.audit_log, i) for i in range(WORKERS)]


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _score(server: Server, customers: list[int], more: int, at_most: int = 400) -> int:
    """Requests of one to three customers, each on a new connection, until every worker has audited ``more``
    predictions more than before; returns the predictions answered."""
    answered = 0
    headers = {"Authorization": f"Bearer {token()}"}
    targets = [_lines(p) + more for p in _chains(server)]
    for i in range(at_most):
        if all(_lines(p) >= n for p, n in zip(_chains(server), targets, strict=True)):
            return answered
        batch = customers[i % len(customers) : i % len(customers) + 1 + i % 3]
        with httpx.Client(base_url=server.url, headers=headers, timeout=30) as c:  # a new connection: a new hash of the port
            r = c.post("/v1/models/champion:predict", json={"instances": [{"customer_id": cid} for cid in batch]})
        assert r.status_code == 200, r.text
        answered += len(r.json()["predictions"])
    raise AssertionError(f"after {at_most} requests the workers audited {[_lines(p) for p in _chains(server)]} predictions")


def _workers_of(server: Server) -> list[int]:
    return [int(pid) for pid in Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]


def _age_s(pid: int) -> float:
    started_ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return float(Path("/proc/uptime").read_text().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK")


def test_every_worker_keeps_a_verifiable_chain_of_exactly_the_predictions_answered(
    workers: Server, customers: list[int], tmp_path: Path
) -> None:
    answered = _score(workers, customers, more=5)

    # /metrics answered by either worker holds both workers' series, which add up to what was answered
    text = httpx.get(workers.url + "/metrics").text
    predictions = [s for f in text_string_to_metric_families(text) if f.name == "churnops_predictions" for s in f.samples]
    assert {s.labels["worker"] for s in predictions if s.name == "churnops_predictions_total"} == {"0", "1"}
    assert sum(s.value for s in predictions if s.name == "churnops_predictions_total") == answered

    # a worker killed mid-run is forked again and continues its own chain; killed once its prediction log flushed
    # (a crash loses up to one flush interval, 1 s) and past 10 s of age (a younger one stops the server)
    victim = _workers_of(workers)[1]
    time.sleep(max(2.5, 10.5 - _age_s(victim)))
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while len(_workers_of(workers)) < WORKERS or victim in _workers_of(workers):
        assert time.monotonic() < deadline, "the killed worker was not started again"
        time.sleep(0.2)
    answered += _score(workers, customers, more=3)

    workers.stop()
    assert workers.proc.returncode == 0
    audited = 0
    for chain in _chains(workers):
        result = verify_file(chain, audit_keys())
        assert result.ok and result.unacknowledged == 0, (chain.name, result.problems)
        audited += result.records
    assert audited == answered
    request_ids = [rec["request_id"] for chain in _chains(workers) for rec in read_records(chain)]
    assert len(set(request_ids)) == len(request_ids)  # none audited twice

    # the prediction-log writers drained on the stop: every answered prediction once, none lost
    segments = list((workers.audit_log.parent.parent / "predictions").rglob("*.parquet"))
    assert sum(pq.ParquetFile(s).metadata.num_rows for s in segments) == answered
