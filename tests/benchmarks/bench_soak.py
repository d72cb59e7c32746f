"""Soak benchmark: the predictor under idle and slow sockets while honest clients and a health prober keep going.

For ``--seconds`` (default 60) against one `churnops serve` process (embedded
mode, a small model built here, loopback only):
  - ``--idle`` keep-alive connections (default 1,000) that each send a cheap
    request every few seconds, as a client pool holds its connections (and,
    with ``--idle-silent``, connections that never send: the header timeout
    closes them, which the output says);
  - ``--slowloris`` sockets (default 50) trickling header bytes, reconnecting
    whenever the server closes one;
  - ``--clients`` honest clients (default 4) sending explained V1 requests at
    ``--rate`` requests/s in total;
  - a prober on ``/v2/health/ready`` every 50 ms, on a thread of its own.
Before the soak, the same server gets the same honest load and prober alone
for ``--baseline-seconds`` (default 20): the baseline of the same run.
Printed for both phases: probe p50/p99/max, honest count/errors/p99, the
server's open file descriptors and RSS at start, middle and end, how many idle
and slow sockets the server closed; then the soak's probe p99 against the
baseline's, and a verdict against probe p99 <= 100 ms and 0 honest errors.
The soft ``ulimit -n`` is raised for this process and the server.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from churnops.data.config import GeneratorConfig
from churnops.data.generator import generate_blocks, save_manifest, write_raw
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS
from churnops.features.engine import build_features, compute_block_features
from churnops.layout import Layout
from churnops.processes import free_port, wait_for_http
from churnops.serving.auth import AuthConfig, issue_token
from churnops.training import registry
from tests.support.serving import fit_ensemble, register

BIN = Path(sys.executable).parent
SECRET = "soak-secret-0123456789-0123456789-0123456789"
PROBE_EVERY_S = 0.05
PROBE_P99_MS = 100.0


@dataclass
class Tally:
    probes: list[float] = field(default_factory=list)  # seconds
    probe_failures: int = 0
    honest: list[float] = field(default_factory=list)
    honest_errors: int = 0
    idle_requests: int = 0
    idle_closed: int = 0  # idle connections the server closed (then reopened)
    slow_closed: int = 0  # slowloris sockets the server closed (then reopened)
    samples: list[tuple[str, int, float]] = field(default_factory=list)  # (when, fds, rss MB)


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = min(hard, max(soft, wanted)) if hard != resource.RLIM_INFINITY else max(soft, wanted)
    resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return target


def build_data(data_dir: Path) -> Layout:
    """2,000 customers, their features in the embedded store, and a small champion (about a minute)."""
    layout = Layout(data_dir)
    small = GeneratorConfig(n_customers=2_000, block_size=1_000, seed=7)
    save_manifest(small, layout.raw, write_raw(small, layout.raw))
    build_features(small.calendar, layout.raw, layout.features)
    foundation.publish(layout, "embedded", dict(os.environ))
    train = GeneratorConfig(n_customers=3_000, block_size=3_000, seed=21)
    block = next(generate_blocks(train))
    feats = compute_block_features(train.calendar, block.tables, train.calendar.labelled_snapshot_days())
    table = block.labels[[ENTITY, TIMESTAMP, "churned_30d"]]
    for domain in DOMAINS:
        table = table.merge(feats[domain], on=[ENTITY, TIMESTAMP], validate="one_to_one")
    model = fit_ensemble(table, ["xgboost"], "single")
    reg = registry.RegistryConfig.embedded(data_dir)
    version = register(reg, model, table[list(model.feature_names)].head(5), 0.3)
    registry.promote(reg, version, "soak benchmark")
    return layout


def server_usage(pid: int) -> tuple[int, float]:
    fds = sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return fds, rss_kb / 1024


async def request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, raw: bytes) -> int:
    """One request on an open connection; the status (0 when the server closed it)."""
    writer.write(raw)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    if not head:
        return 0
    status = int(head.split(b" ", 2)[1])
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")), 0)
    await reader.readexactly(length)
    return status


def get(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: soak\r\n\r\n".encode()


def post(path: str, body: bytes, token: str) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: soak\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\n"
    return head.encode() + f"Content-Length: {len(body)}\r\n\r\n".encode() + body


def prober(port: int, tally: Tally, until: float) -> None:
    """On a thread of its own with a blocking connection: the client's busy event loop must not add to its figures."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    while time.monotonic() < until:
        started = time.perf_counter()
        try:
            connection.request("GET", "/v2/health/ready")
            response = connection.getresponse()
            response.read()
            if response.status != 200:
                tally.probe_failures += 1
        except (OSError, http.client.HTTPException):
            tally.probe_failures += 1
            connection.close()
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        tally.probes.append(time.perf_counter() - started)
        time.sleep(max(0.0, PROBE_EVERY_S - (time.perf_counter() - started)))
    connection.close()


