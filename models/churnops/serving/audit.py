"""Append-only, hash-chained audit trail of predictions.

Each record carries ``seq``, the previous record's hash and its own hash:
``hash = sha256(prev_hash || canonical JSON of the record without its hash)``.
Editing, deleting or reordering a record breaks the chain at that point. The
latest ``(seq, hash)`` is also kept outside the log (a head file, or a head
row in PostgreSQL), so cutting records off the end is detected too.

Sinks:
- ``FileAuditSink`` (embedded): JSON lines, one ``write`` per batch, an explicit
  fsync policy, and the head file replaced atomically after each append. One
  writer per file: an exclusive lock is held while the sink is open (a second
  server on the same file is refused; a restarted one continues the chain it
  finds). A crash can leave a torn last line; opening the log moves it aside
  into ``<log>.torn`` (that request was never answered) and verification passes.
- ``PostgresAuditSink`` (cluster): one transaction per batch that locks the
  head row, so several replicas extend a single chain.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import orjson
import psycopg

from churnops.errors import ConflictError, IntegrityError

log = logging.getLogger(__name__)

GENESIS = "0" * 64
FsyncPolicy = Literal["always", "interval", "never"]


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes that are hashed (orjson: about 10x faster than json)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev: str, body: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + canonical(body)).hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a value's canonical JSON (used for feature snapshots)."""
    return hashlib.sha256(canonical(obj)).hexdigest()


@dataclass(frozen=True)
class Head:
    seq: int
    hash: str


def seal(entries: Iterable[Mapping[str, Any]], head: Head) -> tuple[list[dict[str, Any]], Head]:
    """Number and chain ``entries`` after ``head``; returns the sealed records and the new head."""
    sealed = []
    seq, prev = head.seq, head.hash
    for entry in entries:
        seq += 1
        body = {**entry, "seq": seq, "prev": prev}
        prev = chain_hash(prev, body)
        sealed.append({**body, "hash": prev})
    return sealed, Head(seq, prev)


@dataclass
class Verification:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    unacknowledged: int = 0  # valid records after the head: a crash between append and head update

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(records: Iterable[Mapping[str, Any]], head: Head | None) -> Verification:
    """Check the chain and that it reaches the head kept outside the log."""
    out = Verification()
    seq, prev = 0, GENESIS
    for rec in records:
        out.records += 1
        body = {k: v for k, v in rec.items() if k != "hash"}
        if rec.get("seq") != seq + 1:
            out.problems.append(f"record {out.records}: seq {rec.get('seq')} where {seq + 1} was expected (deleted or reordered)")
            return out
        if rec.get("prev") != prev:
            out.problems.append(f"seq {seq + 1}: prev hash does not match the record before it (edited, deleted or reordered)")
            return out
        expected = chain_hash(prev, body)
        if rec.get("hash") != expected:
            out.problems.append(f"seq {seq + 1}: content does not match its hash (edited)")
            return out
        seq, prev = seq + 1, expected
        if head is not None and seq == head.seq and prev != head.hash:
            out.problems.append(f"seq {seq}: hash differs from the head kept outside the log (rewritten)")
            return out
    if head is not None:
        if seq < head.seq:
            out.problems.append(f"log ends at seq {seq} but the head says {head.seq} (truncated)")
        else:
            out.unacknowledged = seq - head.seq
    return out


class AuditSink(Protocol):
    def append(self, entries: list[dict[str, Any]]) -> Head: ...

    def close(self) -> None: ...


class FileAuditSink:
    """JSON-lines log plus a head file.

    ``fsync`` policy: ``always`` syncs the log and the head on every append
    (nothing acknowledged is ever lost); ``interval`` (default) has a background
    thread sync both every ``interval_s``, so a power loss costs at most that
    window while a process crash costs nothing (written bytes are in the
    kernel); ``never`` leaves it to the OS. The head may trail the log after a
    crash; ``verify`` reports such records as unacknowledged, not as tampering.
    """

    def __init__(self, path: Path, fsync: FsyncPolicy = "interval", interval_s: float = 1.0, lock_wait_s: float = 0.0) -> None:
        """``lock_wait_s``: how long to wait for another writer to finish (0: refuse at once, as a server does)."""
        self.path = path
        self.head_path = head_path_for(path)
        self.fsync = fsync
        self.interval_s = interval_s
        self._lock = threading.Lock()
        path.parent.mkdir(parents=True, exist_ok=True)
        self._writer = _exclusive(path.with_name(path.name + ".lock"), lock_wait_s)
        recover_torn_tail(path)
        self._head = last_head(path)
        stored = read_head(self.head_path)
        if stored is not None and stored.seq > self._head.seq:
            # refuse to extend a log that lost records: that would hide the loss
            os.close(self._writer)
            raise IntegrityError(
                f"audit log {path} ends at seq {self._head.seq} but its head says {stored.seq}; run `churnops audit verify`"
            )
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._synced: Head | None = stored
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="audit-fsync", daemon=True)
            self._syncer.start()

    def append(self, entries: list[dict[str, Any]]) -> Head:
        with self._lock:
            sealed, head = seal(entries, self._head)
            data = b"".join(canonical(r) + b"\n" for r in sealed)
            os.write(self._fd, data)  # one write: O_APPEND keeps it contiguous
            self._head = head
            if self.fsync == "always":
                os.fsync(self._fd)
                write_head(self.head_path, head, sync=True)
            elif self.fsync == "never":
                write_head(self.head_path, head, sync=False)
            return head

    def sync(self) -> None:
        """Make everything appended so far durable, then move the head file to it."""
        with self._lock:
            head = self._head
        os.fsync(self._fd)  # outside the lock: appends continue while the disk works
        if head != self._synced:
            write_head(self.head_path, head, sync=True)
            self._synced = head

    def _sync_loop(self) -> None:
        while not self._closed.wait(self.interval_s):
            self.sync()

    def close(self) -> None:
        self._closed.set()
        if self._syncer is not None:
            self._syncer.join()
        self.sync()
        os.close(self._fd)
        os.close(self._writer)  # releases the writer lock


