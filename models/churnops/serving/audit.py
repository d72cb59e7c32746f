"""Append-only, hash-chained and signed audit trail of predictions.

Each record carries ``seq``, the previous record's hash and its own hash:
``hash = sha256(prev_hash || canonical JSON of the record without hash and sig)``.
Editing, deleting or reordering a record breaks the chain at that point. The
chain alone does not stop someone who can write the log from rebuilding it, so
each append (one batch) is signed: its last record names the key (``kid``,
inside the hash) and carries an Ed25519 signature over ``("batch", seq, hash)``
(``sig``), which vouches for every record up to it. The latest ``(seq, hash)``
is also kept outside the log, signed over ``("head", seq, hash)`` (a head
file, or a head row in PostgreSQL), so cutting records off the end is detected
too, and a batch signature copied out of the log cannot pass for a head;
optionally heads are checkpointed into PostgreSQL
(``churnops.serving.audit_anchor``) so that even a rollback to an earlier head
(an old head file someone kept) shows.

Each line of the file trail is exactly ``canonical(record)`` and a newline,
as the writer wrote it; any other bytes (duplicate keys, NaN, another key
order, whitespace or escapes) are a finding even when the parsed record would
hash the same, because readers that parse differently (first key wins, NaN
read as a number) would see something the hash does not vouch for.
PostgreSQL stores records as jsonb, which re-serialises them: there the
parsed record is checked.

Sinks:
- ``FileAuditSink`` (embedded): JSON lines, one ``write`` per batch, an explicit
  fsync policy, and the head file replaced atomically after each append. One
  writer per file: an exclusive lock on the log file itself (its inode, so a
  symlink, a hard link or another relative path to it is the same file) is held
  while the sink is open (a second server is refused; a restarted one continues
  the chain it finds, after checking that its last record is canonical, chains
  to its own content and carries a trusted signature: a writer vouches for the
  tail only; ``churnops audit verify`` checks the whole chain). A crash
  can leave a torn last line; opening the log moves it aside into ``<log>.torn``
  (that request was never answered) and verification passes.
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
from churnops.serving.audit_keys import PublicKeys, Signer

log = logging.getLogger(__name__)

GENESIS = "0" * 64
FsyncPolicy = Literal["always", "interval", "never"]
UNHASHED = ("hash", "sig")  # the hash cannot cover itself, and the signature is made over the hash
RESERVED = frozenset({"seq", "prev", "hash", "kid", "sig"})


def canonical(obj: Any) -> bytes:
    """Sorted keys, no whitespace, UTF-8: the bytes that are hashed (orjson: about 10x faster than json)."""
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS)


def chain_hash(prev: str, body: Mapping[str, Any]) -> str:
    return hashlib.sha256(prev.encode() + canonical(body)).hexdigest()


def digest(obj: Any) -> str:
    """sha256 of a value's canonical JSON (used for feature snapshots)."""
    return hashlib.sha256(canonical(obj)).hexdigest()


def body_of(rec: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in rec.items() if k not in UNHASHED}


@dataclass(frozen=True)
class Head:
    """The chain's end: ``(seq, hash)``, with the signature over it when it ends a signed batch."""

    seq: int
    hash: str
    kid: str | None = None
    sig: str | None = None


def seal(entries: Iterable[Mapping[str, Any]], head: Head, signer: Signer) -> tuple[list[dict[str, Any]], Head]:
    """Number and chain ``entries`` after ``head`` and sign the last one; returns the sealed records and the new head."""
    sealed: list[dict[str, Any]] = []
    for entry in entries:
        if RESERVED.intersection(entry):
            raise ValueError(f"audit entries may not set {sorted(RESERVED.intersection(entry))}: the chain writes them")
        sealed.append(dict(entry))
    if not sealed:
        return [], head
    sealed[-1]["kid"] = signer.kid  # inside the hash: stripping the signature shows as a record that lost it
    seq, prev = head.seq, head.hash
    for body in sealed:
        seq += 1
        body["seq"], body["prev"] = seq, prev
        prev = chain_hash(prev, body)
        body["hash"] = prev
    sealed[-1]["sig"] = signer.sign("batch", seq, prev)
    return sealed, signed_head(seq, prev, signer)


