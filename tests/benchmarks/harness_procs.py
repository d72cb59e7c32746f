"""The operator benchmark's harness in child processes: kmock in one, the Prometheus, MLflow and KFP fakes in another.

In the benchmark's own process they shared one GIL with each other and the driver, and the operator's requests queued
there: each child now has its own interpreter, and the driver talks to both over HTTP only, as the operator does.

    python -m tests.benchmarks.harness_procs kube --kubeconfig PATH
    python -m tests.benchmarks.harness_procs fakes --models md-000 md-001 ... [--versions 2]

A child prints one JSON line on stdout once it serves (its URLs), serves until its stdin closes or it gets SIGTERM,
then prints one more JSON line (for kmock: the RBAC refusals, ``{"denied": [...]}``) and exits.
``Harness`` is the driver's side: start, read the first line, stop, read the last.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from churnops.processes import terminate
from tests.operators.fakes import FakeKFP, FakeMLflow, FakePrometheus, Traffic
from tests.operators.harness import prepare
from tests.operators.kubemock import ADMIN_TOKEN, KubeServer

ROOT = Path(__file__).resolve().parents[2]


def announce(line: dict[str, Any]) -> None:
    print(json.dumps(line), flush=True)


def serve_until_told() -> None:
    """Block until the driver closes our stdin (or sends SIGTERM: SystemExit out of the read, so the ``finally``s still run)."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    for _ in sys.stdin:  # whatever the driver writes is dropped, not kept
        pass


def run_kube(kubeconfig: Path) -> None:
    with KubeServer() as kube:
        with httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30) as api:
            prepare(kube, api)
        announce({"url": kube.url, "kubeconfig": str(kube.kubeconfig(kubeconfig))})
        try:
            serve_until_told()
        finally:
            announce({"denied": kube.call(lambda: list(kube.k.denied))})


def run_fakes(models: list[str], versions: int) -> None:
    with FakePrometheus() as prom, FakeMLflow() as mlflow, FakeKFP() as kfp:
        for v in ("1", "2"):
            prom.set(v, Traffic())
        for name in models:
            mlflow.register(name, versions)
        announce({"prometheus": prom.url, "mlflow": mlflow.url, "kfp": kfp.url})
        try:
            serve_until_told()
        finally:
            announce({"prometheus queries": len(prom.state.queries)})  # how much the operator asked, for a look at the load


class Harness:
    """One child process, from the driver's side."""

    def __init__(self, *args: str) -> None:
        self.what = args[0]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.benchmarks.harness_procs", *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.ready = self._line()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _line(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(10)
            raise RuntimeError(f"harness child {self.what} exited with {self.proc.returncode} before its line (see stderr)")
        result: dict[str, Any] = json.loads(line)
        return result

    def stop(self) -> dict[str, Any]:
        """Close its stdin and return its last line."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            return self._line()
        finally:
            self.proc.wait(15)

    def __enter__(self) -> Harness:
        return self

    def __exit__(self, *exc: object) -> None:
        terminate(self.proc)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="which", required=True)
    kube = sub.add_parser("kube", help="kmock's Kubernetes API, with the CRD and the namespace")
    kube.add_argument("--kubeconfig", type=Path, required=True, help="where to write the operator's kubeconfig")
    fakes = sub.add_parser("fakes", help="Prometheus (versions 1 and 2 healthy), MLflow (the models registered) and KFP")
    fakes.add_argument("--models", nargs="+", required=True)
    fakes.add_argument("--versions", type=int, default=2, help="versions 1..N registered for each model")
    args = p.parse_args()
    if args.which == "kube":
        run_kube(args.kubeconfig)
    else:
        run_fakes(args.models, args.versions)


if __name__ == "__main__":
    main()
