"""The ``churnops`` command line: one module per command group.

Each module adds its sub-commands and points each at a function with
``set_defaults(func=...)``. ``main`` parses, configures logging and is the one
place where a ``ChurnOpsError`` becomes a message on stderr and its exit code
(see ``churnops.errors``); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from churnops.cli import audit, backup, data, demo, features, model, monitor, privacy, report, rollout, score, serve, train
from churnops.errors import ChurnOpsError
from churnops.processes import single_process_metrics

GROUPS = (demo, data, features, train, model, score, audit, monitor, privacy, rollout, report, backup)


def command_of(argv: Sequence[str]) -> str | None:
    """The sub-command in ``argv`` (the first word after the global options)."""
    it = iter(argv)
    for word in it:
        if word in ("--data-dir",):
            next(it, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(argv: Sequence[str] = ()) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnops", description="ChurnOps: churn prediction platform")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where data, features and reports go (default ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)
    for group in GROUPS:
        group.register(sub)
    serve.register(sub, with_kserve=command_of(argv) == "serve")
    return parser


INTERRUPTED = 130  # the shell's code for a command ended by Ctrl-C (128 + SIGINT)


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import optuna  # only its logger is configured here

    # Optuna logs every trial at INFO on its own handler; the progress bar already shows them.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if verbose else optuna.logging.WARNING)
    if not verbose:
        # MLflow's own handler speaks at INFO and warns about choices made here on purpose (a pickled
        # python_model, environments captured from uv.lock), and its artifact downloads draw a bar
        # per file; Feast warns that on-demand views are experimental, FastAPI (under KServe) about
        # ORJSONResponse on every request. -v shows all of it.
        os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # MLflow sets its level from this when first imported
        logging.getLogger("mlflow").setLevel(logging.ERROR)
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        for library in ("mlflow", "feast", "fastapi"):
            warnings.filterwarnings("ignore", module=rf"{library}\.")
        # a library imported later routes warnings to logging (captureWarnings) and re-adds its own filters
        logging.getLogger("py.warnings").setLevel(logging.ERROR)


def main(argv: Sequence[str] | None = None) -> int:
    single_process_metrics()  # before anything imports Feast (see churnops.processes)
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(words).parse_args(words)
    configure_logging(args.verbose)
    try:
        code: int = args.func(args, dict(os.environ))
        return code
    except ChurnOpsError as e:
        print(f"churnops: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:  # the command's own finally blocks have stopped what it started
        print("churnops: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        # Free Arrow readers (Feast's file offline store) while Arrow is still alive: a parquet
        # worker thread torn down during interpreter exit aborts the process (apache/arrow#34314).
        gc.collect()