def signed_head(seq: int, hash_: str, signer: Signer) -> Head:
    """The head kept outside the log, signed in its own role (never the batch signature found in the log)."""
    return Head(seq, hash_, signer.kid, signer.sign("head", seq, hash_))


@dataclass
class Verification:
    records: int = 0
    problems: list[str] = field(default_factory=list)
    unacknowledged: int = 0  # signed records after the head: a crash between append and head update
    signatures: int = 0  # signed batches checked
    kids: set[str] = field(default_factory=set)
    head: Head | None = None
    signed_through: int = 0  # the last seq a valid signature vouches for

    @property
    def ok(self) -> bool:
        return not self.problems


def _check_record(rec: Mapping[str, Any], seq: int, prev: str, keys: PublicKeys) -> tuple[str, str | None]:
    """The record's hash, and the first problem with it (None when it chains on and its signature, if any, holds)."""
    if "unparseable_line" in rec:
        return "", f"line {rec['unparseable_line']}: {rec.get('why', 'not a JSON object')} (corrupted or tampered)"
    if rec.get("seq") != seq + 1:
        return "", f"record {seq + 1}: seq {rec.get('seq')} where {seq + 1} was expected (deleted or reordered)"
    if rec.get("prev") != prev:
        return "", f"seq {seq + 1}: prev hash does not match the record before it (edited, deleted or reordered)"
    try:
        expected = chain_hash(prev, body_of(rec))
    except TypeError as e:  # e.g. an integer beyond 64 bits in a PostgreSQL row: no canonical form, so no hash
        return "", f"seq {seq + 1}: the record has no canonical form ({e}) (tampered)"
    if rec.get("hash") != expected:
        return expected, f"seq {seq + 1}: content does not match its hash (edited)"
    if "kid" in rec and "sig" not in rec:
        return expected, f"seq {seq + 1}: names signing key {rec['kid']!r} but its signature is gone (removed)"
    if "sig" in rec:
        why = keys.problem("batch", rec.get("kid"), seq + 1, expected, rec["sig"])
        if why is not None:
            return expected, f"seq {seq + 1}: {why}"
    return expected, None


def _outside_problem(outside: Head, keys: PublicKeys, unsigned_ok: bool) -> str | None:
    """Why a head kept outside the log (head file, head row, checkpoint) cannot be trusted, or None."""
    if outside.sig is None:
        return None if unsigned_ok else "not signed (forged, or written before the trail was signed: `churnops audit adopt`)"
    return keys.problem("head", outside.kid, outside.seq, outside.hash, outside.sig)


def verify(
    records: Iterable[Mapping[str, Any]],
    head: Head | None,
    keys: PublicKeys,
    *,
    allow_missing_head: bool = False,
    checkpoint: Head | None = None,
    unsigned_ok: bool = False,
) -> Verification:
    """Check the chain, every batch's signature, and that the log reaches the signed head kept outside it.

    ``checkpoint``: the newest head anchored elsewhere (``audit_anchor``); the log must reach it with the same hash.
    ``unsigned_ok``: a log written before the trail was signed, checked before it is adopted (``churnops audit
    adopt``): its records and head may lack signatures; every signature present must still hold.
    """
    if head is not None and head.seq == 0:
        head = None  # the head of an empty log vouches for nothing
    out = Verification(head=head)
    for name, outside in (("head", head), ("checkpoint", checkpoint)):
        why = None if outside is None else _outside_problem(outside, keys, unsigned_ok)
        if why is not None:
            out.problems.append(f"{name} (seq {outside.seq if outside else 0}): {why}")
            return out
        if outside is not None and outside.kid is not None:
            out.kids.add(outside.kid)
    seq, prev = 0, GENESIS
    for rec in records:
        out.records += 1
        expected, problem = _check_record(rec, seq, prev, keys)
        if problem is not None:
            out.problems.append(problem)
            return out
        seq, prev = seq + 1, expected
        if "sig" in rec:
            out.signatures += 1
            out.kids.add(str(rec["kid"]))
            out.signed_through = seq
        if head is not None and seq == head.seq and prev != head.hash:
            out.problems.append(f"seq {seq}: hash differs from the head kept outside the log (rewritten)")
            return out
        if checkpoint is not None and seq == checkpoint.seq and prev != checkpoint.hash:
            out.problems.append(f"seq {seq}: hash differs from the checkpoint anchored in PostgreSQL (rewritten)")
            return out
    if seq > out.signed_through and not unsigned_ok:
        out.problems.append(
            f"{seq - out.signed_through} record(s) after seq {out.signed_through} carry no signature "
            "(appended without the signing key, or written before the trail was signed)"
        )
    if checkpoint is not None and seq < checkpoint.seq:
        out.problems.append(f"log ends at seq {seq} but a checkpoint anchored in PostgreSQL reached seq {checkpoint.seq} (rolled back)")
    if head is None:
        if seq > 0 and not allow_missing_head:
            out.problems.append("no head kept outside the log: records cut off its end could not be detected (deleted?)")
    elif seq < head.seq:
        out.problems.append(f"log ends at seq {seq} but the head says {head.seq} (truncated)")
    else:
        out.unacknowledged = seq - head.seq
    return out


