"""``restore``: check a snapshot whole, then lay it out as a data directory at any path, and its keys in a key directory."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from churnops.backup.manifest import (
    DATA,
    DEFAULT_DIR_MODE,
    KEYS,
    MANIFEST,
    PERMISSION_BITS,
    RESTORE_LEFTOVERS,
    Manifest,
    dangling,
    key_name_ok,
    parse,
    private_key_name,
    problems,
)
from churnops.backup.snapshot import Progress, pid_alive, sha256_of, sqlite_uri, walk
from churnops.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from churnops.monitoring.erasure import NOT_SCRUBBED
from churnops.privacy.files import scrub_tree
from churnops.privacy.journal import LOCK_NAME as ERASURE_LOCK
from churnops.privacy.keys import erased_among
from churnops.privacy.store import DEFAULT_FILE, SqlitePrivacyStore
from churnops.serving.audit_keys import kid_of
from churnops.training.registry import STORE_ROOT_FILE, relocate

# MLflow 3's columns that hold artifact locations (read from the schema of a real store)
LOCATION_COLUMNS = (
    ("experiments", "artifact_location"),
    ("runs", "artifact_uri"),
    ("model_versions", "source"),
    ("model_versions", "storage_location"),
    ("logged_models", "artifact_location"),
)


def read_manifest(snapshot: Path) -> Manifest:
    path = snapshot / MANIFEST
    if not snapshot.is_dir():
        raise NotFoundError(f"{snapshot} is not a directory", field="--from")
    if not path.exists():
        raise IntegrityError(f"{path} is missing: the snapshot did not finish (the manifest is written last)")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise IntegrityError(f"{path}: not UTF-8 text") from None
    return parse(text, str(path))


def check(snapshot: Path, progress: Progress = lambda n: None) -> Manifest:
    """The manifest, once every file of the snapshot matches its size and sha256; else an ``IntegrityError`` naming them."""
    manifest = read_manifest(snapshot)
    sizes = {e.path: e.size for e in manifest.entries}
    found: dict[str, tuple[int, str | None]] = {}
    for rel in walk(snapshot):
        key = str(rel)
        if key == MANIFEST:
            continue
        size = (snapshot / rel).stat().st_size
        found[key] = (size, sha256_of(snapshot / rel) if sizes.get(key) == size else None)
        progress(size)
    bad = problems(manifest, found)
    if bad:
        listed = "\n  ".join(bad[:20]) + (f"\n  … and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise IntegrityError(f"snapshot {snapshot} does not match its manifest; nothing was restored:\n  {listed}")
    return manifest


def is_empty(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


@dataclass
class Erasures:
    """What a restore re-applied from the erasure journal to the restored privacy store."""

    journaled: int = 0
    suppressed: int = 0  # tokens the restored store lacked
    shredded: int = 0  # subject keys deleted again (customers found by their token)
    files: int = 0  # files scrubbed again
    prediction_rows: int = 0
    no_store: bool = False  # the snapshot holds no privacy store: nothing could be re-applied


@dataclass
class Restored:
    data_dir: Path
    moved_aside: Path | None = None
    rewritten: int = 0
    dangling: list[str] = field(default_factory=list)
    keys_added: list[str] = field(default_factory=list)
    keys_present: list[str] = field(default_factory=list)
    erasures: Erasures = field(default_factory=Erasures)
    seconds: float = 0.0


def restore(
    snapshot: Path,
    data_dir: Path,
    key_dir: Path | None,
    force: bool = False,
    progress: Progress = lambda n: None,
    journal: frozenset[str] = frozenset(),
) -> tuple[Manifest, Restored]:
    """Check ``snapshot`` whole, then restore it at ``data_dir`` (and its keys into ``key_dir``).

    ``data_dir`` may be a symlink (its target is restored) or a mount point: an existing directory is never
    renamed or removed, its entries are moved aside inside it (``.before-restore-<time>/``) and the staged
    ones renamed in, so everything stays on the target's file system. ``journal``: the erasure tokens of the
    erasure journal, re-applied to the restored privacy store before it is put in place.
    """
    started = time.monotonic()
    target = data_dir.resolve()
    if target.exists() and not target.is_dir():
        raise InvalidInputError(f"{target} is not a directory", field="--data-dir")
    if not is_empty(target) and not force:
        raise InvalidInputError(
            f"{target} is not empty; pass --force to move its content aside and restore in its place", field="--data-dir"
        )
    if target.exists():
        with writer_locks(target):  # fail fast, before hashing a large snapshot
            pass
    manifest = check(snapshot, progress)
    keys = plan_keys(snapshot, manifest, key_dir) if key_dir is not None else []
    existing = target.exists()
    parent = target if existing else target.parent
    parent.mkdir(parents=True, exist_ok=True)
    for stale in [p for p in parent.glob(".*restoring-*") if p.name.rsplit("-", 1)[-1].isdigit()]:
        if not pid_alive(int(stale.name.rsplit("-", 1)[-1])):
            shutil.rmtree(stale, ignore_errors=True)
    staging = target / f".restoring-{os.getpid()}" if existing else target.with_name(f".{target.name}.restoring-{os.getpid()}")
    staging.mkdir(mode=0o700)
    out = Restored(target)
    try:
        lay_out(snapshot, manifest, staging)
        out.rewritten, out.dangling = relocate_registry(staging, Path(manifest.source), target)
        out.erasures = reapply_erasures(staging, journal)
        out.moved_aside = _swap(staging, target, manifest.dirs.get(".", DEFAULT_DIR_MODE))
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if key_dir is not None:
        out.keys_added, out.keys_present = write_keys(keys, key_dir)
    out.seconds = round(time.monotonic() - started, 3)
    return manifest, out


def lay_out(snapshot: Path, manifest: Manifest, staging: Path) -> None:
    """The snapshot's data files under ``staging``, folders with their recorded modes (0700 when none is)."""
    for entry in manifest.entries:
        path = PurePosixPath(entry.path)
        if path.parts[0] != DATA:
            continue
        dst = staging.joinpath(*path.parts[1:])
        dst.parent.mkdir(parents=True, exist_ok=True, mode=DEFAULT_DIR_MODE)
        shutil.copyfile(snapshot / path, dst)
        Path(dst).chmod(entry.mode & PERMISSION_BITS)
    # folders last, deepest first: a read-only one must not stop the files going into it
    for rel, mode in sorted(manifest.dirs.items(), reverse=True):
        folder = staging.joinpath(*PurePosixPath(rel).parts)
        if rel != "." and folder.is_dir():
            folder.chmod(mode & PERMISSION_BITS)


