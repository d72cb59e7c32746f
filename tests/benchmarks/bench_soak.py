"""Soak benchmark: one predictor pod holding 10,000 idle connections while honest traffic is served, and what its second core adds.

On data and a small champion built here (embedded mode, loopback only), two parts:

1. Cores (needs wrk): explained requests at ``--throughput-concurrency`` (default 16)
   for ``--throughput-seconds`` (default 15, in ``--rounds`` turns) against
   `churnops serve --workers 1`, ``--workers 2`` and ``--workers 2
   --no-prediction-log``, running side by side and loaded in turn, with a prober on
   ``/v2/health/ready`` every 50 ms. Printed: req/s, the cores the server kept
   busy and probe p99 of each, the
   two-worker speed-up (verdicts: >= 1.5x, the second core is used; probe p99 <= 100 ms),
   what the prediction log costs per request (server CPU-ms, from the two 2-worker
   servers) and what the audit append costs on each worker (its ``stage="audit"``
   latency, from the worker-labelled ``/metrics``).
2. Connections, against one server of ``--workers`` processes (default 2): first
   ``--baseline-seconds`` (default 30) of the honest load alone (``--clients``
   clients sending ``--rate`` explained requests/s in total) with a prober on
   ``/v2/health/ready`` every 50 ms: the same-run baseline. Then ``--idle``
   keep-alive connections (default 10,000, held by a process of their own, each
   sending one cheap request and then nothing, or one every ``--idle-every`` s;
   the server keeps idle connections ``--keep-alive`` s, as behind a proxy) and
   ``--slowloris`` sockets trickling header bytes (default 50) are opened and held
   for ``--seconds`` (default 60) under the same honest load and prober. Printed
   for both phases: probe and honest p50/p99 and errors, the server's open fds
   and RSS (all its processes); memory per idle connection (the servers' RSS
   grown by opening them, per connection, and the kernel's TCP memory for both
   ends); then verdicts: honest p99 with the idle connections <= 2x without,
   probe p99 <= 100 ms, every idle connection held, no errors.
The soft ``ulimit -n`` is raised for this process and the servers.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from churnops.data.config import GeneratorConfig
from churnops.data.generator import generate_blocks, save_manifest, write_raw
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS
from churnops.features.engine import build_features, compute_block_features
from churnops.layout import Layout
from churnops.processes import free_port, terminate, wait_for_http
from churnops.serving.auth import AuthConfig, issue_token
from churnops.training import registry
from tests.benchmarks.bench_serving import wrk
from tests.support.serving import fit_ensemble, register

BIN = Path(sys.executable).parent
SECRET = "soak-secret-0123456789-0123456789-0123456789"
PROBE_EVERY_S = 0.05
PROBE_P99_MS = 100.0
HONEST_P99_RATIO = 2.0  # honest p99 with the idle connections against without them
SPEEDUP = 1.5  # two workers against one: the second core is used


@dataclass
class Tally:
    probes: list[float] = field(default_factory=list)  # seconds
    probe_failures: int = 0
    honest: list[float] = field(default_factory=list)
    honest_errors: int = 0
    slow_closed: int = 0  # slowloris sockets the server closed (then reopened)
    samples: list[tuple[str, int, float]] = field(default_factory=list)  # (when, fds, rss MB)


@dataclass
class Held:
    """What the idle connections' process saw."""

    target: int  # connections to open
    established: int = 0  # connections open once all were opened
    requests: int = 0
    closed: int = 0  # closed by the server (then reopened)
    reset: int = 0  # reset or refused mid-way
    late: int = 0  # a request unanswered within 30 s
    failed: int = 0  # could not connect


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


def processes_of(pid: int) -> list[int]:
    """The server and its workers."""
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [pid, *(int(c) for c in children.read_text().split())] if children.exists() else [pid]


def server_usage(pid: int) -> tuple[int, float]:
    """Open fds and RSS (MB) of the server, summed over its processes."""
    fds, rss_kb = 0, 0
    for p in processes_of(pid):
        try:
            fds += sum(1 for _ in Path(f"/proc/{p}/fd").iterdir())
            status = Path(f"/proc/{p}/status").read_text().splitlines()
        except FileNotFoundError:  # a worker that just ended
            continue
        rss_kb += next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return fds, rss_kb / 1024


