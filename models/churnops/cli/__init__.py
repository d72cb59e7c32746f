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
from collections.abc import Sequence
from pathlib import Path

from churnops.cli import audit, data, demo, features, model, monitor, score, serve, train
from churnops.errors import ChurnOpsError

GROUPS = (demo, data, features, train, model, score, audit, monitor)


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


def configure_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import optuna  # only its logger is configured here

    # Optuna logs every trial at INFO on its own handler; the progress bar already shows them.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if verbose else optuna.logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    args = build_parser(words).parse_args(words)
    configure_logging(args.verbose)
    try:
        code: int = args.func(args, dict(os.environ))
        return code
    except ChurnOpsError as e:
        print(f"churnops: error: {e}", file=sys.stderr)
        return e.exit_code
    finally:
        # Free Arrow readers (Feast's file offline store) while Arrow is still alive: a parquet
        # worker thread torn down during interpreter exit aborts the process (apache/arrow#34314).
        gc.collect()
