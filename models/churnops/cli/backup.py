"""``churnops backup`` and ``churnops restore``: consistent snapshots of a running data directory (see ``churnops.backup``)."""

from __future__ import annotations

import argparse
import contextlib
import shlex
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Never

from tqdm import tqdm


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    backup = sub.add_parser(
        "backup",
        help="a consistent snapshot of the data directory while it runs (SQLite online backup, audit trail cut at a signed head)",
        description="Writes SNAP (mode 0700) with a manifest.json of every file's size and sha256; never overwrites one.",
    )
    backup.add_argument("--out", type=Path, required=True, help="snapshot directory to create (must not exist)")
    backup.add_argument(
        "--key-dir",
        type=Path,
        default=None,
        help="audit key directory to include (default $CHURNOPS_AUDIT_KEY_DIR or ~/.config/churnops/audit-keys)",
    )
    backup.add_argument("--no-keys", action="store_true", help="leave the audit keys out (keep them in a secret store of their own)")
    backup.add_argument(
        "--link",
        action="store_true",
        help="hard-link the files that are never modified (Parquet segments, MLflow artifacts) instead of copying",
    )
    backup.add_argument(
        "--follow-symlinks",
        action="store_true",
        help="copy what symlinks leading out of the data directory point at (else such a symlink is refused, named)",
    )
    backup.add_argument(
        "--allow-unverifiable",
        action="store_true",
        help="finish even when the included keys lack a public key the audit trail names (it will not verify on its own)",
    )
    backup.add_argument("--quiet", action="store_true", help="no progress bar")
    backup.set_defaults(func=run_backup)

    restore = sub.add_parser(
        "restore",
        help="check a snapshot's every sha256, then restore it as --data-dir (any path) and its keys into the key directory",
        description="Refuses a snapshot that does not match its manifest, naming the file, before writing anything.",
    )
    restore.add_argument("--from", dest="snapshot", type=Path, required=True, help="snapshot directory written by `churnops backup`")
    restore.add_argument("--force", action="store_true", help="restore over a non-empty --data-dir (it is renamed aside, not deleted)")
    restore.add_argument(
        "--key-dir",
        type=Path,
        default=None,
        help="where the audit keys go (default $CHURNOPS_AUDIT_KEY_DIR or ~/.config/churnops/audit-keys)",
    )
    restore.add_argument("--no-keys", action="store_true", help="do not restore the audit keys")
    restore.add_argument(
        "--erasure-journal",
        type=Path,
        default=None,
        help="erasures to re-apply (default $CHURNOPS_ERASURE_JOURNAL or erasure-journal.jsonl beside the key directory)",
    )
    restore.add_argument("--quiet", action="store_true", help="no progress bar")
    restore.set_defaults(func=run_restore)


def key_dir_of(args: argparse.Namespace, env: Mapping[str, str]) -> Path | None:
    from churnops.serving.audit_keys import default_key_dir

    return None if args.no_keys else (args.key_dir or default_key_dir(env))


@contextlib.contextmanager
def disk_errors(what: str) -> Iterator[None]:
    """An OSError (a full disk, a permission) as a clean error naming the file, not a traceback."""
    from churnops.errors import UnavailableError

    try:
        yield
    except OSError as e:
        where = f" ({e.filename})" if e.filename else ""
        raise UnavailableError(f"{what} failed: {e.strerror or e}{where}; nothing partial was left behind") from None


def bar(desc: str, quiet: bool) -> tqdm[Never]:
    return tqdm(desc=desc, unit="B", unit_scale=True, unit_divisor=1024, disable=quiet, leave=False)


def served(aliases: Mapping[str, Mapping[str, str]], deployments: Mapping[str, Mapping[str, object]]) -> list[str]:
    lines = [f"  {name}: " + ", ".join(f"{a} v{v}" for a, v in sorted(held.items())) for name, held in sorted(aliases.items())]
    for name, dep in sorted(deployments.items()):
        lines.append(
            f"  deployment {name}: {dep.get('rolloutPhase')}, stable v{dep.get('stableVersion')}, "
            f"canary {dep.get('canaryVersion') or '-'} at {dep.get('canaryWeight') or 0}%"
        )
    return lines


def run_backup(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.backup.snapshot import take

    key_dir = key_dir_of(args, env)
    with disk_errors("backup"), bar("backup", args.quiet) as progress:
        manifest = take(
            args.data_dir,
            args.out,
            key_dir,
            link=args.link,
            progress=progress.update,
            follow_symlinks=args.follow_symlinks,
            allow_unverifiable=args.allow_unverifiable,
        )
    print(f"snapshot {args.out}: {len(manifest.entries):,} files, {manifest.total_bytes / 2**20:,.1f} MiB in {manifest.seconds:.1f} s")
    print(f"  from {manifest.source} at {manifest.created}")
    for cut in manifest.audit:
        print(f"  audit {cut.log}: {cut.records:,} records (head at seq {cut.head_seq})")
    print("\n".join(served(manifest.aliases, manifest.deployments)))
    if manifest.key_dir is None:
        print(f"note: no audit keys included ({'--no-keys' if args.no_keys else f'{key_dir} does not exist'})")
    else:
        print(f"  audit keys from {manifest.key_dir} (private keys 0600; the snapshot is 0700: store it as a secret)")
    for note in manifest.notes:
        print(f"  note: {note}")
    return 0


def run_restore(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.backup.restore import restore
    from churnops.privacy import journal
    from churnops.serving.audit_keys import default_key_dir

    key_dir = key_dir_of(args, env)
    journal_path = args.erasure_journal or journal.default_journal(env, key_dir or default_key_dir(env))
    erased = journal.tokens(journal_path)
    with disk_errors("restore"), bar("verify + restore", args.quiet) as progress:
        manifest, done = restore(args.snapshot, args.data_dir, key_dir, force=args.force, progress=progress.update, journal=erased)
    print(f"restored {args.snapshot} (taken {manifest.created} from {manifest.source}) into {done.data_dir} in {done.seconds:.1f} s")
    print(f"  every file matched its sha256 ({len(manifest.entries):,} files, {manifest.total_bytes / 2**20:,.1f} MiB)")
    if done.moved_aside is not None:
        print(f"  the previous content of {done.data_dir} is now {done.moved_aside}")
    print(f"  MLflow artifact locations rewritten: {done.rewritten}")
    for location in done.dangling:
        print(f"  note: the registry still records {location} (outside the data directory: not in the snapshot)")
    print("\n".join(served(manifest.aliases, manifest.deployments)))
    if key_dir is not None:
        print(
            f"  audit keys in {key_dir}: added {', '.join(done.keys_added) or 'none'}; already there {', '.join(done.keys_present) or 'none'}"
        )
    e = done.erasures
    if e.journaled:
        print(
            f"  erasure journal {journal_path}: {e.journaled} erased customers; re-applied: {e.suppressed} suppressed again, "
            f"{e.shredded} subject keys shredded again, {e.files} files and {e.prediction_rows} prediction-log rows scrubbed again"
        )
        if e.no_store:
            print("  warning: the snapshot holds no privacy store; run `churnops privacy erase --customer ID` for each erased customer")
    else:
        print(f"  erasure journal {journal_path}: none (no erasure to re-apply)")
    where = shlex.quote(str(done.data_dir))
    print(f"next: churnops --data-dir {where} audit verify; churnops --data-dir {where} serve")
    return 0
