"""``churnops audit verify``: check the prediction audit trail's hash chain and head."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("audit", help="the prediction audit trail").add_subparsers(dest="action", required=True)
    verify = group.add_parser("verify", help="check the hash chain and its head (edits, deletions, reordering, truncation)")
    verify.add_argument("--log", type=Path, default=None, help="audit log file (default <data-dir>/audit/predictions.jsonl)")
    verify.add_argument("--dsn", default=None, help="PostgreSQL audit trail instead of a file")
    verify.set_defaults(func=run_verify)


def run_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Exit 0 when the trail verifies, 1 when it does not (a finding, not an error)."""
    from churnops.serving.audit import head_path_for, verify_file, verify_postgres

    if args.dsn:
        result = verify_postgres(args.dsn)
    else:
        path = args.log or args.data_dir / "audit" / "predictions.jsonl"
        if not path.exists():
            print(f"note: {path} does not exist yet: no prediction has been audited there")
        result = verify_file(path)
        if not head_path_for(path).exists():
            print(f"note: no head file {head_path_for(path).name}: a truncated tail (records cut off the end) cannot be detected")
    status = "OK" if result.ok else "TAMPERED"
    print(f"audit trail {status}: {result.records:,} records checked")
    if result.unacknowledged:
        print(f"note: {result.unacknowledged} valid record(s) after the stored head (a crash between append and head update)")
    for problem in result.problems:
        print(f"  - {problem}")
    return 0 if result.ok else 1
