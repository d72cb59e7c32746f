"""Where subject keys and the suppression list live: SQLite (embedded) or PostgreSQL (cluster).

One store holds three things, changed together in one transaction on erasure:
- ``subject keys``: one random key per customer that has an audit record;
  created on first use with an insert that ignores a concurrent one, so
  every replica ends up with the same key, and never for an erased customer:
  the check against the suppression list and the insert are one transaction
  that serialises with ``suppress``, so a request racing an erasure cannot
  re-create the key it is about to shred;
- ``erased``: the erasure tokens of erased customers (keyed hashes, see
  ``keys.erasure_token``) and when each was added;
- a *generation* counter, bumped by every erasure, which the servers' caches
  poll (cheaply, at most once a second) to drop keys that were deleted.

The store key of the erasure tokens is created once and kept in the store:
whoever can read the store can test a guessed id against the list, which is
what honouring the erasure needs (recognising the customer's rows when they
come back), and no more than that.

The embedded file lives under ``<data-dir>/privacy/``, deliberately outside
the audit directory: audit logs are copied and archived, and a copy of the
keys beside them would undo the shredding.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import psycopg

from churnops.privacy.keys import ErasedCustomerError, erasure_token, new_key

DEFAULT_FILE = "privacy.db"
STORE_ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, psycopg.Error, OSError)  # the store is unavailable


@dataclass(frozen=True)
class Shredded:
    """What one erasure did in the store."""

    token: str
    key_deleted: bool
    newly_suppressed: bool


class PrivacyStore(Protocol):
    def subject_key(self, customer_id: int) -> bytes:
        """The customer's key, created if they have none; ``ErasedCustomerError`` for an erased customer."""

    def generation(self) -> int: ...

    def store_key(self) -> bytes: ...

    def tokens(self) -> frozenset[str]: ...

    def suppress(self, token: str) -> bool:
        """Add a token to the suppression list (bumping the generation); False when it was there already."""

    def shred(self, customer_id: int) -> bool:
        """Delete the customer's key (bumping the generation); False when there was none."""

    def close(self) -> None: ...


_SQLITE_DDL = """
CREATE TABLE IF NOT EXISTS subject_keys (customer_id INTEGER PRIMARY KEY, key BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS erased (token TEXT PRIMARY KEY, erased_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value BLOB NOT NULL);
INSERT OR IGNORE INTO meta (name, value) VALUES ('generation', 0);
"""


