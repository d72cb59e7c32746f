"""``churnops audit``: verify the prediction audit trail (chain, signatures, head, anchor) and make its signing keys."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from churnops.serving.audit import Verification

# the names churnops.serving.audit_keys reads (spelled out here: importing it loads the cryptography library)
SIGNING_FLAG, SIGNING_KEY_ENV = "--audit-signing-key", "CHURNOPS_AUDIT_SIGNING_KEY"
PUBLIC_FLAG, PUBLIC_KEYS_ENV = "--audit-public-keys", "CHURNOPS_AUDIT_PUBLIC_KEYS"


def add_key_args(p: argparse.ArgumentParser, signing: bool) -> None:
    """The audit trail's key options, shared by every command that writes or reads it."""
    if signing:
        p.add_argument(
            SIGNING_FLAG,
            dest="audit_signing_key",
            type=Path,
            default=None,
            help=f"Ed25519 private key (PEM) that signs the audit trail (default ${SIGNING_KEY_ENV}, "
            "else one created once under ~/.config/churnops/audit-keys); never inside the log's directory",
        )
    p.add_argument(
        PUBLIC_FLAG,
        dest="audit_public_keys",
        type=Path,
        default=None,
        help=f"directory of <kid>.pub files, or one PEM file, to verify with (default ${PUBLIC_KEYS_ENV}, "
        "else ~/.config/churnops/audit-keys); keep rotated-out keys in it",
    )


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("audit", help="the prediction audit trail").add_subparsers(dest="action", required=True)
    verify = group.add_parser(
        "verify", help="check the hash chain, each batch's signature and the signed head (edits, deletions, forged appends, truncation)"
    )
    verify.add_argument("--log", type=Path, default=None, help="audit log file (default <data-dir>/audit/predictions.jsonl)")
    verify.add_argument("--dsn", default=None, help="PostgreSQL audit trail instead of a file")
    add_key_args(verify, signing=False)
    verify.add_argument(
        "--allow-missing-head",
        action="store_true",
        help="accept a log without its head (only for logs written before heads existed: a cut-off end goes unnoticed)",
    )
    verify.add_argument(
        "--anchor-dsn", default=None, help="PostgreSQL with checkpoints of this log: the log must reach the newest one (no rollback)"
    )
    verify.add_argument("--anchor-name", default=None, help="the log's name in the checkpoint table (default its resolved path)")
    verify.set_defaults(func=run_verify)

    adopt = group.add_parser(
        "adopt",
        help="bring a trail written before signing under signature: verify its chain and head, then append a signed record",
    )
    adopt.add_argument("--log", type=Path, default=None, help="audit log file (default <data-dir>/audit/predictions.jsonl)")
    adopt.add_argument("--dsn", default=None, help="PostgreSQL audit trail instead of a file")
    add_key_args(adopt, signing=True)
    adopt.add_argument("--allow-missing-head", action="store_true", help="the log predates head files")
    adopt.set_defaults(func=run_adopt)

    keygen = group.add_parser("keygen", help="create an Ed25519 key pair for signing the audit trail")
    keygen.add_argument("--out", type=Path, required=True, help="directory for <kid>.key (private, 0600) and <kid>.pub")
    keygen.set_defaults(func=run_keygen)


def describe(result: Verification) -> list[str]:
    """What was checked, one line each."""
    kids = ", ".join(sorted(result.kids)) or "none"
    lines = [
        f"  records: {result.records:,}; signed batches: {result.signatures:,} (kid {kids}); signed through seq {result.signed_through}"
    ]
    if result.head is None:
        lines.append("  head: none")
    else:
        lines.append(f"  head: seq {result.head.seq}, signed by kid {result.head.kid}")
    return lines