async def honest(port: int, token: str, customers: list[int], every_s: float, tally: Tally, until: float, offset: int) -> None:
    connection = await asyncio.open_connection("127.0.0.1", port)
    i = offset
    while time.monotonic() < until:
        started = time.perf_counter()
        body = f'{{"instances": [{{"customer_id": {customers[i % len(customers)]}}}]}}'.encode()
        i += 1
        try:
            status = await asyncio.wait_for(request(*connection, post("/v1/models/champion:explain", body, token)), 10)
            if status != 200:
                tally.honest_errors += 1
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            tally.honest_errors += 1
            connection = await asyncio.open_connection("127.0.0.1", port)
        tally.honest.append(time.perf_counter() - started)
        await asyncio.sleep(max(0.0, every_s - (time.perf_counter() - started)))


async def idle(port: int, every_s: float, silent: bool, tally: Tally, until: float, start_in: float) -> None:
    """A pooled keep-alive connection: a cheap request every ``every_s`` (none at all when ``silent``)."""
    await asyncio.sleep(start_in)
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(1)
            continue
        try:
            while time.monotonic() < until:
                if silent:
                    if await reader.read(1) == b"":
                        tally.idle_closed += 1
                        break
                    continue
                if await asyncio.wait_for(request(reader, writer, get("/v2/health/live")), 10) == 0:
                    tally.idle_closed += 1
                    break
                tally.idle_requests += 1
                await asyncio.sleep(every_s)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            tally.idle_closed += 1
        finally:
            writer.close()


async def slowloris(port: int, tally: Tally, until: float, start_in: float) -> None:
    """Headers one byte a second, never finished; reconnects whenever the server closes the socket."""
    await asyncio.sleep(start_in)
    line = b"GET /v2/health/ready HTTP/1.1\r\nHost: soak\r\nX-Slow: " + b"a" * 10_000
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        await asyncio.sleep(1)
        return
    closed = asyncio.ensure_future(reader.read())  # completes when the server closes the socket
    try:
        for byte in line:
            if closed.done() or time.monotonic() >= until:
                break
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.wait([closed], timeout=1.0)
        if closed.done():
            tally.slow_closed += 1
    except OSError:
        tally.slow_closed += 1
    finally:
        closed.cancel()
        writer.close()


async def slowloris_loop(port: int, tally: Tally, until: float, start_in: float) -> None:
    while time.monotonic() < until:
        await slowloris(port, tally, until, start_in)
        start_in = 0.0


async def sampler(pid: int, tally: Tally, started: float, seconds: float) -> None:
    for name, at in (("start", 1.0), ("middle", seconds / 2), ("end", seconds - 1.0)):
        await asyncio.sleep(max(0.0, started + at - time.monotonic()))
        fds, rss = server_usage(pid)
        tally.samples.append((name, fds, rss))


async def soak(args: argparse.Namespace, port: int, pid: int, token: str, customers: list[int], baseline: bool = False) -> Tally:
    """One phase: the honest load and the prober, plus (unless ``baseline``) the idle and slowloris sockets."""
    tally = Tally()
    seconds = args.baseline_seconds if baseline else args.seconds
    n_idle, n_slow = (0, 0) if baseline else (args.idle, args.slowloris)
    started = time.monotonic()
    until = started + seconds
    spread = min(5.0, seconds / 4)  # connections open over the first seconds, as a pool warms up
    probing = asyncio.create_task(asyncio.to_thread(prober, port, tally, until))
    tasks = [sampler(pid, tally, started, seconds)]
    tasks += [honest(port, token, customers, args.clients / args.rate, tally, until, i * 97) for i in range(args.clients)]
    tasks += [idle(port, args.idle_every, args.idle_silent, tally, until, spread * i / n_idle) for i in range(n_idle)]
    tasks += [slowloris_loop(port, tally, until, spread * i / max(1, n_slow)) for i in range(n_slow)]
    await asyncio.gather(*tasks)
    await probing
    return tally


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 if len(values) > 1 else float("nan")


