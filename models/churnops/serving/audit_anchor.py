"""Checkpoints of a file audit trail in PostgreSQL, so a rollback to an earlier signed state shows.

Signatures stop anyone without the key from forging records or a head, but
someone who can write the log directory can still cut the log back to the end
of an earlier batch and copy that batch's signature into the head: the result
is a genuine, signed, shorter trail. A checkpoint kept where that person cannot
write (a table ``churnops_audit_checkpoints``) remembers how far the trail had
already reached; ``churnops audit verify --anchor-dsn`` requires the log to
reach the newest checkpoint with the same hash.

The writer only hands over its synced head (a memory store); a background
thread writes at most one checkpoint per interval, so a slow or absent
database never delays a request, and costs at most one interval of coverage.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

import psycopg

from churnops.serving.audit import Head

log = logging.getLogger(__name__)

ANCHOR_DDL = """
CREATE TABLE IF NOT EXISTS churnops_audit_checkpoints (
    log text NOT NULL,
    seq bigint NOT NULL,
    hash text NOT NULL,
    kid text NOT NULL,
    sig text NOT NULL,
    at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (log, seq)
);
"""


class Anchor:
    """Writes the newest signed head of the log ``name`` to PostgreSQL every ``interval_s`` (and on close)."""

    def __init__(self, dsn: str, name: str, interval_s: float = 10.0) -> None:
        self.name = name
        self.interval_s = interval_s
        self._conn = psycopg.connect(dsn, autocommit=True, connect_timeout=5)
        self._conn.execute(ANCHOR_DDL)
        self._latest: Head | None = None
        self._written: Head | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="audit-anchor", daemon=True)
        self._thread.start()

    def offer(self, head: Head) -> None:
        """Called by the writer with each head that reached the disk (a reference store: never waits)."""
        self._latest = head

    def flush(self) -> None:
        head = self._latest
        if head is None or head == self._written or head.sig is None or head.kid is None:
            return
        self._conn.execute(
            "INSERT INTO churnops_audit_checkpoints (log, seq, hash, kid, sig) VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
            (self.name, head.seq, head.hash, head.kid, head.sig),
        )
        self._written = head

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.flush()
            except psycopg.Error as e:  # the trail itself is intact; only the rollback check lags
                log.warning("audit checkpoint of %s not written: %s", self.name, e)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.flush()
        finally:
            self._conn.close()


@dataclass(frozen=True)
class Checkpoint:
    head: Head
    at: dt.datetime


def newest_checkpoint(dsn: str, name: str) -> Checkpoint | None:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        conn.execute(ANCHOR_DDL)
        row = conn.execute(
            "SELECT seq, hash, kid, sig, at FROM churnops_audit_checkpoints WHERE log = %s ORDER BY seq DESC LIMIT 1", (name,)
        ).fetchone()
    return None if row is None else Checkpoint(Head(int(row[0]), str(row[1]), str(row[2]), str(row[3])), row[4])