class SqlitePrivacyStore:
    """The embedded store: one SQLite file in WAL mode (the server reads while ``privacy erase`` writes)."""

    def __init__(self, path: Path, timeout_s: float = 10.0) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        path.touch(mode=0o600, exist_ok=True)  # before SQLite opens it: its journal files take the file's mode
        path.chmod(0o600)
        self.path = path
        self._lock = threading.Lock()  # one connection shared by the server's threads
        self._conn = sqlite3.connect(path, timeout=timeout_s, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # an erasure acknowledged is on disk
        self._conn.execute("PRAGMA secure_delete=ON")  # a shredded key is overwritten, not left in a free page
        with self._lock:
            self._conn.executescript(f"BEGIN IMMEDIATE;{_SQLITE_DDL}COMMIT;")
            self._conn.execute("INSERT OR IGNORE INTO meta (name, value) VALUES ('store_key', ?)", (new_key(),))  # the first one stays
        self._store_key = self.store_key()

    def subject_key(self, customer_id: int) -> bytes:
        token = erasure_token(self._store_key, customer_id)
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")  # the write lock, as ``suppress`` takes it: check and insert see one state
            try:
                if self._conn.execute("SELECT 1 FROM erased WHERE token = ?", (token,)).fetchone() is not None:
                    raise _erased(customer_id)
                self._conn.execute("INSERT OR IGNORE INTO subject_keys (customer_id, key) VALUES (?, ?)", (customer_id, new_key()))
                row = self._conn.execute("SELECT key FROM subject_keys WHERE customer_id = ?", (customer_id,)).fetchone()
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return bytes(row[0])

    def generation(self) -> int:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'generation'").fetchone()
        return int(row[0])

    def store_key(self) -> bytes:
        with self._lock:
            row = self._conn.execute("SELECT value FROM meta WHERE name = 'store_key'").fetchone()
        return bytes(row[0])

    def tokens(self) -> frozenset[str]:
        with self._lock:
            return frozenset(r[0] for r in self._conn.execute("SELECT token FROM erased"))

    def suppress(self, token: str) -> bool:
        return self._change("INSERT OR IGNORE INTO erased (token, erased_at) VALUES (?, ?)", (token, time.time()))

    def shred(self, customer_id: int) -> bool:
        deleted = self._change("DELETE FROM subject_keys WHERE customer_id = ?", (customer_id,))
        with self._lock:
            # the write-ahead log still holds copies of the page with the key: fold it into the file and empty it
            self._conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return deleted

    def _change(self, sql: str, params: tuple[object, ...]) -> bool:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                changed = self._conn.execute(sql, params).rowcount > 0
                self._conn.execute("UPDATE meta SET value = value + 1 WHERE name = 'generation'")
                self._conn.execute("COMMIT")
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
        return changed

    def close(self) -> None:
        with self._lock:
            self._conn.close()


_PG_DDL = """
CREATE TABLE IF NOT EXISTS churnops_subject_keys (customer_id bigint PRIMARY KEY, key bytea NOT NULL);
CREATE TABLE IF NOT EXISTS churnops_erased_subjects (token text PRIMARY KEY, erased_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE IF NOT EXISTS churnops_privacy_meta (name text PRIMARY KEY, generation bigint NOT NULL DEFAULT 0, key bytea);
"""


class PostgresPrivacyStore:
    """The cluster store: three tables, shared by every replica and by ``privacy erase``."""

    def __init__(self, dsn: str) -> None:
        self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        self._lock = threading.Lock()
        with self._lock, self._conn.transaction():
            self._conn.execute("SELECT pg_advisory_xact_lock(hashtext('churnops_privacy_ddl'))")  # replicas starting together
            self._conn.execute(_PG_DDL)
            self._conn.execute(
                "INSERT INTO churnops_privacy_meta (name, generation, key) VALUES ('store', 0, %s) ON CONFLICT (name) DO NOTHING",
                (new_key(),),
            )
        self._store_key = self.store_key()

    def subject_key(self, customer_id: int) -> bytes:
        token = erasure_token(self._store_key, customer_id)
        with self._lock, self._conn.transaction():
            # ``suppress`` updates this row in its transaction: holding it shared means either the suppression committed
            # before the check below (which then sees it) or it waits until this key exists, and its shred deletes it
            self._conn.execute("SELECT 1 FROM churnops_privacy_meta WHERE name = 'store' FOR SHARE")
            if self._conn.execute("SELECT 1 FROM churnops_erased_subjects WHERE token = %s", (token,)).fetchone() is not None:
                raise _erased(customer_id)
            self._conn.execute(
                "INSERT INTO churnops_subject_keys (customer_id, key) VALUES (%s, %s) ON CONFLICT (customer_id) DO NOTHING",
                (customer_id, new_key()),
            )
            row = self._conn.execute("SELECT key FROM churnops_subject_keys WHERE customer_id = %s", (customer_id,)).fetchone()
        assert row is not None
        return bytes(row[0])

    def generation(self) -> int:
        return int(self._meta("generation"))

    def store_key(self) -> bytes:
        return bytes(self._meta("key"))

    def _meta(self, column: str) -> Any:
        with self._lock:
            row = self._conn.execute(f"SELECT {column} FROM churnops_privacy_meta WHERE name = 'store'").fetchone()
        assert row is not None
        return row[0]

    def tokens(self) -> frozenset[str]:
        with self._lock:
            return frozenset(r[0] for r in self._conn.execute("SELECT token FROM churnops_erased_subjects"))

    def suppress(self, token: str) -> bool:
        return self._change("INSERT INTO churnops_erased_subjects (token) VALUES (%s) ON CONFLICT (token) DO NOTHING", (token,))

    def shred(self, customer_id: int) -> bool:
        deleted = self._change("DELETE FROM churnops_subject_keys WHERE customer_id = %s", (customer_id,))
        with self._lock:
            self._conn.execute("VACUUM churnops_subject_keys")  # frees the dead row's space for reuse now, not at autovacuum's leisure
        return deleted

    def _change(self, sql: str, params: tuple[object, ...]) -> bool:
        with self._lock, self._conn.transaction():
            changed = self._conn.execute(sql, params).rowcount > 0
            self._conn.execute("UPDATE churnops_privacy_meta SET generation = generation + 1 WHERE name = 'store'")
        return changed

    def close(self) -> None:
        with self._lock:
            self._conn.close()


def _erased(customer_id: int) -> ErasedCustomerError:
    return ErasedCustomerError(f"customer {customer_id} was erased; no audit key is created for them again")


def open_store(data_dir: Path, dsn: str | None = None, path: Path | None = None) -> PrivacyStore:
    """PostgreSQL when a DSN is given (cluster), else ``<data-dir>/privacy/privacy.db`` (or ``path``)."""
    if dsn:
        return PostgresPrivacyStore(dsn)
    return SqlitePrivacyStore(path or data_dir / "privacy" / DEFAULT_FILE)
