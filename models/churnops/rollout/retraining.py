"""Retraining runs of the embedded mode: the KFP training pipeline under ``kfp.local``, in a process of its own.

The operator creates a Kubeflow Pipelines run and polls it; the runner starts
``python -m churnops.rollout.retraining`` (this module's ``main``), which runs
the same pipeline (``churnops_pipelines.training.churn_training``) with
``kfp.local``'s subprocess runner, and polls it. The runner's loop goes on
while the pipeline trains.

Each run has a directory ``<deployment>/runs/<key>/`` named by the key the
decision recorded (``RetrainingStatus.pending_key``): ``process.json`` (pid),
``run.log`` (the pipeline's output), the pipeline root, and ``result.json``,
written atomically by the run when it ends (state and the ``challenger``
version it registered). A directory that exists is the run: a runner killed
between starting a run and recording it finds the run instead of starting a
second one, as the operator finds a KFP run by name. A run whose process is
gone without a result failed.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from churnops.errors import InvalidInputError, NotFoundError

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PIPELINES = ("churn-training",)  # the pipelines the embedded mode can run (the spec's monitoring.retraining.pipeline)
PROCESS_FILE = "process.json"
RESULT_FILE = "result.json"
LOG_FILE = "run.log"


@dataclass(frozen=True)
class RunInfo:
    state: str  # RUNNING, or a KFP terminal state: SUCCEEDED, FAILED, CANCELED
    challenger: str | None = None  # the version the run registered (the challenger alias when it ended)
    detail: str = ""


def _write(path: Path, doc: Mapping[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc) + "\n")
    tmp.replace(path)


def _read(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    return doc if isinstance(doc, dict) else None


def _alive(pid: int, marker: str) -> bool:
    """Whether ``pid`` runs and is the run (its command line names the run's directory), not a reused pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return marker.encode() in cmdline


class Retrainer:
    """Starts and follows the training runs of one deployment."""

    def __init__(
        self, runs_dir: Path, data_dir: Path, tracking_uri: str, store_mode: str = "embedded", python: str = sys.executable
    ) -> None:
        self.runs_dir = runs_dir
        self.data_dir = data_dir
        self.tracking_uri = tracking_uri
        self.store_mode = store_mode
        self.python = python
        self._children: dict[str, subprocess.Popen[bytes]] = {}

    def command(self, key: str, parameters: Mapping[str, str]) -> list[str]:
        run = self.runs_dir / key
        cmd = [self.python, "-m", "churnops.rollout.retraining", "--data-dir", str(self.data_dir), "--store-mode", self.store_mode]
        cmd += ["--tracking-uri", self.tracking_uri, "--pipeline-root", str(run / "kfp"), "--result", str(run / RESULT_FILE)]
        for name, value in sorted(parameters.items()):
            cmd += ["--param", f"{name}={value}"]
        return cmd

    def ensure(self, key: str, pipeline: str, parameters: Mapping[str, str]) -> str:
        """The run of ``key``: found when it exists, started otherwise. Returns its id (the key)."""
        if pipeline not in PIPELINES:
            raise InvalidInputError(
                f"the embedded mode runs {', '.join(PIPELINES)}, not {pipeline!r}", field="spec.monitoring.retraining.pipeline"
            )
        run = self.runs_dir / key
        try:
            run.mkdir(parents=True)
        except FileExistsError:
            return key
        with (run / LOG_FILE).open("wb") as out:
            # its own session: a Ctrl-C meant for the runner's terminal reaches the run only through ``close``
            child = subprocess.Popen(
                self.command(key, parameters),
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"},
            )
        self._children[key] = child
        _write(run / PROCESS_FILE, {"pid": child.pid, "command": self.command(key, parameters)})
        return key

    def info(self, key: str) -> RunInfo:
        run = self.runs_dir / key
        if not run.is_dir():
            raise NotFoundError(f"no retraining run {key!r} under {self.runs_dir}")
        result = _read(run / RESULT_FILE)
        if result is not None:
            challenger = result.get("challenger")
            return RunInfo(str(result.get("state")), str(challenger) if challenger is not None else None, str(result.get("detail") or ""))
        child = self._children.get(key)
        if child is not None:
            running = child.poll() is None  # our own child: poll, so an ended one is reaped and not seen as alive
        else:
            process = _read(run / PROCESS_FILE)
            running = process is not None and _alive(int(process["pid"]), str(run))
            if process is None:  # created a moment ago by a runner that died before starting it
                return RunInfo("FAILED", None, "the run's process was never started")
        if running:
            return RunInfo("RUNNING")
        # a result written in between the two reads counts
        result = _read(run / RESULT_FILE)
        if result is not None:
            return self.info(key)
        return RunInfo("FAILED", None, f"the run's process ended without a result (see {run / LOG_FILE})")

    def cancel(self, key: str) -> bool:
        """Stop a run this process started; it is recorded as CANCELED."""
        child = self._children.get(key)
        if child is None or child.poll() is not None:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.killpg(child.pid, signal.SIGTERM)
        try:
            child.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.wait()
        run = self.runs_dir / key
        if _read(run / RESULT_FILE) is None:
            _write(run / RESULT_FILE, {"state": "CANCELED", "challenger": None, "detail": "stopped with its runner"})
        return True

    def close(self) -> None:
        """Stop every run this process started (the runner is stopping)."""
        for key in list(self._children):
            self.cancel(key)


# --- the run itself (a process of its own) ------------------------------------------------------------


def typed_parameters(pipeline: Any, given: Sequence[str]) -> dict[str, Any]:
    """``name=value`` options as the pipeline function's typed arguments; an unknown name or bad value names itself."""
    signature = inspect.signature(pipeline.pipeline_func)
    hints = typing.get_type_hints(pipeline.pipeline_func)  # real types, also where annotations are postponed (strings)
    out: dict[str, Any] = {}
    for item in given:
        name, sep, value = item.partition("=")
        if not sep or name not in signature.parameters:
            raise InvalidInputError(f"expected name=value with a parameter of the pipeline {sorted(signature.parameters)}", field=item)
        kind = hints.get(name, str)
        try:
            out[name] = kind(value) if kind in (int, float) else value
        except ValueError:
            raise InvalidInputError(f"must be {kind.__name__}, got {value!r}", field=f"parameters.{name}") from None
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m churnops.rollout.retraining", description="one retraining run under kfp.local")
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--store-mode", default="embedded")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--pipeline-root", type=Path, required=True)
    parser.add_argument("--result", type=Path, required=True)
    parser.add_argument("--param", action="append", default=[])
    args = parser.parse_args(argv)

    from kfp import local  # noqa: PLC0415 - only the run's own process loads KFP and the pipeline

    from churnops.training import registry  # noqa: PLC0415
    from churnops_pipelines.training import churn_training  # noqa: PLC0415

    try:
        params = typed_parameters(churn_training, args.param)
        local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(args.pipeline_root))
        churn_training(data_dir=str(args.data_dir), store_mode=args.store_mode, tracking_uri=args.tracking_uri, **params)
    except Exception as e:  # any failure of the run is its result; the traceback is in the log
        import traceback  # noqa: PLC0415

        traceback.print_exc()
        detail = ANSI.sub("", f"{type(e).__name__}: {e}")  # KFP colours its messages for a terminal
        _write(args.result, {"state": "FAILED", "challenger": None, "detail": detail[:2000]})
        return 1
    challenger = registry.alias_version(registry.config_for(args.tracking_uri), registry.CHALLENGER)
    _write(args.result, {"state": "SUCCEEDED", "challenger": challenger, "detail": ""})
    return 0


if __name__ == "__main__":
    sys.exit(main())