def _exclusive(lock_path: Path, wait_s: float) -> int:
    """An fd holding an exclusive lock on ``lock_path`` (released when the fd is closed, also by a crash)."""
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o640)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                raise ConflictError(
                    f"audit log {lock_path.with_suffix('')} is being written by another process; one writer per file "
                    "(give each server its own --audit-log, or use --audit-dsn to share one PostgreSQL chain)"
                ) from None
            time.sleep(0.05)


def head_path_for(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".head")


def write_head(path: Path, head: Head, sync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps({"seq": head.seq, "hash": head.hash}))
        if sync:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def read_head(path: Path) -> Head | None:
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    return Head(int(data["seq"]), str(data["hash"]))


def recover_torn_tail(path: Path) -> int:
    """Move an incomplete last line (a crash mid-append) into ``<log>.torn``; returns the bytes moved."""
    if not path.exists() or path.stat().st_size == 0:
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 20)))
        tail = f.read()
        if tail.endswith(b"\n"):
            return 0
        cut = tail.rfind(b"\n") + 1
        torn = tail[cut:]
        keep = size - len(torn)
        with path.with_name(path.name + ".torn").open("ab") as t:
            t.write(torn + b"\n")
        f.truncate(keep)
    log.warning("audit log %s: moved a torn last record (%d bytes) to %s.torn", path, len(torn), path.name)
    return len(torn)


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    if not path.exists():
        return
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                yield {"seq": None, "unparseable_line": n}


def last_head(path: Path) -> Head:
    """The (seq, hash) of the log's last record, read from its tail."""
    if not path.exists() or path.stat().st_size == 0:
        return Head(0, GENESIS)
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 20)))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    rec = json.loads(last)
    return Head(int(rec["seq"]), str(rec["hash"]))


def verify_file(path: Path) -> Verification:
    return verify(read_records(path), read_head(head_path_for(path)))


AUDIT_DDL = f"""
CREATE TABLE IF NOT EXISTS churnops_audit_log (
    seq bigint PRIMARY KEY,
    prev text NOT NULL,
    hash text NOT NULL,
    record jsonb NOT NULL
);
CREATE TABLE IF NOT EXISTS churnops_audit_head (
    id int PRIMARY KEY CHECK (id = 1),
    seq bigint NOT NULL,
    hash text NOT NULL
);
INSERT INTO churnops_audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}') ON CONFLICT (id) DO NOTHING;
"""


class PostgresAuditSink:
    """The chain in PostgreSQL; the head row (locked per append) serialises writers across replicas."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self._conn = psycopg.connect(dsn, autocommit=False, connect_timeout=5)
        self._lock = threading.Lock()
        with self._conn.transaction():
            self._conn.execute(AUDIT_DDL)

    def append(self, entries: list[dict[str, Any]]) -> Head:
        with self._lock, self._conn.transaction():
            row = self._conn.execute("SELECT seq, hash FROM churnops_audit_head WHERE id = 1 FOR UPDATE").fetchone()
            assert row is not None
            sealed, head = seal(entries, Head(int(row[0]), str(row[1])))
            with self._conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO churnops_audit_log (seq, prev, hash, record) VALUES (%s, %s, %s, %s)",
                    [(r["seq"], r["prev"], r["hash"], canonical(r).decode()) for r in sealed],
                )
            self._conn.execute("UPDATE churnops_audit_head SET seq = %s, hash = %s WHERE id = 1", (head.seq, head.hash))
            return head

    def close(self) -> None:
        self._conn.close()


def verify_postgres(dsn: str) -> Verification:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT seq, hash FROM churnops_audit_head WHERE id = 1").fetchone()
        head = Head(int(row[0]), str(row[1])) if row else None
        # a server-side cursor streams the log in seq order without loading it whole
        with conn.cursor(name="audit_verify") as cur:
            cur.execute("SELECT record FROM churnops_audit_log ORDER BY seq")
            return verify((r[0] for r in cur), head)
