"""``take``: a consistent snapshot of a live data directory (see the package docstring for the rules)."""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import socket
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import BinaryIO
from urllib.parse import quote

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from churnops.backup.manifest import (
    DATA,
    KEYS,
    MANIFEST,
    RESTORE_LEFTOVERS,
    AuditCut,
    Entry,
    Manifest,
    key_name_ok,
    kind_of,
    private_key_name,
)
from churnops.errors import ConflictError, IntegrityError, InvalidInputError, NotFoundError
from churnops.privacy.journal import LOCK_NAME as ERASURE_LOCK
from churnops.serving.audit import head_path_for, parse_line, read_head
from churnops.serving.audit_keys import kid_of, public_pem

CHUNK = 1 << 20
LOCK_WAIT_S = 60.0  # a runner step or an erasure holds its lock for seconds at most
SQLITE_STEP_BYTES = 4 << 20  # a rollback-journal database is read this much per lock, so its writers wait milliseconds
SQLITE_STEP_PAUSE_S = 0.01  # between steps: a writer waiting on its busy timeout gets the lock
SQLITE_RESTARTS = 3  # a write restarts SQLite's backup; after this many, the rest is one step so it ends
Progress = Callable[[int], object]  # bytes done since the last call (a return value is ignored)


def sqlite_uri(path: Path, mode: str) -> str:
    return f"file:{quote(str(path.absolute()))}?mode={mode}"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def header_of(path: Path) -> bytes:
    try:
        with path.open("rb") as f:
            return f.read(16)
    except OSError:
        return b""


def walk(root: Path, follow_outside: bool = False, leftovers: tuple[str, ...] = ()) -> list[PurePosixPath]:
    """Regular files under ``root``, sorted, following symlinks that resolve inside it.

    A symlink that leaves ``root`` (followed only with ``follow_outside``), a dangling one or one that loops is
    refused, naming every one: a snapshot never leaves something out without saying so. Top-level names starting
    with ``leftovers`` are not walked (what a restore moved aside).
    """
    real_root = root.resolve()
    found: list[PurePosixPath] = []
    refused: list[str] = []

    def visit(directory: Path, rel: PurePosixPath, seen: frozenset[Path]) -> None:
        for entry in sorted(os.scandir(directory), key=lambda e: e.name):
            here, path = rel / entry.name, Path(entry.path)
            if not rel.parts and leftovers and entry.name.startswith(leftovers):
                continue
            if entry.is_symlink():
                target = path.resolve()
                if not target.exists():
                    refused.append(f"{here} -> {path.readlink()} (dangling)")
                    continue
                if not follow_outside and not target.is_relative_to(real_root):
                    refused.append(f"{here} -> {target} (outside the data directory; --follow-symlinks copies it)")
                    continue
                if target.is_dir():
                    if target in seen:
                        refused.append(f"{here} -> {target} (a loop)")
                    else:
                        visit(path, here, seen | {target})
                elif target.is_file():
                    found.append(here)
            elif entry.is_dir(follow_symlinks=False):
                visit(path, here, seen | {path.resolve()})
            elif entry.is_file(follow_symlinks=False):
                found.append(here)

    visit(root, PurePosixPath(), frozenset({real_root}))
    if refused:
        raise InvalidInputError(f"{root}: symlinks not captured, nothing was written:\n  " + "\n  ".join(refused), field="--data-dir")
    return found


def dir_modes(root: Path, files: list[PurePosixPath]) -> dict[str, int]:
    """The mode of ``root`` (as ".") and of every folder holding a captured file."""
    out = {".": stat.S_IMODE(root.stat().st_mode) & 0o777}
    for rel in files:
        for parent in list(rel.parents)[:-1]:
            key = parent.as_posix()
            if key not in out:
                with contextlib.suppress(FileNotFoundError):
                    out[key] = stat.S_IMODE((root / parent).stat().st_mode) & 0o777
    return dict(sorted(out.items()))


