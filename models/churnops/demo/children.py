"""The demo's server processes: started in their own process groups, stopped together however the demo ends.

A Ctrl-C reaches the demo (the terminal's foreground group), not its
children; ``stop_all`` then ends each child's whole group (SIGTERM, then
SIGKILL after a grace period), so nothing the demo started outlives it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from churnops.processes import wait_for_http


@dataclass
class Child:
    name: str
    proc: subprocess.Popen[bytes]
    log: Path


@dataclass
class Children:
    started: list[Child] = field(default_factory=list)

    def start(self, name: str, cmd: list[str], log: Path, health_url: str, env: dict[str, str], timeout_s: float = 240) -> Child:
        """Start ``cmd`` and wait until ``health_url`` answers; its output goes to ``log``."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        child = Child(name, proc, log)
        self.started.append(child)
        try:
            wait_for_http(health_url, proc, timeout_s)
        except RuntimeError as e:
            raise RuntimeError(f"{name} did not start ({e}); see {log}") from None
        return child

    def process(self, name: str) -> subprocess.Popen[bytes]:
        return next(child.proc for child in self.started if child.name == name)

    def stop_all(self, grace_s: float = 20) -> None:
        for child in reversed(self.started):
            _signal_group(child.proc, signal.SIGTERM)
        for child in reversed(self.started):
            try:
                child.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(child.proc, signal.SIGKILL)
                child.proc.wait(timeout=grace_s)
        self.started.clear()


def _signal_group(proc: subprocess.Popen[bytes], sig: int) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