def writer_lock_files(target: Path) -> list[Path]:
    """The files a live writer of ``target`` holds an ``flock`` on: audit logs (the log itself, wherever a
    ``.head`` marks one), each deployment's step and runner locks, the prediction log's and the erasure's."""
    out = [p for p in (target / "audit").glob("*.jsonl") if p.is_file()]
    for base, dirs, files in os.walk(target):
        dirs[:] = [d for d in dirs if not (Path(base) == target and d.startswith(RESTORE_LEFTOVERS))]
        out += [Path(base) / f.removesuffix(".head") for f in files if f.endswith(".jsonl.head") and f.removesuffix(".head") in files]
    for name in (".lock", "runner.lock"):
        out += sorted((target / "rollout").glob(f"*/{name}"))
    out += [p for p in (target / "predictions" / ".maintenance.lock", target / ERASURE_LOCK) if p.exists()]
    return sorted(set(out))


@contextlib.contextmanager
def writer_locks(target: Path) -> Iterator[None]:
    """Every writer lock of ``target``, taken without waiting and held until the block ends; a held one is refused."""
    held: list[str] = []
    with contextlib.ExitStack() as stack:
        for path in writer_lock_files(target):
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            stack.callback(os.close, fd)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                held.append(str(path.relative_to(target)))
        if held:
            raise ConflictError(
                f"{target} is in use: stop the server first (locked by a running process: {', '.join(held)})", field="--data-dir"
            )
        yield


def _swap(staging: Path, target: Path, mode: int) -> Path | None:
    """Put what ``staging`` holds at ``target``; what ``target`` held is moved aside (never deleted).

    A missing target is the staging folder renamed. An existing one (perhaps a mount point, which cannot be
    renamed) keeps its inode: its entries move into ``target/.before-restore-<time>/`` and the staged entries
    are renamed in, all on the target's own file system, under the writer locks (a live server is refused).
    """
    if not target.exists():
        staging.rename(target)
        Path(target).chmod(mode & PERMISSION_BITS)
        return None
    aside = None
    with writer_locks(target):
        old = [p for p in target.iterdir() if p != staging]
        if old:
            aside = target / f".before-restore-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}"
            aside.mkdir(mode=0o700)
            for path in old:
                path.rename(aside / path.name)
        for path in list(staging.iterdir()):
            path.rename(target / path.name)
        staging.rmdir()
    Path(target).chmod(mode & PERMISSION_BITS)
    return aside


def reapply_erasures(data: Path, tokens: frozenset[str]) -> Erasures:
    """Suppress every journaled token in the restored privacy store, and erase again each customer found by it.

    A customer is found through the subject keys (the only ids the store holds): each one whose erasure token
    is journaled loses the key, the prediction log's rows and the rows of the data directory's files again.
    A journaled customer without a key is suppressed (servers refuse them, writers drop them), and their
    files are left as the snapshot holds them (see the README).
    """
    out = Erasures(journaled=len(tokens))
    db = data / "privacy" / DEFAULT_FILE
    if not tokens:
        return out
    if not db.exists():
        out.no_store = True
        return out
    store = SqlitePrivacyStore(db)
    try:
        out.suppressed = sum(store.suppress(t) for t in sorted(tokens - store.tokens()))
        conn = sqlite3.connect(sqlite_uri(db, "ro"), uri=True)
        try:
            ids = [int(r[0]) for r in conn.execute("SELECT customer_id FROM subject_keys")]
        finally:
            conn.close()
        for cid in sorted(erased_among(ids, tokens, store.store_key())):
            out.shredded += int(store.shred(cid))
            out.files += len(scrub_tree(data, cid, NOT_SCRUBBED))
            if (data / "predictions").is_dir():
                from churnops.monitoring.predlog.parquet import ParquetStore  # noqa: PLC0415 - pyarrow only when needed

                out.prediction_rows += ParquetStore(data / "predictions").erase_customer(cid)
    finally:
        store.close()
    return out