def stale_partials(parent: Path, alive: Callable[[int], bool]) -> list[Path]:
    """``.<name>.partial-<pid>`` folders left by a backup whose process is gone (killed mid-copy)."""
    out = []
    for path in parent.glob(".*.partial-*") if parent.is_dir() else []:
        pid = path.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not alive(int(pid)):
            out.append(path)
    return out


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def flocked(path: Path) -> Iterator[None]:
    """The exclusive ``flock`` a writer of ``path``'s directory takes, waited for at most ``LOCK_WAIT_S``."""
    wait_s = LOCK_WAIT_S
    with path.open("a") as f:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise ConflictError(f"{path} stayed locked for {wait_s:.0f} s; try again", field="--data-dir") from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def copy_prefix(src: Path, dst: Path, limit: int | None, progress: Progress) -> int:
    """Copy the first ``limit`` bytes of ``src`` (all when None); returns the bytes copied."""
    done = 0
    with src.open("rb") as fin, dst.open("wb") as fout:
        while limit is None or done < limit:
            chunk = fin.read(CHUNK if limit is None else min(CHUNK, limit - done))
            if not chunk:
                break
            fout.write(chunk)
            done += len(chunk)
            progress(len(chunk))
    return done


def last_line_end(path: Path, accept: Callable[[bytes], bool] = lambda line: True) -> int:
    """The offset just after the last complete line that ``accept`` takes (0 when none); scans from the end.

    Newlines are found chunk by chunk (a line longer than a chunk costs one pass, not one per chunk), and a
    line is read whole only to be offered to ``accept``.
    """
    with path.open("rb") as f:
        end = f.seek(0, os.SEEK_END)
        ends = _newlines_backwards(f, end)
        line_end = next(ends, None)
        while line_end is not None:
            start = next(ends, None)
            begin = 0 if start is None else start + 1
            f.seek(begin)
            if accept(f.read(line_end + 1 - begin)):
                return line_end + 1
            line_end = start
        return 0


def _newlines_backwards(f: BinaryIO, end: int) -> Iterator[int]:
    """Offsets of every newline before ``end``, last first, reading one chunk at a time."""
    pos = end
    while pos > 0:
        step = min(CHUNK, pos)
        pos -= step
        f.seek(pos)
        chunk = f.read(step)
        cut = len(chunk)
        while (cut := chunk.rfind(b"\n", 0, cut)) >= 0:
            yield pos + cut


def signed(line: bytes) -> bool:
    """A record that closes a batch: its signature vouches for every record up to it."""
    rec, _ = parse_line(line)
    return rec is not None and "sig" in rec