def report_baseline(tally: Tally) -> float:
    """The honest load and the prober alone, on the same server, just before the soak; returns the probe p99 (ms)."""
    p99 = percentile(tally.probes, 99)
    print(f"baseline    honest load and prober only: probes p50 {percentile(tally.probes, 50):.1f} ms, p99 {p99:.1f} ms", end="")
    print(f"; honest {len(tally.honest)}, {tally.honest_errors} errors, p99 {percentile(tally.honest, 99):.1f} ms")
    for name, fds, rss in tally.samples:
        print(f"server      {name:<6} {fds:>5} open fds, RSS {rss:.0f} MB")
    return p99


def report(args: argparse.Namespace, tally: Tally, baseline_p99: float) -> bool:
    probes, honest_ms = tally.probes, tally.honest
    p99 = percentile(probes, 99)
    print(
        f"probes      {len(probes)}: p50 {percentile(probes, 50):.1f} ms, p99 {p99:.1f} ms, max {max(probes) * 1000:.1f} ms, failed {tally.probe_failures}"
    )
    print(f"honest      {len(honest_ms)} explained requests, {tally.honest_errors} errors, p99 {percentile(honest_ms, 99):.1f} ms")
    kind = "silent (never send)" if args.idle_silent else f"a request every {args.idle_every:g} s"
    print(
        f"idle        {args.idle} keep-alive connections, {kind}: {tally.idle_requests} requests, {tally.idle_closed} closed by the server"
    )
    print(f"slowloris   {args.slowloris} sockets trickling headers: {tally.slow_closed} closed by the server (each reconnects)")
    for name, fds, rss in tally.samples:
        print(f"server      {name:<6} {fds:>5} open fds, RSS {rss:.0f} MB")
    print(f"vs baseline probe p99 {p99:.1f} ms under the soak against {baseline_p99:.1f} ms without it (x{p99 / baseline_p99:.2f})")
    ok = p99 <= PROBE_P99_MS and tally.honest_errors == 0 and tally.probe_failures == 0
    print(f"verdict     {'PASS' if ok else 'FAIL'}: probe p99 {p99:.1f} ms (<= {PROBE_P99_MS:g}), honest errors {tally.honest_errors} (0)")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--idle", type=int, default=1_000, help="keep-alive connections held open")
    parser.add_argument("--idle-every", type=float, default=3.0, help="seconds between an idle connection's requests")
    parser.add_argument("--idle-silent", action="store_true", help="idle connections send nothing (the server's timeouts close them)")
    parser.add_argument("--slowloris", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="honest clients")
    parser.add_argument("--rate", type=float, default=20.0, help="honest explained requests/s in total")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="the server's --header-timeout")
    parser.add_argument("--baseline-seconds", type=float, default=20.0, help="the same honest load and prober alone, first")
    args = parser.parse_args()
    limit = raise_fd_limit(args.idle + args.slowloris + 1_000)
    print(f"ChurnOps soak: {os.cpu_count()} cores, {args.seconds:g} s, fd soft limit {limit}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="churnops-soak-") as tmp:
        data = Path(tmp) / "data"
        t = time.perf_counter()
        layout = build_data(data)
        print(f"data and a small champion built in {time.perf_counter() - t:.0f} s", flush=True)
        customers = foundation.active_customers(layout, 200)
        (Path(tmp) / "jwt.key").write_text(SECRET)
        port = free_port()
        cmd = [str(BIN / "churnops"), "--data-dir", str(data), "serve", "--port", str(port), "--model", "champion"]
        cmd += ["--jwt-secret-file", str(Path(tmp) / "jwt.key"), "--header-timeout", str(args.header_timeout)]
        cmd += ["--rate", "1e9", "--burst", "1000000000", "--no-prediction-log"]
        log = Path(tmp) / "server.log"
        with log.open("w") as out:
            # the child inherits the raised soft limit
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
        try:
            wait_for_http(f"http://127.0.0.1:{port}/v2/health/ready", proc, 180)
            token = issue_token(AuthConfig(key=SECRET), "soak", ["predictor"], 3600)
            print(f"baseline: {args.baseline_seconds:g} s of honest load and probes alone", flush=True)
            base = asyncio.run(soak(args, port, proc.pid, token, customers, baseline=True))
            baseline_p99 = report_baseline(base)
            print(f"\nsoak: {args.seconds:g} s with idle and slowloris sockets", flush=True)
            tally = asyncio.run(soak(args, port, proc.pid, token, customers))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        ok = report(args, tally, baseline_p99)
        if not ok:
            shutil.copy(log, Path(tempfile.gettempdir()) / "churnops-soak-server.log")
            print(f"server log kept at {Path(tempfile.gettempdir()) / 'churnops-soak-server.log'}")
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