def relocate_registry(staging: Path, source: Path, target: Path) -> tuple[int, list[str]]:
    """Point MLflow's recorded ``file://`` locations at ``target``; returns (values rewritten, locations still elsewhere).

    The rewrite itself is the registry's own (``churnops.training.registry.relocate``), driven by the marker that
    records the artifact root last seen; a snapshot without the marker gets one naming where it was taken.
    """
    db = staging / "mlflow" / "mlflow.db"
    if not db.exists():
        return 0, []
    marker = staging / "mlflow" / STORE_ROOT_FILE
    if not marker.exists():
        marker.write_text(json.dumps({"artifacts": (source / "mlflow" / "artifacts").as_uri()}) + "\n")
    new_root = (target.resolve() / "mlflow" / "artifacts").as_uri()
    rewritten = relocate(db, marker, new_root)
    return rewritten, dangling(recorded_locations(db), new_root)


def recorded_locations(db: Path) -> list[str]:
    """Every artifact location the store records, in the columns that exist in this MLflow schema."""
    out: list[str] = []
    conn = sqlite3.connect(sqlite_uri(db, "ro"), uri=True)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table, column in LOCATION_COLUMNS:
            if table in tables and column in {r[1] for r in conn.execute(f'PRAGMA table_info("{table}")')}:
                out += [str(r[0]) for r in conn.execute(f'SELECT "{column}" FROM "{table}" WHERE "{column}" IS NOT NULL')]
    finally:
        conn.close()
    return out


def plan_keys(snapshot: Path, manifest: Manifest, key_dir: Path) -> list[tuple[str, bytes, bool]]:
    """The keys to add as (name in ``key_dir``, content, private), checked before anything is written.

    Only ``*.pub`` and ``*.key`` files holding a PEM key are taken. An existing key is kept; a private key
    whose name is taken by another key (``signing.key`` of a newer key pair) is planned as ``<kid>.key``
    beside it: the restored trail verifies with the public keys, and writers keep signing with the key they
    have (a rotation, as ``churnops audit keygen`` documents). A different public key under the same name
    is refused.
    """
    out: list[tuple[str, bytes, bool]] = []
    for entry in [e for e in manifest.entries if PurePosixPath(e.path).parts[0] == KEYS]:
        name = PurePosixPath(entry.path).name
        data = (snapshot / entry.path).read_bytes()
        private = private_key_name(name)
        if not key_name_ok(name):
            raise IntegrityError(f"{entry.path}: not a *.key or *.pub file")
        if private:
            kid = kid_of_private(data, name)
        else:
            try:
                serialization.load_pem_public_key(data)
            except (ValueError, TypeError):
                raise IntegrityError(f"{entry.path}: not a PEM public key") from None
        dst = key_dir / name
        if dst.exists() and dst.read_bytes() != data and private:
            name = f"{kid}.key"
            dst = key_dir / name
        if dst.exists() and dst.read_bytes() != data:
            raise ConflictError(f"{dst} exists with a different key; it was left as it is, and nothing was restored", field="--key-dir")
        out.append((name, data, private))
    return out


def write_keys(planned: list[tuple[str, bytes, bool]], key_dir: Path) -> tuple[list[str], list[str]]:
    """Write the planned keys that are not there yet; returns (added, already present)."""
    added: list[str] = []
    present: list[str] = []
    if not planned:
        return added, present
    key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    for name, data, private in planned:
        if (key_dir / name).exists():
            present.append(name)
        else:
            _write_new(key_dir / name, data, 0o600 if private else 0o644)
            added.append(name)
    return added, present


def restore_keys(snapshot: Path, manifest: Manifest, key_dir: Path) -> tuple[list[str], list[str]]:
    """Add the snapshot's keys to ``key_dir`` (``plan_keys`` then ``write_keys``)."""
    return write_keys(plan_keys(snapshot, manifest, key_dir), key_dir)


def kid_of_private(data: bytes, name: str) -> str:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):
        raise IntegrityError(f"{KEYS}/{name}: not an unencrypted PEM private key") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IntegrityError(f"{KEYS}/{name}: not an Ed25519 private key")
    return kid_of(key.public_key())


def _write_new(path: Path, data: bytes, mode: int) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
