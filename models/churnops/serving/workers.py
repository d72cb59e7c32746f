"""One predictor process per core behind one port, each with its own state.

A Python process scores on one core at a time (the GIL), so a pod with two
cores runs two workers. KServe's own ``--workers`` starts each worker with
``spawn`` and re-imports its FastAPI app by name: the worker would have none of
the ChurnOps wiring (guards, audit, prediction log, metrics), which is built at
the entry point. Here the supervisor (the process ``churnops serve`` started)
instead forks each worker before anything is built; the worker then builds all
of its state itself (store clients, audit sink, prediction-log writer,
registry, threads), so nothing is shared but the port:

- each worker listens on its own socket bound to the port with
  ``SO_REUSEPORT``: the kernel spreads new connections evenly across the
  listening workers (one shared accept queue lets whichever worker wakes first
  take a whole burst). The supervisor binds them (a taken port fails at once;
  ``--port 0`` works) and keeps none open: a dead worker's socket closes with
  it, so no connection waits in a queue nobody reads;
- each worker writes its own audit chain (``audit_log_for``) that verifies on
  its own; a PostgreSQL trail is one chain that the workers extend in turn;
- ``/metrics`` answered by any worker holds every worker's series, labelled
  ``worker`` (``MetricsFanIn``): a scrape lands on one worker (Prometheus keeps
  its connection alive), so per-worker answers would show one worker only.

The first worker is built alone, the others once it is: opening the registry
and the stores the first time may create or migrate their schemas, which
concurrent first openings would race on. A worker that dies after its start is
forked again with the same index (it continues its audit chain); one that dies
within ``min_uptime_s`` stops the server (a configuration or load error would
otherwise loop). SIGTERM or SIGINT stop every worker within the grace period; a
worker whose supervisor is gone stops itself.

Limits kept per process (request rate per token subject, failed logins and
scrapes per address, open connections) apply per worker.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import socket
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from types import FrameType
from typing import cast

log = logging.getLogger(__name__)

WORKER_LABEL = b"worker"
FETCH_TIMEOUT_S = 2.0  # a sibling that cannot render within this is left out of the scrape
ORPHAN_CHECK_S = 1.0


@dataclass(frozen=True)
class Worker:
    """What one worker is given: its index, its listening socket, where the workers' metrics sockets live, and the
    event it sets once built (just before it serves)."""

    index: int
    count: int
    sock: socket.socket
    run_dir: Path
    built: EventType

    def metrics_socket(self, index: int) -> Path:
        return self.run_dir / f"metrics-{index}.sock"


def audit_log_for(log_path: Path, index: int) -> Path:
    """Worker ``index``'s own chain beside the configured log: ``predictions.jsonl`` -> ``predictions.worker-0.jsonl``."""
    return log_path.with_name(f"{log_path.stem}.worker-{index}{log_path.suffix}")


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``(host, port)`` that other workers' sockets may share; it listens once its worker serves."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        # accepted connections inherit it: uvicorn writes a response's head and body apart, and the body must not
        # wait for the client's delayed ACK (40 ms per answer): the event loop sets it only on servers it binds itself
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def labelled(line: bytes, index: int) -> bytes:
    """An exposition sample line with ``worker="<index>"`` as its first label."""
    label = WORKER_LABEL + b'="' + str(index).encode() + b'"'
    brace, space = line.find(b"{"), line.find(b" ")
    if brace != -1 and (space == -1 or brace < space):  # label values may hold spaces, never the metric name
        rest = line[brace + 1 :]
        return line[: brace + 1] + label + (b"" if rest.startswith(b"}") else b",") + rest
    return line[:space] + b"{" + label + b"}" + line[space:]


def merge(expositions: Iterable[tuple[int, bytes]]) -> bytes:
    """Several workers' expositions (Prometheus text format) as one: each family once, every sample with its worker.

    The format wants a family's samples together under one HELP and TYPE, so samples are grouped by the family
    they came under; families keep the order they were first seen in.
    """
    headers: dict[bytes, dict[bytes, bytes]] = {}
    samples: dict[bytes, list[bytes]] = {}
    for index, text in expositions:
        family = b""
        for line in text.split(b"\n"):  # never splitlines(): a label value may hold a bare \r
            if line.startswith((b"# HELP ", b"# TYPE ")):
                kind, family = line[2:6], line.split(b" ", 3)[2]
                headers.setdefault(family, {}).setdefault(kind, line)
                samples.setdefault(family, [])
            elif line and not line.startswith(b"#"):
                samples.setdefault(family, []).append(labelled(line, index))
    out: list[bytes] = []
    for family, lines in samples.items():
        found = headers.get(family, {})
        out += [found[kind] for kind in (b"HELP", b"TYPE") if kind in found]
        out += lines
    return b"\n".join(out) + b"\n" if out else b""