class Snapshot:
    """One snapshot being written: the files captured so far and the directory they go to."""

    def __init__(self, data_dir: Path, out: Path, link: bool, progress: Progress) -> None:
        self.data_dir = data_dir
        self.out = out
        self.link = link
        self.progress = progress
        self.entries: dict[str, Entry] = {}
        self.audit: list[AuditCut] = []
        self.kids: dict[str, str] = {}  # signing key id -> the first log that names it

    def target(self, rel: PurePosixPath, top: str = DATA) -> Path:
        path = self.out / top / rel
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return path

    def add(self, rel: PurePosixPath, kind: str, mode: int, top: str = DATA) -> None:
        path = self.out / top / rel
        Path(path).chmod(mode)
        self.entries[f"{top}/{rel}"] = Entry(f"{top}/{rel}", path.stat().st_size, sha256_of(path), kind, mode)

    def done(self, rel: PurePosixPath) -> bool:
        return f"{DATA}/{rel}" in self.entries

    def mode_of(self, rel: PurePosixPath) -> int:
        return stat.S_IMODE((self.data_dir / rel).stat().st_mode) & 0o777

    def capture(self, rel: PurePosixPath, kind: str) -> None:
        """One file of the data directory; one that disappeared meanwhile (replaced, compacted) is left out."""
        try:
            mode = self.mode_of(rel)
            if kind == "sqlite":
                self.sqlite(rel)
            elif kind == "audit":
                self.audit_log(rel)
            elif kind in ("jsonl", "rollout") and rel.name.endswith(".jsonl"):
                self.lines(rel)
            elif kind == "immutable" and self.link:
                dst = self.target(rel)
                try:
                    os.link(self.data_dir / rel, dst)
                except OSError:  # another file system: copy
                    shutil.copyfile(self.data_dir / rel, dst)
                self.progress(dst.stat().st_size)
            else:
                copy_prefix(self.data_dir / rel, self.target(rel), None, self.progress)
        except FileNotFoundError:
            return
        self.add(rel, kind, mode)

    def sqlite(self, rel: PurePosixPath) -> None:
        """SQLite's online backup: a copy of one committed state, read a few MiB per lock (see ``stepped_backup``)."""
        dst_path = self.target(rel)
        src = sqlite3.connect(sqlite_uri(self.data_dir / rel, "rw"), uri=True, timeout=LOCK_WAIT_S)  # rw: never creates a missing file
        dst = sqlite3.connect(dst_path)
        try:
            stepped_backup(src, dst)
            ok = dst.execute("PRAGMA integrity_check").fetchone()
            if ok is None or ok[0] != "ok":
                raise IntegrityError(f"{rel}: the backup copy fails SQLite's integrity check ({ok}); the source may be damaged")
        except sqlite3.Error as e:
            raise IntegrityError(f"{rel}: SQLite backup failed ({e})") from None
        finally:
            dst.close()
            src.close()
        self.progress(dst_path.stat().st_size)

    def lines(self, rel: PurePosixPath) -> None:
        """An append-only JSON lines file, cut after its last complete line."""
        dst = self.target(rel)
        copy_prefix(self.data_dir / rel, dst, None, self.progress)
        os.truncate(dst, last_line_end(dst))

    def audit_log(self, rel: PurePosixPath) -> None:
        """Head first, then the log cut at its last signed record: the log then reaches the head it is shipped with."""
        src = self.data_dir / rel
        head_rel = PurePosixPath(head_path_for(Path(rel)).as_posix())
        head_src = self.data_dir / head_rel
        head_bytes = head_src.read_bytes() if head_src.exists() else None
        dst = self.target(rel)
        copy_prefix(src, dst, None, self.progress)
        os.truncate(dst, last_line_end(dst, signed))
        head_seq = 0
        head = None
        if head_bytes is not None:
            head_dst = self.target(head_rel)
            head_dst.write_bytes(head_bytes)
            head = read_head(head_dst)
            head_seq = head.seq if head is not None else 0
            self.add(head_rel, "audit-head", self.mode_of(head_rel))
        last = last_record_seq(dst)
        if head_bytes is not None and head is not None and head.kid is not None:
            self.kids.setdefault(head.kid, str(rel))
        for kid in signing_kids(dst):
            self.kids.setdefault(kid, str(rel))
        if last < head_seq:
            raise IntegrityError(f"{rel}: the log ends at seq {last} but its head says {head_seq}; run `churnops audit verify`")
        self.audit.append(AuditCut(str(rel), last, head_seq))

    def keys(self, key_dir: Path) -> list[str]:
        """The key directory's ``*.key`` and ``*.pub`` files, private ones 0600 whatever they had; returns notes.

        A key file that is a symlink (a mounted secret) is captured with its target's content; one that
        leads nowhere is refused. A public key the trail needs but the directory lacks is derived from
        its private key when that is there.
        """
        notes = []
        dangling = [p.name for p in sorted(key_dir.iterdir()) if key_name_ok(p.name) and not p.exists()]
        if dangling:
            raise InvalidInputError(f"{key_dir}: key files that lead nowhere: {', '.join(dangling)}", field="--key-dir")
        for path in sorted(key_dir.iterdir()):
            if path.name.startswith("."):
                continue  # a secret mount's own bookkeeping (..data, ..2026_…): the named files link into it
            if not key_name_ok(path.name) or not path.is_file():
                notes.append(f"{path.name}: not a *.key or *.pub file, left out")
                continue
            rel = PurePosixPath(path.name)
            shutil.copyfile(path, self.target(rel, KEYS))
            self.add(rel, "key", 0o600 if private_key_name(path.name) else 0o644, KEYS)
        for name in [n.removeprefix(f"{KEYS}/") for n in list(self.entries) if n.startswith(f"{KEYS}/") and n.endswith(".key")]:
            key = _private_key(self.out / KEYS / name)
            if key is None:
                raise InvalidInputError(f"{key_dir / name}: not an unencrypted PEM Ed25519 private key", field="--key-dir")
            pub = PurePosixPath(f"{kid_of(key.public_key())}.pub")
            if f"{KEYS}/{pub}" not in self.entries:
                self.target(pub, KEYS).write_bytes(public_pem(key.public_key()))
                self.add(pub, "key", 0o644, KEYS)
                notes.append(f"{pub}: derived from {name} (the key directory lacked it)")
        return notes

    def unverifiable(self) -> dict[str, str]:
        """Key ids the captured trail names whose public key the snapshot lacks (kid -> a log naming it)."""
        return {kid: log for kid, log in sorted(self.kids.items()) if f"{KEYS}/{kid}.pub" not in self.entries}


