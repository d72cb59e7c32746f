"""``churnops privacy erase``: a customer's right to erasure (GDPR Art. 17), end to end, with a receipt.

``churnops monitor erase`` is the same command under its former name (kept
so existing runbooks and scripts keep working). The stores are opened here
for the embedded or the cluster mode and handed to
``churnops.monitoring.erasure``, which decides the order and the receipt.
"""

from __future__ import annotations

import argparse
import getpass
import json
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from churnops.cli.audit import add_key_args

if TYPE_CHECKING:
    from churnops.monitoring.erasure import ErasureTargets


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("privacy", help="privacy requests: erase a customer everywhere, with a receipt in the audit trail")
    actions = group.add_subparsers(dest="action", required=True)
    add_erase_args(actions.add_parser("erase", help=ERASE_HELP))


ERASE_HELP = "erase a customer: online and offline features, raw data, prediction log, labels, batch scores, reports; shred their audit key"


def add_erase_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--customer", type=int, required=True, help="customer id")
    p.add_argument(
        "--mode", choices=["embedded", "cluster"], default="embedded", help="feature stores: SQLite + Parquet, or Redis + PostgreSQL"
    )
    p.add_argument("--labels-dir", type=Path, default=None, help="labels kept outside the data directory, erased from as well")
    p.add_argument("--audit-dir", type=Path, default=None, help="where the receipts' chain erasures.jsonl goes (default <data-dir>/audit)")
    p.add_argument(
        "--privacy-store", type=Path, default=None, help="subject keys and erased customers (default <data-dir>/privacy/privacy.db)"
    )
    p.add_argument("--privacy-dsn", default=None, help="PostgreSQL privacy store instead (cluster)")
    p.add_argument(
        "--settle-s",
        type=float,
        default=None,
        help="wait before the second pass, for writes the running servers began before they saw the erasure (default 5; 0: one pass)",
    )
    g = p.add_argument_group("prediction log")
    g.add_argument("--prediction-log", type=Path, default=None, help="Parquet segments directory (default <data-dir>/predictions)")
    g.add_argument("--prediction-log-dsn", default=None, help="PostgreSQL prediction log instead (cluster)")
    add_key_args(p, signing=True)
    p.set_defaults(func=run_erase)


def online_eraser(mode: str, data_dir: Path, env: Mapping[str, str]) -> Callable[[int], int] | None:
    """Deletes a customer's online features; None when the embedded store was never published."""
    from churnops_feast import erase
    from churnops_feast import store as feast_store

    if mode == "embedded":
        if not (data_dir / "feast" / "online_store.db").exists():
            return None
        fs = feast_store.open_store("embedded", env, data_dir)
        return lambda cid: erase.erase_online_sqlite(fs, cid)
    from churnops.serving.server import redis_client

    fs = feast_store.open_store("cluster", env, data_dir)
    client = redis_client(env, timeout_s=10.0)
    return lambda cid: erase.erase_online_redis(fs, client, cid)


@contextmanager
def targets(args: argparse.Namespace, env: Mapping[str, str]) -> Iterator[ErasureTargets]:
    from churnops.monitoring.erasure import ErasureTargets
    from churnops.monitoring.windows import open_store as open_log
    from churnops.privacy.store import open_store
    from churnops_feast import erase
    from churnops_feast import store as feast_store

    with ExitStack() as stack:
        privacy = open_store(args.data_dir, args.privacy_dsn, args.privacy_store)
        stack.callback(privacy.close)
        log = open_log(args.prediction_log, args.prediction_log_dsn, args.data_dir)
        stack.callback(log.close)
        offline = None
        if args.mode == "cluster":
            dsn = feast_store.pg_dsn(env)
            offline = lambda cid: erase.erase_offline_postgres(dsn, cid)  # noqa: E731 - bound to the DSN here
        yield ErasureTargets(privacy, log, online_eraser(args.mode, args.data_dir, env), offline)


def run_erase(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.monitoring.erasure import RECEIPTS_FILE, SETTLE_S, ErasureSettings, erase_customer
    from churnops.privacy.journal import default_journal
    from churnops.privacy.keys import customer_id_of
    from churnops.serving.audit_keys import default_key_dir
    from churnops.serving.audit_setup import AuditSettings, open_sink

    customer = customer_id_of(args.customer)
    audit_dir = args.audit_dir or args.data_dir / "audit"
    settle_s = SETTLE_S if args.settle_s is None else args.settle_s
    # The journal outlives the data directory: a restore of an older snapshot applies its erasures again.
    journal = default_journal(env, default_key_dir(env))
    settings = ErasureSettings(args.data_dir, audit_dir, args.labels_dir, settle_s, journal=journal)
    receipts = AuditSettings(audit_dir / RECEIPTS_FILE, signing_key=args.audit_signing_key, public_keys=args.audit_public_keys)
    sink = open_sink(receipts, env, fsync="always", lock_wait_s=30)  # opened first: a trail that cannot take the receipt stops the run
    try:
        with targets(args, env) as where:
            record = erase_customer(customer, settings, where, sink, getpass.getuser())
    finally:
        sink.close()
    print(json.dumps(record, indent=2))
    print(f"receipt {record['receipt_id']} appended to {receipts.log} (churnops audit verify --log {receipts.log})")
    return 0