class AuditSink(Protocol):
    def append(self, entries: list[dict[str, Any]]) -> Head: ...

    def close(self) -> None: ...


class Checkpointer(Protocol):
    """Keeps heads somewhere the log's writer cannot rewrite (``audit_anchor.Anchor``)."""

    def offer(self, head: Head) -> None: ...

    def close(self) -> None: ...


class FileAuditSink:
    """JSON-lines log plus a head file.

    ``fsync`` policy: ``always`` syncs the log and the head on every append
    (nothing acknowledged is ever lost); ``interval`` (default) has a background
    thread sync both every ``interval_s``, so a power loss costs at most that
    window while a process crash costs nothing (written bytes are in the
    kernel); ``never`` leaves it to the OS. The head may trail the log after a
    crash; ``verify`` reports such records as unacknowledged, not as tampering.
    ``anchor`` is offered every head that reached the disk, and closed with the sink.
    """

    def __init__(
        self,
        path: Path,
        signer: Signer,
        fsync: FsyncPolicy = "interval",
        interval_s: float = 1.0,
        lock_wait_s: float = 0.0,
        trusted: PublicKeys | None = None,
        anchor: Checkpointer | None = None,
        adopt_unsigned: bool = False,
    ) -> None:
        """``lock_wait_s``: how long to wait for another writer to finish (0: refuse at once, as a server does).

        ``trusted``: the public keys the last record found on opening may be signed with (the signer's own always is).
        ``adopt_unsigned``: extend a last record without a signature (``churnops audit adopt`` only, after verifying the log).
        """
        self.path = path.resolve()  # through a symlink: the head lives beside the real log
        self.head_path = head_path_for(self.path)
        self.signer = signer
        self.fsync = fsync
        self.interval_s = interval_s
        self._anchor = anchor
        self._lock = threading.Lock()
        self._head_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            _lock_file(self._fd, self.path, lock_wait_s)
            recover_torn_tail(self.path)
            tail = tail_head(self.path, (trusted or PublicKeys()).with_signer(signer), adopt_unsigned)
            self._head = signed_head(tail.seq, tail.hash, signer) if tail.seq > 0 else tail
            stored = read_head(self.head_path)
            if stored is not None and stored.seq > self._head.seq:
                # refuse to extend a log that lost records: that would hide the loss
                raise IntegrityError(
                    f"audit log {self.path} ends at seq {self._head.seq} but its head says {stored.seq}; run `churnops audit verify`"
                )
            if stored is None and self._head.seq > 0 and not adopt_unsigned:
                # a new head would make a cut-off end undetectable (the first append writes the head at once)
                raise IntegrityError(
                    f"audit log {self.path} has records but no head file {self.head_path.name}; run `churnops audit verify` "
                    "(a log from before head files: `churnops audit adopt --allow-missing-head`)"
                )
        except BaseException:
            os.close(self._fd)  # also releases the lock
            if anchor is not None:
                anchor.close()
            raise
        self._synced: Head | None = stored
        self._closed = threading.Event()
        self._syncer: threading.Thread | None = None
        if fsync == "interval":
            self._syncer = threading.Thread(target=self._sync_loop, name="audit-fsync", daemon=True)
            self._syncer.start()

    @property
    def head(self) -> Head:
        return self._head

    def append(self, entries: list[dict[str, Any]]) -> Head:
        with self._lock:
            sealed, head = seal(entries, self._head, self.signer)
            data = b"".join(canonical(r) + b"\n" for r in sealed)
            os.write(self._fd, data)  # one write: O_APPEND keeps it contiguous
            self._head = head
            if self.fsync == "always" or self._synced is None:
                # the first head of a log at once, whatever the policy: a non-empty log without one reads as a hidden truncation
                os.fsync(self._fd)
                self._store_head(head, sync=True)
            elif self.fsync == "never":
                self._store_head(head, sync=False)
            return head

    def _store_head(self, head: Head, sync: bool) -> None:
        with self._head_lock:  # the fsync thread and an append may both move the head: one at a time, never backwards
            if self._synced is not None and head.seq <= self._synced.seq:
                return
            write_head(self.head_path, head, sync=sync)
            self._synced = head
        if self._anchor is not None:
            self._anchor.offer(head)

    def sync(self) -> None:
        """Make everything appended so far durable, then move the head file to it."""
        with self._lock:
            head = self._head
        os.fsync(self._fd)  # outside the lock: appends continue while the disk works
        if head != self._synced and head.seq > 0:
            self._store_head(head, sync=True)

    def _sync_loop(self) -> None:
        while not self._closed.wait(self.interval_s):
            self.sync()

    def close(self) -> None:
        self._closed.set()
        if self._syncer is not None:
            self._syncer.join()
        self.sync()
        os.close(self._fd)  # releases the writer lock
        if self._anchor is not None:
            self._anchor.close()


