"""The erasure journal and the data directory's erasure lock: what lets a backup and a restore honour erasures.

- The *erasure lock* (``<data-dir>/.erasure.lock``) is held by an erasure from
  the suppression through the receipt, and by a backup for its whole capture,
  so a snapshot holds an erasure either entirely or not at all (never
  "suppressed but not yet scrubbed, and no receipt").
- The *journal* lives outside the data directory (by default beside the audit
  key directory, which a machine keeps across restores) and lists the erasure
  token of every erased customer, one JSON line each. A token is a keyed hash
  under the privacy store's key, never the id, so the journal names nobody to
  whoever lacks that store. A restore of an older snapshot reads it back and
  suppresses (and shreds) every customer erased since.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from churnops.errors import IntegrityError

LOCK_NAME = ".erasure.lock"
JOURNAL_ENV = "CHURNOPS_ERASURE_JOURNAL"
JOURNAL_NAME = "erasure-journal.jsonl"


def default_journal(env: Mapping[str, str], key_dir: Path) -> Path:
    """``$CHURNOPS_ERASURE_JOURNAL``, else ``erasure-journal.jsonl`` beside (not in) the audit key directory."""
    given = env.get(JOURNAL_ENV)
    return Path(given) if given else key_dir.parent / JOURNAL_NAME


@contextlib.contextmanager
def erasure_lock(data_dir: Path) -> Iterator[None]:
    """The data directory's erasure lock, waited for as long as it takes (a backup holds it for its capture)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / LOCK_NAME).open("a") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def record(journal: Path, token: str, at: float | None = None) -> None:
    """Append ``token`` to the journal (fsynced: the erasure is not done until a restore can find it)."""
    journal.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    line = json.dumps({"token": token, "at": time.time() if at is None else at}, sort_keys=True) + "\n"
    fd = os.open(journal, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def tokens(journal: Path) -> frozenset[str]:
    """Every token in the journal (none when it does not exist); a torn last line is ignored, any other bad line refused."""
    if not journal.exists():
        return frozenset()
    out: set[str] = set()
    lines = journal.read_bytes().split(b"\n")
    for n, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            token = json.loads(raw)["token"]
            if not isinstance(token, str) or len(token) != 64:
                raise ValueError(token)
        except (ValueError, KeyError, TypeError):
            if n == len(lines):  # an append cut short by a crash
                continue
            raise IntegrityError(f"{journal}: line {n} is not an erasure journal entry") from None
        out.add(token)
    return frozenset(out)