def fetch(path: Path, timeout_s: float = FETCH_TIMEOUT_S) -> bytes | None:
    """A sibling's exposition from its metrics socket; None when it does not answer (starting, restarting, gone)."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(timeout_s)
            s.connect(str(path))
            chunks = []
            while chunk := s.recv(1 << 16):
                chunks.append(chunk)
            return b"".join(chunks)
    except OSError as e:
        log.info("metrics of %s left out of this scrape: %s", path.name, e)
        return None


class MetricsFanIn:
    """A worker's ``/metrics``: its own series and its siblings', each labelled with its worker.

    Each worker answers its siblings on a UNIX socket of the supervisor's private directory with its own
    rendering (made when asked: nothing is rendered while nobody scrapes).
    """

    def __init__(self, render: Callable[[], bytes], worker: Worker) -> None:
        self._render = render
        self.worker = worker
        self._lock = threading.Lock()  # one rendering at a time: a scrape here and a sibling's may coincide
        self._server: socketserver.UnixStreamServer | None = None

    def own(self) -> bytes:
        with self._lock:
            return self._render()

    def start(self) -> None:
        own = self.own

        class Answer(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                self.request.sendall(own())

        path = self.worker.metrics_socket(self.worker.index)
        path.unlink(missing_ok=True)  # a socket left by this worker's previous life
        self._server = socketserver.UnixStreamServer(str(path), Answer)
        threading.Thread(target=self._server.serve_forever, name="metrics-fan-in", daemon=True).start()

    def render(self) -> bytes:
        texts = [(self.worker.index, self.own())]
        for i in range(self.worker.count):
            if i != self.worker.index and (text := fetch(self.worker.metrics_socket(i))) is not None:
                texts.append((i, text))
        return merge(sorted(texts))

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()


def watch_supervisor(parent: int, every_s: float = ORPHAN_CHECK_S) -> None:
    """Stop this worker (as SIGTERM does) once its supervisor is gone, e.g. killed: an orphan would hold the port."""

    def check() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        log.warning("the supervisor (pid %d) is gone: stopping worker pid %d", parent, os.getpid())
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=check, name="supervisor-watch", daemon=True).start()


def _worker_main(run: Callable[[Worker], None], worker: Worker, parent: int) -> None:
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_DFL)  # the supervisor's handlers came with the fork; KServe installs its own
    watch_supervisor(parent)
    run(worker)


@dataclass
class _Running:
    process: BaseProcess
    started: float


class Supervisor:
    """Forks ``count`` workers running ``run``, forks again one that dies, and stops them all on SIGTERM/SIGINT."""

    def __init__(
        self, run: Callable[[Worker], None], host: str, port: int, count: int, grace_s: float = 30.0, min_uptime_s: float = 10.0
    ) -> None:
        self.run, self.host, self.port, self.count = run, host, port, count
        self.grace_s, self.min_uptime_s = grace_s, min_uptime_s
        self.run_dir = Path(tempfile.mkdtemp(prefix="churnops-workers-"))  # 0700: only this user reaches the metrics sockets
        self._context = multiprocessing.get_context("fork")
        self._workers: dict[int, _Running] = {}
        self._stop = threading.Event()  # set by SIGTERM or SIGINT

    def _fork(self, index: int) -> EventType:
        sock = bind(self.host, self.port)
        if self.port == 0:
            self.port = int(sock.getsockname()[1])  # the others share the port the first one got
        worker = Worker(index, self.count, sock, self.run_dir, self._context.Event())
        process = self._context.Process(target=_worker_main, args=(self.run, worker, os.getpid()), name=f"churnops-worker-{index}")
        process.start()
        sock.close()  # the worker's now: a dead worker's socket must close with it
        self._workers[index] = _Running(process, time.monotonic())
        log.info("worker %d started (pid %s) on port %d", index, process.pid, self.port)
        return worker.built

    def _built(self, index: int, built: EventType) -> bool:
        """Wait until worker ``index`` is built; False when it ended first (or a stop signal came)."""
        process = self._workers[index].process
        while not built.wait(0.2):
            if not process.is_alive() or self._stop.is_set():
                return False
        return True

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def serve(self) -> int:
        """Run until a stop signal (0) or a worker failing at its start (1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            if not self._built(0, self._fork(0)):
                return 0 if self._stop.is_set() else 1
            for index in range(1, self.count):
                self._fork(index)
            print(f"ChurnOps predictor: {self.count} workers on http://{self.host}:{self.port}", flush=True)
            return self._watch()
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            shutil.rmtree(self.run_dir, ignore_errors=True)

    def _watch(self) -> int:
        while not self._stop.is_set():
            sentinels = {r.process.sentinel: i for i, r in self._workers.items()}
            for ended in wait(list(sentinels), timeout=0.5):
                if self._stop.is_set():
                    break
                index = sentinels[cast(int, ended)]  # wait() returns the sentinels (ints) that became ready
                running = self._workers[index]
                running.process.join()
                uptime = time.monotonic() - running.started
                if uptime < self.min_uptime_s:
                    log.error(
                        "worker %d exited with code %s %.1f s after its start: stopping the server", index, running.process.exitcode, uptime
                    )
                    return 1
                log.warning("worker %d exited with code %s: starting it again", index, running.process.exitcode)
                self._fork(index)
        return 0

    def _stop_all(self) -> None:
        alive = [r.process for r in self._workers.values() if r.process.is_alive()]
        for p in alive:
            if p.pid is not None:
                os.kill(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.grace_s
        for p in alive:
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("worker %s did not stop within %.0f s: killed", p.name, self.grace_s)
                p.kill()
                p.join()