def _private_key(path: Path) -> Ed25519PrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (ValueError, TypeError):
        return None
    return key if isinstance(key, Ed25519PrivateKey) else None


def signing_kids(log: Path) -> set[str]:
    """The key ids named by the signed records of an audit log (one pass, only signed lines are parsed)."""
    kids = set()
    with log.open("rb") as f:
        for line in f:
            if b'"sig"' in line:
                rec, _ = parse_line(line)
                if rec is not None and isinstance(rec.get("kid"), str):
                    kids.add(rec["kid"])
    return kids


def stepped_backup(src: sqlite3.Connection, dst: sqlite3.Connection) -> None:
    """SQLite's online backup in steps, so a writer of a rollback-journal database waits a step, not the whole copy.

    Each step holds the source's read lock for ``SQLITE_STEP_BYTES``; a commit by another connection makes
    SQLite restart the copy (its documented behaviour, which is what keeps the copy one committed state).
    Under writes steadier than a pass (more than ``SQLITE_RESTARTS`` restarts), the copy is taken in one step:
    the whole copy under one lock, as a plain backup takes, so it ends.
    A WAL database is copied in one step: its readers never block its writers.
    """
    mode = str(src.execute("PRAGMA journal_mode").fetchone()[0]).lower()
    page_size = int(src.execute("PRAGMA page_size").fetchone()[0])
    pages = -1 if mode == "wal" else max(1, SQLITE_STEP_BYTES // page_size)
    while True:
        try:
            # sleep: the retry after a busy source; short, or a steady writer keeps winning the lock
            src.backup(dst, pages=pages, progress=_Pacer() if pages > 0 else None, sleep=0.005)
            return
        except _RestartedError:
            pages = -1  # writes steadier than a pass: one step, the writers wait for the copy


class _Pacer:
    """The backup's progress callback: a pause between steps, and a count of restarts (the remainder grew)."""

    def __init__(self) -> None:
        self.remaining = -1
        self.restarts = 0

    def __call__(self, status: int, remaining: int, total: int) -> None:
        if 0 <= self.remaining < remaining or status != sqlite3.SQLITE_OK:  # restarted, or a writer held the lock
            self.restarts += 1
            if self.restarts > SQLITE_RESTARTS:
                raise _RestartedError
        self.remaining = remaining
        if remaining:
            time.sleep(SQLITE_STEP_PAUSE_S)


class _RestartedError(Exception):
    """The copy restarted too often at this step size."""


def last_record_seq(path: Path) -> int:
    end = last_line_end(path)
    if end == 0:
        return 0
    with path.open("rb") as f:
        start = max(0, end - CHUNK)
        f.seek(start)
        line = f.read(end - start).rstrip(b"\n").rsplit(b"\n", 1)[-1]
    rec, why = parse_line(line + b"\n")
    if rec is None or not isinstance(rec.get("seq"), int):
        raise IntegrityError(f"{path.name}: last record is not readable ({why})")
    return int(rec["seq"])


def registry_aliases(db: Path) -> dict[str, dict[str, str]]:
    """Registered model -> alias -> version, read from a copy of MLflow's database."""
    if not db.exists():
        return {}
    conn = sqlite3.connect(sqlite_uri(db, "ro"), uri=True)
    try:
        rows = conn.execute("SELECT name, alias, version FROM registered_model_aliases").fetchall()
    except sqlite3.Error:
        return {}  # not an MLflow registry (yet)
    finally:
        conn.close()
    out: dict[str, dict[str, str]] = {}
    for name, alias, version in rows:
        out.setdefault(str(name), {})[str(alias)] = str(version)
    return out


def deployment_summary(resource: Path) -> dict[str, object]:
    """Stable, canary, weight and phase of a deployment as its copied resource records them."""
    try:
        status = json.loads(resource.read_text()).get("status") or {}
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    keys = ("stableVersion", "canaryVersion", "canaryWeight", "rolloutPhase")
    return {k: status.get(k) for k in keys}


def take(
    data_dir: Path,
    out: Path,
    key_dir: Path | None,
    link: bool = False,
    progress: Progress = lambda n: None,
    follow_symlinks: bool = False,
    allow_unverifiable: bool = False,
) -> Manifest:
    """Write a snapshot of ``data_dir`` (and ``key_dir``) to ``out``, which must not exist yet.

    ``follow_symlinks``: copy what symlinks leading out of the data directory point at (else refused).
    ``allow_unverifiable``: finish even when the captured keys cannot verify the captured trail.
    """
    started = time.monotonic()
    data_dir = data_dir.resolve()
    if not data_dir.is_dir():
        raise NotFoundError(f"{data_dir} is not a directory", field="--data-dir")
    if out.exists():
        raise InvalidInputError(f"{out} exists already; snapshots are never overwritten", field="--out")
    if out.resolve().is_relative_to(data_dir):
        raise InvalidInputError(f"{out} is inside the data directory {data_dir}", field="--out")
    for stale in stale_partials(out.parent, pid_alive):  # a backup killed mid-copy (timeout, OOM killer)
        shutil.rmtree(stale, ignore_errors=True)
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")  # renamed to ``out`` once complete
    partial.mkdir(parents=True, mode=0o700)
    Path(partial).chmod(0o700)
    try:
        snap = Snapshot(data_dir, partial, link, progress)
        manifest = _capture(snap, data_dir, key_dir, follow_symlinks, allow_unverifiable)
        manifest.seconds = round(time.monotonic() - started, 3)
        (partial / MANIFEST).write_text(manifest.to_json())
        Path(partial / MANIFEST).chmod(0o600)
        partial.rename(out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return manifest


def _capture(snap: Snapshot, data_dir: Path, key_dir: Path | None, follow: bool, allow_unverifiable: bool) -> Manifest:
    def listing() -> list[tuple[PurePosixPath, str]]:
        files = walk(data_dir, follow, RESTORE_LEFTOVERS)
        names = {str(rel) for rel in files}
        return [(rel, kind_of(rel, header_of(data_dir / rel), f"{rel}.head" in names)) for rel in files]

    first = listing()
    predictions = data_dir / "predictions"
    with contextlib.ExitStack() as stack:
        # an erasure holds this from its suppression through its receipt: the snapshot is before or after it, whole
        stack.enter_context(flocked(data_dir / ERASURE_LOCK))
        if predictions.is_dir():  # erasure and compaction rewrite segments: they wait until the copy is done
            stack.enter_context(flocked(predictions / ".maintenance.lock"))
        with contextlib.ExitStack() as steps:
            # every runner step waits while its deployment and the registry are read, so they agree
            for resource in sorted((data_dir / "rollout").glob("*/deployment.json")):
                steps.enter_context(flocked(resource.parent / ".lock"))
            for rel, kind in first:
                if kind == "rollout" or (kind == "sqlite" and rel.parts[:1] == ("mlflow",)):
                    snap.capture(rel, kind)
        for rel, kind in first:
            if kind in ("sqlite", "audit") and not snap.done(rel):
                snap.capture(rel, kind)
        # a second listing: what appeared meanwhile (a new segment, a version's artifacts) is included
        second = listing()
        logs = {str(rel) for rel, kind in second if kind == "audit"}
        for rel, kind in second:
            if kind not in ("skip", "audit-head") and not snap.done(rel):
                snap.capture(rel, kind)
            elif kind == "audit-head" and not snap.done(rel) and str(rel).removesuffix(".head") not in logs:
                snap.capture(rel, "file")
        dirs = dir_modes(data_dir, [rel for rel, _ in second])
    notes = snap.keys(key_dir) if key_dir is not None and key_dir.is_dir() else []
    if key_dir is not None and key_dir.is_dir():
        missing = snap.unverifiable()
        if missing and not allow_unverifiable:
            named = ", ".join(f"{kid} (signs {log})" for kid, log in missing.items())
            raise IntegrityError(
                f"the audit trail is signed by keys whose public key is not in {key_dir}: {named}; add each <kid>.pub "
                "there (or pass --allow-unverifiable to take a snapshot whose trail will not verify with its own keys)"
            )
    deployments = {p.parent.name: deployment_summary(p) for p in sorted((snap.out / DATA / "rollout").glob("*/deployment.json"))}
    return Manifest(
        created=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        source=str(data_dir),
        host=socket.gethostname(),
        key_dir=str(key_dir) if key_dir is not None and key_dir.is_dir() else None,
        entries=sorted(snap.entries.values(), key=lambda e: e.path),
        audit=snap.audit,
        aliases=registry_aliases(snap.out / DATA / "mlflow" / "mlflow.db"),
        deployments=deployments,
        dirs=dirs,
        notes=notes,
    )