def _lock_file(fd: int, path: Path, wait_s: float) -> None:
    """An exclusive lock on the open log file itself: a lock belongs to the inode, whatever name reached it.

    ``flock`` locks an open file description, so a second ``open`` of the same
    file (another process, or this one) conflicts; a crash releases it.
    """
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise ConflictError(
                    f"audit log {path} is being written by another process; one writer per file "
                    "(give each server its own --audit-log, or use --audit-dsn to share one PostgreSQL chain)"
                ) from None
            time.sleep(0.05)


def head_path_for(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".head")


def write_head(path: Path, head: Head, sync: bool) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w") as f:
        f.write(json.dumps({"seq": head.seq, "hash": head.hash, "kid": head.kid, "sig": head.sig}))
        if sync:
            f.flush()
            os.fsync(f.fileno())
    tmp.replace(path)


def head_from(data: object, where: str) -> Head:
    """A head from its JSON; a damaged one is an ``IntegrityError`` naming ``where`` (never a traceback)."""
    if not isinstance(data, dict):
        raise IntegrityError(f"{where}: not a JSON object")
    seq, hash_, kid, sig = data.get("seq"), data.get("hash"), data.get("kid"), data.get("sig")
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0:
        raise IntegrityError(f"{where}: 'seq' must be a non-negative integer, got {seq!r}")
    if not isinstance(hash_, str) or len(hash_) != 64:
        raise IntegrityError(f"{where}: 'hash' must be 64 hex digits, got {hash_!r}")
    if not (kid is None or isinstance(kid, str)) or not (sig is None or isinstance(sig, str)):
        raise IntegrityError(f"{where}: 'kid' and 'sig' must be strings")
    return Head(seq, hash_, kid, sig)


def read_head(path: Path) -> Head | None:
    if not path.exists():
        return None
    try:
        data = orjson.loads(path.read_bytes())  # bounded nesting depth: a damaged file is an error, not a RecursionError
    except (OSError, ValueError) as e:
        raise IntegrityError(f"audit head {path}, line 1: not readable JSON ({e})") from None
    return head_from(data, f"audit head {path}")


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


