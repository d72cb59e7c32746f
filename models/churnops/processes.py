"""Local processes: a free loopback port, waiting until a server answers, stopping one, and a sane metrics mode.

The demo, the embedded rollout runner and the monitoring page start real
server processes (``churnops serve`` and friends) on this machine.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
import urllib.request
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

FEAST_METRICS_DIR = "feast_metrics_"  # the prefix of the temporary directory Feast's import creates
MULTIPROC_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR", "prometheus_multiproc_dir")


def single_process_metrics(environ: MutableMapping[str, str] = os.environ) -> None:
    """Keep prometheus_client in its single-process mode; call it at an entry point, before Feast is imported.

    Importing Feast points ``PROMETHEUS_MULTIPROC_DIR`` at a temporary directory of its own (children
    inherit it). prometheus_client, imported after that, keeps every value in mmap files: two registries
    in one process then share their counts, and every increment writes to a file. A directory Feast
    made is dropped here, and prometheus_client's value class is fixed before Feast can set it again.
    A directory the user set on purpose (a multi-process server) is left alone.
    """
    for name in MULTIPROC_VARIABLES:
        if Path(environ.get(name, "")).name.startswith(FEAST_METRICS_DIR):
            del environ[name]
    import prometheus_client.values  # noqa: F401, PLC0415 - the import is the point: it fixes the value class


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_http(url: str, proc: subprocess.Popen[bytes], timeout_s: float) -> None:
    """Poll ``url`` until it answers 200; RuntimeError if ``proc`` exits or ``timeout_s`` passes first."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with code {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout_s:g} s")
        time.sleep(0.3)


def terminate(proc: subprocess.Popen[Any], grace_s: float = 15.0) -> None:
    """SIGTERM, then SIGKILL if ``proc`` has not exited within ``grace_s``; returns once it is gone."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)