def run_verify(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Exit 0 when the trail verifies, 1 when it does not (a finding, not an error)."""
    from churnops.serving.audit import head_path_for, verify_file, verify_postgres
    from churnops.serving.audit_anchor import newest_checkpoint
    from churnops.serving.audit_keys import public_keys_for

    keys = public_keys_for(args.audit_public_keys, env)
    path = args.log or args.data_dir / "audit" / "predictions.jsonl"
    name = args.anchor_name or ("postgres" if args.dsn else str(path.resolve()))
    anchored = newest_checkpoint(args.anchor_dsn, name) if args.anchor_dsn else None
    checkpoint = anchored.head if anchored is not None else None
    if args.dsn:
        print(f"checked the PostgreSQL audit trail with the public keys of {keys.source}")
        result = verify_postgres(args.dsn, keys, allow_missing_head=args.allow_missing_head, checkpoint=checkpoint)
    else:
        print(f"checked {path} with the public keys of {keys.source}")
        if not path.exists():
            print(f"note: {path} does not exist yet: no prediction has been audited there")
        result = verify_file(path, keys, allow_missing_head=args.allow_missing_head, checkpoint=checkpoint)
        if not head_path_for(path).exists() and args.allow_missing_head:
            print(f"note: no head file {head_path_for(path).name}: a truncated tail (records cut off the end) cannot be detected")
    for line in describe(result):
        print(line)
    if not args.anchor_dsn:
        print("  anchor: not checked (--anchor-dsn): a rollback to an earlier signed state would go unnoticed")
    elif anchored is None:
        print(f"  anchor: no checkpoint of {name!r} yet")
    else:
        print(f"  anchor: newest checkpoint of {name!r} at seq {anchored.head.seq} ({anchored.at.isoformat(timespec='seconds')})")
    status = "OK" if result.ok else "TAMPERED"
    print(f"audit trail {status}: {result.records:,} records checked")
    if result.unacknowledged:
        print(f"note: {result.unacknowledged} signed record(s) after the stored head (a crash between append and head update)")
    for problem in result.problems:
        print(f"  - {problem}")
    return 0 if result.ok else 1


def run_adopt(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Sign for a trail from before signing, once its chain and head verify; exit 1 (nothing written) when they do not.

    The signed adoption record vouches for what the trail held when it was adopted, no more: anything altered
    before then (without breaking the chain) stays undetected, as it was before signing.
    """
    import getpass
    import time

    from churnops.serving.audit import AuditSink, FileAuditSink, PostgresAuditSink, verify_file, verify_postgres
    from churnops.serving.audit_keys import public_keys_for, signer_for

    keys = public_keys_for(args.audit_public_keys, env)
    path = args.log or args.data_dir / "audit" / "predictions.jsonl"
    signer = signer_for(args.audit_signing_key, env, path.parent, embedded=args.dsn is None)
    sink: AuditSink
    if args.dsn:
        sink = PostgresAuditSink(args.dsn, signer, keys, adopt_unsigned=True)
    else:
        sink = FileAuditSink(path, signer, fsync="always", lock_wait_s=30, trusted=keys, adopt_unsigned=True)
    try:  # verified while the sink holds the trail: nobody appends in between
        options = {"allow_missing_head": args.allow_missing_head, "unsigned_ok": True}
        result = verify_postgres(args.dsn, keys, **options) if args.dsn else verify_file(path, keys, **options)
        if not result.ok:
            print(f"not adopted: the trail does not verify ({result.records:,} records checked)")
            for problem in result.problems:
                print(f"  - {problem}")
            return 1
        head = sink.append([{"kind": "adopted", "time": time.time(), "caller": getpass.getuser(), "records": result.records}])
    finally:
        sink.close()
    print(f"adopted: {result.records:,} records verified; seq {head.seq} signed by kid {head.kid}")
    return 0


def run_keygen(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.errors import ConfigError
    from churnops.serving.audit_keys import generate

    try:
        kid, private, public = generate(args.out)
    except FileExistsError as e:
        raise ConfigError(str(e), field="--out") from None
    print(f"kid {kid}")
    print(f"private key: {private} (mode 0600): mount it as a Secret and pass {SIGNING_FLAG} or ${SIGNING_KEY_ENV} to writers")
    print(f"public key:  {public}: copy it into the {PUBLIC_FLAG} directory of every verifier; keep the old ones there")
    return 0