def server_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) the server's processes have used."""
    ticks = 0
    for p in processes_of(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def tcp_memory_mb() -> float:
    """The kernel's memory for TCP buffers (both ends of every loopback connection)."""
    line = next(x for x in Path("/proc/net/sockstat").read_text().splitlines() if x.startswith("TCP:"))
    words = line.split()
    return int(words[words.index("mem") + 1]) * os.sysconf("SC_PAGE_SIZE") / 1e6


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


def explain_body(customer: int) -> str:
    return json.dumps({"instances": [{"customer_id": customer}]})


# -- the server --------------------------------------------------------------------------------------------------


@contextmanager
def predictor(data: Path, tmp: Path, workers: int, extra: list[str], name: str) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """`churnops serve` with ``workers`` processes; yields its port and process, stops it afterwards."""
    port = free_port()
    cmd = [str(BIN / "churnops"), "--data-dir", str(data), "serve", "--port", str(port), "--model", "champion"]
    cmd += ["--workers", str(workers), "--jwt-secret-file", str(tmp / "jwt.key"), "--rate", "1e9", "--burst", "1000000000"]
    cmd += ["--audit-log", str(tmp / name / "audit" / "predictions.jsonl"), "--prediction-log", str(tmp / name / "predictions")]
    log = tmp / f"{name}.log"
    with log.open("w") as out:
        # the child inherits the raised soft limit
        proc = subprocess.Popen(cmd + extra, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        wait_for_http(f"http://127.0.0.1:{port}/v2/health/ready", proc, 180)
        wait_for_workers(log, workers, proc)
        yield port, proc
    except BaseException:
        shutil.copy(log, Path(tempfile.gettempdir()) / f"churnops-soak-{name}.log")
        print(f"server log kept at {Path(tempfile.gettempdir()) / f'churnops-soak-{name}.log'}")
        raise
    finally:
        terminate(proc, 60)


def wait_for_workers(log: Path, workers: int, proc: subprocess.Popen[bytes], timeout_s: float = 180) -> None:
    """Until every worker said it serves: the first one's answer does not mean the others listen yet (a client's
    connections opened meanwhile would all stay on the first)."""
    deadline = time.monotonic() + timeout_s
    while workers > 1 and log.read_text().count("ChurnOps predictor on http") < workers:
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"not every one of the {workers} workers started; see {log}")
        time.sleep(0.2)
    time.sleep(0.5)  # each says so just before it listens


# -- part 1: what the second core adds --------------------------------------------------------------------------


def stage_per_worker(metrics: str, stage: str) -> dict[str, tuple[float, float]]:
    """(seconds, requests) spent in ``stage`` by each worker, from the worker-labelled ``/metrics``."""
    out: dict[str, tuple[float, float]] = {}
    for family in text_string_to_metric_families(metrics):
        if family.name != "churnops_latency_seconds":
            continue
        for s in family.samples:
            if s.labels.get("stage") != stage or not s.name.endswith(("_sum", "_count")):
                continue
            total, count = out.get(s.labels.get("worker", "0"), (0.0, 0.0))
            out[s.labels.get("worker", "0")] = (total + s.value, count) if s.name.endswith("_sum") else (total, count + s.value)
    return out


@dataclass
class Share:
    """One server's measured slices in part 1."""

    requests: int = 0
    seconds: float = 0.0
    cpu_s: float = 0.0
    p99_ms: float = 0.0  # the worst slice's
    probes: Tally = field(default_factory=Tally)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0


CONFIGS: tuple[tuple[str, int, list[str]], ...] = (("1 worker", 1, []), ("2 workers", 2, []), ("2, no predlog", 2, ["--no-prediction-log"]))


def measure(args: argparse.Namespace, name: str, port: int, pid: int, bodies: list[str], token: str, tmp: Path, share: Share) -> None:
    """One slice of saturating load on one server, with a prober beside it."""
    seconds = max(1, args.throughput_seconds // args.rounds)
    probing = threading.Thread(target=prober, args=(port, share.probes, time.monotonic() + seconds))
    probing.start()
    cpu = server_cpu_s(pid)
    url = f"http://127.0.0.1:{port}/v1/models/champion:explain"
    run = wrk(name.replace(" ", "-").replace(",", ""), url, bodies, token, args.throughput_concurrency, seconds, 1, tmp)
    share.cpu_s += server_cpu_s(pid) - cpu
    share.requests += run.requests
    share.seconds += run.seconds
    share.p99_ms = max(share.p99_ms, run.p99_ms)
    probing.join()


def throughput(args: argparse.Namespace, data: Path, tmp: Path, token: str, customers: list[int]) -> bool:
    """The servers run side by side and take turns (``--rounds`` slices each): drifts in the machine's other load
    reach every server alike."""
    bodies = [explain_body(c) for c in customers]
    shares = {name: Share() for name, _, _ in CONFIGS}
    with ExitStack() as stack:
        servers = {
            name: stack.enter_context(predictor(data, tmp, n, extra, name.replace(" ", "-").replace(",", ""))) for name, n, extra in CONFIGS
        }
        for port, _ in servers.values():
            wrk("warmup", f"http://127.0.0.1:{port}/v1/models/champion:explain", bodies, token, args.throughput_concurrency, 3, 1, tmp)
        for _ in range(args.rounds):
            for name, (port, proc) in servers.items():
                measure(args, name, port, proc.pid, bodies, token, tmp, shares[name])
        with urllib.request.urlopen(f"http://127.0.0.1:{servers['2 workers'][0]}/metrics", timeout=10) as r:
            metrics = r.read().decode()
    for name, share in shares.items():
        cores = share.cpu_s / share.seconds
        print(
            f"  {name:<14} c={args.throughput_concurrency}: {share.rps:7,.0f} req/s, p99 {share.p99_ms:6.1f} ms (worst slice); server busy "
            f"{cores:.2f} cores ({share.rps / max(cores, 0.01):,.0f} req per CPU-second); health probes p99 "
            f"{percentile(share.probes.probes, 99):.1f} ms, {share.probes.probe_failures} failed"
        )
    audit, total = stage_per_worker(metrics, "audit"), stage_per_worker(metrics, "total")
    for worker, (seconds, count) in sorted(audit.items()):
        spent = total.get(worker, (0.0, 1.0))
        print(
            f"  worker {worker}: {count:,.0f} requests; audit append {1000 * seconds / max(count, 1):.3f} ms of "
            f"{1000 * spent[0] / max(spent[1], 1):.2f} ms per request"
        )
    with_log, without = shares["2 workers"], shares["2, no predlog"]
    cost_ms = 1000 * (with_log.cpu_s / with_log.requests - without.cpu_s / without.requests)
    print(
        f"  prediction log: {with_log.rps:,.0f} req/s with it, {without.rps:,.0f} without; "
        f"{cost_ms:+.3f} CPU-ms per request (server CPU per request, with minus without)"
    )
    speedup = shares["2 workers"].rps / shares["1 worker"].rps
    ok = speedup >= SPEEDUP
    print(f"verdict     {'PASS' if ok else 'FAIL'}: 2 workers x{speedup:.2f} the req/s of 1 (>= x{SPEEDUP:g}: the second core is used)")
    worst = max(percentile(s.probes.probes, 99) for s in shares.values())
    failed = sum(s.probes.probe_failures for s in shares.values())
    probes_ok = worst <= PROBE_P99_MS and failed == 0
    print(
        f"verdict     {'PASS' if probes_ok else 'FAIL'}: health probes p99 <= {worst:.1f} ms at full load (<= {PROBE_P99_MS:g}), {failed} failed"
    )
    return ok and probes_ok


# -- part 2: idle connections ----------------------------------------------------------------------------------


async def quiet(reader: asyncio.StreamReader, stop: asyncio.Event) -> bool:
    """Wait for the end of the soak without a word; False when the server closed the connection first."""
    closed, stopped = asyncio.ensure_future(reader.read(1)), asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({closed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    closed.cancel()
    stopped.cancel()
    return stopped in done


async def idle(port: int, every_s: float, held: Held, opened: asyncio.Event, stop: asyncio.Event, start_in: float) -> None:
    """A pooled keep-alive connection: a cheap request at once, then one every ``every_s`` (none when 0)."""
    await asyncio.sleep(start_in)
    first = True
    while not stop.is_set():
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            held.failed += 1
            await asyncio.sleep(1)
            continue
        try:
            while not stop.is_set():
                if await asyncio.wait_for(request(reader, writer, get("/v2/health/live")), 30) == 0:
                    held.closed += 1
                    break
                held.requests += 1
                if first:
                    first = False
                    held.established += 1
                    if held.established + held.failed >= held.target:
                        opened.set()
                if every_s <= 0:
                    if not await quiet(reader, stop):
                        held.closed += 1
                    break
                with suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            held.late += 1
        except asyncio.IncompleteReadError:
            held.closed += 1
        except OSError:
            held.reset += 1
        finally:
            writer.close()


async def hold(port: int, n: int, every_s: float, spread_s: float, pipe: Connection) -> None:
    held = Held(n)
    opened, stop = asyncio.Event(), asyncio.Event()
    tasks = [asyncio.create_task(idle(port, every_s, held, opened, stop, spread_s * i / n)) for i in range(n)]
    with suppress(TimeoutError):
        await asyncio.wait_for(opened.wait(), spread_s + 60)
    pipe.send(("opened", held.established, held.failed))
    await asyncio.to_thread(pipe.recv)  # until the soak is over
    stop.set()
    await asyncio.gather(*tasks)
    pipe.send(("done", held))


def holder(port: int, n: int, every_s: float, spread_s: float, pipe: Connection) -> None:
    """The idle connections, in a process of their own: their event loop must not delay the honest clients'."""
    asyncio.run(hold(port, n, every_s, spread_s, pipe))


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
        body = explain_body(customers[i % len(customers)]).encode()
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


async def load(args: argparse.Namespace, port: int, pid: int, token: str, customers: list[int], seconds: float, n_slow: int) -> Tally:
    """The honest load and the prober (plus ``n_slow`` slowloris sockets) for ``seconds``."""
    tally = Tally()
    started = time.monotonic()
    until = started + seconds
    probing = asyncio.create_task(asyncio.to_thread(prober, port, tally, until))
    tasks = [sampler(pid, tally, started, seconds)]
    tasks += [honest(port, token, customers, args.clients / args.rate, tally, until, i * 97) for i in range(args.clients)]
    tasks += [slowloris_loop(port, tally, until, 2.0 * i / max(1, n_slow)) for i in range(n_slow)]
    await asyncio.gather(*tasks)
    await probing
    return tally


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] * 1000 if len(values) > 1 else float("nan")


def describe(name: str, tally: Tally) -> None:
    probes, honest_s = tally.probes, tally.honest
    print(
        f"{name:<11} probes {len(probes)}: p50 {percentile(probes, 50):.1f} ms, p99 {percentile(probes, 99):.1f} ms, "
        f"max {max(probes, default=0) * 1000:.1f} ms, failed {tally.probe_failures}; honest {len(honest_s)}: "
        f"p50 {percentile(honest_s, 50):.1f} ms, p99 {percentile(honest_s, 99):.1f} ms, {tally.honest_errors} errors"
    )
    for when, fds, rss in tally.samples:
        print(f"  server {when:<6} {fds:>6} open fds, RSS {rss:,.0f} MB (all processes)")


def connections(args: argparse.Namespace, data: Path, tmp: Path, token: str, customers: list[int]) -> bool:
    name = f"soak-{args.workers}w"
    extra = ["--header-timeout", str(args.header_timeout), "--timeout-keep-alive", str(args.keep_alive)]
    with predictor(data, tmp, args.workers, extra, name) as (port, proc):
        print(f"baseline: {args.baseline_seconds:g} s of honest load ({args.rate:g}/s) and probes alone", flush=True)
        base = asyncio.run(load(args, port, proc.pid, token, customers, args.baseline_seconds, 0))
        describe("baseline", base)

        _, rss_before = server_usage(proc.pid)
        tcp_before = tcp_memory_mb()
        mine, theirs = multiprocessing.get_context("fork").Pipe()
        spread = min(20.0, args.idle / 1_000)  # a pool warming up, not a SYN flood
        process = multiprocessing.get_context("fork").Process(target=holder, args=(port, args.idle, args.idle_every, spread, theirs))
        process.start()
        _, established, failed = mine.recv()
        time.sleep(2.0)  # let the last requests' buffers settle
        fds_held, rss_held = server_usage(proc.pid)
        tcp_held = tcp_memory_mb()
        per_connection_kb = (rss_held - rss_before) * 1024 / max(established, 1)
        print(
            f"\nidle: {established:,} of {args.idle:,} keep-alive connections open ({failed} failed to connect); "
            f"server {fds_held:,} open fds, RSS {rss_before:,.0f} -> {rss_held:,.0f} MB: {per_connection_kb:.1f} KB per idle connection; "
            f"kernel TCP memory {tcp_before:.1f} -> {tcp_held:.1f} MB (both ends)",
            flush=True,
        )
        print(f"soak: {args.seconds:g} s with them, {args.slowloris} slowloris sockets and the same honest load", flush=True)
        tally = asyncio.run(load(args, port, proc.pid, token, customers, args.seconds, args.slowloris))
        mine.send("stop")
        _, held = mine.recv()
        process.join(30)
        describe("soak", tally)
        if not tally.honest or held.closed + held.reset + held.late:
            shutil.copy(tmp / f"{name}.log", Path(tempfile.gettempdir()) / f"churnops-soak-{name}.log")
    established, lost = held.established, held.closed + held.reset + held.late
    pace = f"a request every {args.idle_every:g} s" if args.idle_every > 0 else "one request, then silent"
    print(
        f"  idle       {established:,} connections, {pace}: {held.requests:,} requests; {held.closed} closed by the server, "
        f"{held.reset} reset, {held.late} unanswered within 30 s, {held.failed} failed to connect"
    )
    print(f"  slowloris  {args.slowloris} sockets trickling headers: {tally.slow_closed} closed by the server (each reconnects)")

    honest_ratio = percentile(tally.honest, 99) / percentile(base.honest, 99)
    probe_p99 = percentile(tally.probes, 99)
    print(
        f"vs baseline honest p99 {percentile(tally.honest, 99):.1f} ms with {established:,} idle connections against "
        f"{percentile(base.honest, 99):.1f} ms without (x{honest_ratio:.2f}); probe p99 {probe_p99:.1f} ms against "
        f"{percentile(base.probes, 99):.1f} ms"
    )
    held_all = established == args.idle and lost == 0
    errors = tally.honest_errors + tally.probe_failures + base.honest_errors + base.probe_failures
    checks = [
        (honest_ratio <= HONEST_P99_RATIO, f"honest p99 x{honest_ratio:.2f} with the idle connections (<= x{HONEST_P99_RATIO:g})"),
        (probe_p99 <= PROBE_P99_MS, f"probe p99 {probe_p99:.1f} ms (<= {PROBE_P99_MS:g})"),
        (held_all, f"{established:,} of {args.idle:,} idle connections held, {lost} lost"),
        (errors == 0, f"{errors} honest errors and failed probes (0)"),
    ]
    for ok, what in checks:
        print(f"verdict     {'PASS' if ok else 'FAIL'}: {what}")
    return all(ok for ok, _ in checks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="predictor processes of the soak's server (one per core)")
    parser.add_argument("--seconds", type=float, default=60.0, help="the soak, with the idle and slow sockets (0: skip part 2)")
    parser.add_argument("--baseline-seconds", type=float, default=30.0, help="the same honest load and prober alone, first")
    parser.add_argument("--idle", type=int, default=10_000, help="keep-alive connections held open")
    parser.add_argument(
        "--idle-every", type=float, default=0.0, help="seconds between an idle connection's requests (0: one request, then silent)"
    )
    parser.add_argument(
        "--keep-alive", type=int, default=300, help="the server's --timeout-keep-alive (a proxy in front keeps connections as long)"
    )
    parser.add_argument("--slowloris", type=int, default=50)
    parser.add_argument("--clients", type=int, default=4, help="honest clients")
    parser.add_argument("--rate", type=float, default=50.0, help="honest explained requests/s in total")
    parser.add_argument("--header-timeout", type=float, default=10.0, help="the server's --header-timeout")
    parser.add_argument("--throughput-seconds", type=int, default=15, help="measured seconds per run of part 1 (0: skip it)")
    parser.add_argument("--throughput-concurrency", type=int, default=16, help="wrk connections in part 1")
    parser.add_argument("--rounds", type=int, default=3, help="turns each server of part 1 takes (its seconds split among them)")
    args = parser.parse_args()
    if args.throughput_seconds and shutil.which("wrk") is None:
        raise SystemExit("wrk is required for the cores part (Debian: apt-get install wrk), or --throughput-seconds 0")
    limit = raise_fd_limit(args.idle + args.slowloris + 1_000)
    print(f"ChurnOps soak: {os.cpu_count()} cores, fd soft limit {limit}\n", flush=True)
    with tempfile.TemporaryDirectory(prefix="churnops-soak-") as name:
        tmp = Path(name)
        data = tmp / "data"
        t = time.perf_counter()
        layout = build_data(data)
        print(f"data and a small champion built in {time.perf_counter() - t:.0f} s", flush=True)
        customers = foundation.active_customers(layout, 200)
        (tmp / "jwt.key").write_text(SECRET)
        token = issue_token(AuthConfig(key=SECRET), "soak", ["predictor"], 3600)
        ok = True
        if args.throughput_seconds:
            print(f"\ncores: explained requests for {args.throughput_seconds} s per server (wrk)", flush=True)
            ok = throughput(args, data, tmp, token, customers)
        if args.seconds:
            print(f"\nconnections: one predictor of {args.workers} worker(s)", flush=True)
            ok = connections(args, data, tmp, token, customers) and ok
        sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