def parse_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """A log line's record, or why it is not one: the line must be exactly the record's canonical bytes.

    orjson bounds the nesting depth and rejects NaN and Infinity; comparing the bytes rejects every other
    encoding of the same record (duplicate keys, another key order, whitespace, escapes, an integer beyond
    64 bits read as a float), so what the hash vouches for is what any reader of the line sees.
    """
    body = line.removesuffix(b"\n")
    try:
        rec = orjson.loads(body)
    except ValueError as e:
        return None, f"not a JSON object ({e})"
    if not isinstance(rec, dict):
        return None, "not a JSON object"
    try:
        same = canonical(rec) == body
    except TypeError as e:  # nested deeper than the serialiser goes
        return None, f"not a canonical JSON record ({e})"
    if not same:
        return None, "not the canonical serialisation of its record (rewritten: duplicate keys, NaN, key order, spacing or escapes)"
    return rec, None


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The log's records; a line that is not one comes as ``{"seq": None, "unparseable_line": n, "why": ...}``."""
    if not path.exists():
        return
    with path.open("rb") as f:
        for n, line in enumerate(f, start=1):
            rec, why = parse_line(line)
            yield rec if rec is not None else {"seq": None, "unparseable_line": n, "why": why}


def _line_count(path: Path) -> int:
    with path.open("rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))


def last_record(path: Path) -> dict[str, Any] | None:
    """The log's last record, read from its tail; a complete line that is not a record is an ``IntegrityError``."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    with path.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 20)))
        last = f.read().rstrip(b"\n").rsplit(b"\n", 1)[-1]
    rec, why = parse_line(last)
    if rec is None:
        # a whole line (a crash leaves only a line without its newline, moved aside on opening): corruption or tampering
        raise IntegrityError(f"audit log {path}, line {_line_count(path)} (the last): {why}; run `churnops audit verify`")
    return rec


def tail_head(path: Path, trusted: PublicKeys, adopt_unsigned: bool = False) -> Head:
    """Where the chain ends: the last record, which must be canonical, chain to its own content and carry a trusted
    signature; returned unsigned (the writer signs it as its head).

    A writer never signs on top of records it cannot vouch for: that would make a forged tail part of the signed chain.
    It vouches for the tail only: reading the whole chain would make opening O(n) (about 2 s per 100,000 records),
    so an edit in the middle is left to ``churnops audit verify``, which checks every record.
    ``adopt_unsigned``: only for ``churnops audit adopt``, after the whole unsigned log was verified.
    """
    rec = last_record(path)
    if rec is None:
        return Head(0, GENESIS)
    where = f"audit log {path}, line {_line_count(path)} (the last)"
    seq, prev = rec.get("seq"), rec.get("prev")
    if not isinstance(seq, int) or not isinstance(prev, str) or rec.get("hash") != chain_hash(prev, body_of(rec)):
        raise IntegrityError(f"{where}: the record does not match its hash (edited); run `churnops audit verify`")
    if "sig" not in rec:
        if adopt_unsigned:
            return Head(seq, rec["hash"])
        raise IntegrityError(
            f"{where}: seq {seq} is not signed (appended without the signing key, or written before the trail was signed); "
            "run `churnops audit verify` (and `churnops audit adopt` for a log from before signing)"
        )
    why = trusted.problem("batch", rec.get("kid"), seq, rec["hash"], rec["sig"])
    if why is not None:
        raise IntegrityError(f"{where}: seq {seq} {why}; after a key rotation give the old public keys with --audit-public-keys")
    return Head(seq, rec["hash"])


def verify_file(
    path: Path, keys: PublicKeys, *, allow_missing_head: bool = False, checkpoint: Head | None = None, unsigned_ok: bool = False
) -> Verification:
    """``verify`` of a log file and its head file; a damaged head file is a finding, not a crash."""
    try:
        head = read_head(head_path_for(path))
    except IntegrityError as e:
        return Verification(problems=[str(e)])
    return verify(read_records(path), head, keys, allow_missing_head=allow_missing_head, checkpoint=checkpoint, unsigned_ok=unsigned_ok)


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
ALTER TABLE churnops_audit_head ADD COLUMN IF NOT EXISTS kid text, ADD COLUMN IF NOT EXISTS sig text;
INSERT INTO churnops_audit_head (id, seq, hash) VALUES (1, 0, '{GENESIS}') ON CONFLICT (id) DO NOTHING;
"""


class PostgresAuditSink:
    """The chain in PostgreSQL; the head row (locked per append) serialises writers across replicas."""

    def __init__(self, dsn: str, signer: Signer, trusted: PublicKeys | None = None, adopt_unsigned: bool = False) -> None:
        self.dsn = dsn
        self.signer = signer
        self._conn = psycopg.connect(dsn, autocommit=False, connect_timeout=5)
        self._lock = threading.Lock()
        with self._conn.transaction():
            self._conn.execute(AUDIT_DDL)
            self._check_tail((trusted or PublicKeys()).with_signer(signer), adopt_unsigned)

    def _check_tail(self, trusted: PublicKeys, adopt_unsigned: bool) -> None:
        """As ``tail_head``: never sign on top of a last row this writer cannot vouch for."""
        row = self._conn.execute("SELECT record FROM churnops_audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        if row is None:
            return
        rec = row[0]
        where = f"audit table churnops_audit_log, seq {rec.get('seq')} (the last)"
        head = self._conn.execute("SELECT seq, hash FROM churnops_audit_head WHERE id = 1").fetchone()
        if head is None or (int(head[0]), str(head[1])) != (rec.get("seq"), rec.get("hash")):
            raise IntegrityError(f"{where}: the head row does not name it (deleted or rewritten); run `churnops audit verify --dsn`")
        try:
            matches = rec.get("hash") == chain_hash(str(rec.get("prev")), body_of(rec))
        except TypeError:  # no canonical form (an integer beyond 64 bits)
            matches = False
        if not matches:
            raise IntegrityError(f"{where}: the record does not match its hash (edited); run `churnops audit verify --dsn`")
        if "sig" not in rec and adopt_unsigned:
            return
        why = "is not signed" if "sig" not in rec else trusted.problem("batch", rec.get("kid"), rec["seq"], rec["hash"], rec["sig"])
        if why is not None:
            raise IntegrityError(f"{where}: {why}; run `churnops audit verify --dsn`")

    def append(self, entries: list[dict[str, Any]]) -> Head:
        with self._lock, self._conn.transaction():
            row = self._conn.execute("SELECT seq, hash FROM churnops_audit_head WHERE id = 1 FOR UPDATE").fetchone()
            assert row is not None
            sealed, head = seal(entries, Head(int(row[0]), str(row[1])), self.signer)
            with self._conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO churnops_audit_log (seq, prev, hash, record) VALUES (%s, %s, %s, %s)",
                    [(r["seq"], r["prev"], r["hash"], canonical(r).decode()) for r in sealed],
                )
            self._conn.execute(
                "UPDATE churnops_audit_head SET seq = %s, hash = %s, kid = %s, sig = %s WHERE id = 1",
                (head.seq, head.hash, head.kid, head.sig),
            )
            return head

    def close(self) -> None:
        self._conn.close()


def verify_postgres(
    dsn: str, keys: PublicKeys, *, allow_missing_head: bool = False, checkpoint: Head | None = None, unsigned_ok: bool = False
) -> Verification:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute("SELECT seq, hash, kid, sig FROM churnops_audit_head WHERE id = 1").fetchone()
        head = Head(int(row[0]), str(row[1]), row[2], row[3]) if row and int(row[0]) > 0 else None
        # a server-side cursor streams the log in seq order without loading it whole
        with conn.cursor(name="audit_verify") as cur:
            cur.execute("SELECT record FROM churnops_audit_log ORDER BY seq")
            return verify(
                (r[0] for r in cur), head, keys, allow_missing_head=allow_missing_head, checkpoint=checkpoint, unsigned_ok=unsigned_ok
            )
