"""Erasing a customer everywhere the platform keeps them (GDPR Art. 17), with a receipt.

The order matters, and each step is idempotent, so the whole pass runs twice:
1. suppress: the customer's erasure token joins the suppression list, so
   every prediction log writer (the running servers, batch jobs) drops their
   rows at its next flush, including rows still buffered in memory;
2. the online store loses the customer's features, so the servers answer 404
   for them from now on and stop producing new records;
3. the subject key is deleted (crypto-shredding): the audit records that
   name the customer's pseudonym can no longer be linked to them, while the
   hash chain stays intact;
4. the prediction log, the cluster's offline feature tables, and the files
   under the data directory (raw tables, the offline store's Parquet, labels,
   batch scores and their inputs, reports, logs; ``churnops.privacy.files``);
5. after ``settle_s`` (a server notices the suppression list within a second;
   a write it began before that lands within the write's own duration) the
   same pass runs again, removing what such an in-flight write or a request
   scored in between left behind.

The whole erasure, from the suppression through the receipt, holds the data
directory's erasure lock (``churnops.privacy.journal``), which a backup holds
for its capture: a snapshot is entirely before or after an erasure. Right
after the suppression, the erasure token is appended to the erasure journal
kept outside the data directory (``ErasureSettings.journal``), which a
restore of an older snapshot re-applies.

The receipt (``receipt``) is appended to its own hash chain. It names the
erasure by a random receipt id only, never by the id nor the erasure token
(the token and the store key together let anyone test guessed ids, so a
receipt that carried it would name the customer to whoever also reads the
privacy store), and counts what each store lost. The I/O edges (stores, the receipt sink) are
built by the caller: this module sits below serving and decides only the
order and what the receipt says.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from churnops.errors import InvalidInputError
from churnops.monitoring.predlog.records import LogStore
from churnops.privacy import journal as erasure_journal
from churnops.privacy.files import FileChange, mentions, scrub_tree
from churnops.privacy.keys import customer_id_of, erasure_token
from churnops.privacy.store import PrivacyStore

RECEIPTS_FILE = "erasures.jsonl"
SETTLE_S = 5.0
# Kept out of the file pass: each has its own eraser (prediction log, online store) or must stay as it is:
# audit chains (records name pseudonyms; editing them would break the chain), the privacy store itself,
# MLflow's immutable lineage (see the README), and secrets.
NOT_SCRUBBED = frozenset({"predictions", "audit", "privacy", "feast", "mlflow", "secrets"})


class ReceiptSink(Protocol):
    """A hash-chained log (``churnops.serving.audit.FileAuditSink``): appends records and returns the new head."""

    def append(self, entries: list[dict[str, Any]]) -> Any: ...


@dataclass(frozen=True)
class ErasureSettings:
    data_dir: Path
    audit_dir: Path
    labels_dir: Path | None = None  # labels kept outside the data directory
    settle_s: float = SETTLE_S  # 0: one pass (only when no server or batch job is running)
    skip: frozenset[str] = NOT_SCRUBBED
    journal: Path | None = None  # the erasure journal outside the data directory (None: not kept)


@dataclass(frozen=True)
class ErasureTargets:
    """The stores to erase from (built at the entry point for the embedded or the cluster mode)."""

    privacy: PrivacyStore
    log_store: LogStore
    online: Callable[[int], int] | None = None  # deletes the customer's online features; returns rows or keys deleted
    offline: Callable[[int], int] | None = None  # the cluster's offline feature tables


@dataclass
class Tally:
    """What the passes removed, per store, and per top-level folder of the data directory for files."""

    stores: dict[str, int] = field(default_factory=dict)
    files: dict[str, int] = field(default_factory=dict)
    changed: dict[str, str] = field(default_factory=dict)  # file -> action

    def add(self, store: str, n: int) -> None:
        self.stores[store] = self.stores.get(store, 0) + n

    def add_files(self, root: Path, changes: Iterable[FileChange], name: str | None = None) -> None:
        for c in changes:
            rel = c.path.relative_to(root)
            group = name or (rel.parts[0] if len(rel.parts) > 1 else ".")
            self.files[group] = self.files.get(group, 0) + c.removed
            self.changed[str(rel if name is None else Path(name) / rel)] = c.action


def receipt(
    receipt_id: str,
    tally: Tally,
    passes: int,
    newly_suppressed: bool,
    legacy_audit_records: int,
    operator: str,
    at: float,
    customer_id: int,
) -> dict[str, Any]:
    """The erasure's audit record: what was erased where, by whom and when; subject-free (file names naming the id are withheld)."""
    files = {(path if not mentions(path, customer_id) else "(a file named after the customer)"): a for path, a in tally.changed.items()}
    return {
        "type": "erasure",
        "receipt_id": receipt_id,
        "time": at,
        "operator": operator,
        "passes": passes,
        "suppressed": "added" if newly_suppressed else "already listed",
        "erased": {**dict(sorted(tally.stores.items())), "files": dict(sorted(tally.files.items()))},
        "files_changed": dict(sorted(files.items())),
        "remaining": {"legacy_audit_records_with_id": legacy_audit_records},
    }


def erase_pass(customer_id: int, settings: ErasureSettings, targets: ErasureTargets, tally: Tally) -> None:
    """One pass over every store, in the order of the module docstring (idempotent)."""
    if targets.online is not None:
        tally.add("online_store", targets.online(customer_id))
    tally.add("subject_keys", int(targets.privacy.shred(customer_id)))
    tally.add("prediction_log", targets.log_store.erase_customer(customer_id))
    if targets.offline is not None:
        tally.add("offline_store", targets.offline(customer_id))
    tally.add_files(settings.data_dir, scrub_tree(settings.data_dir, customer_id, settings.skip))
    labels = settings.labels_dir
    if labels is not None and not labels.resolve().is_relative_to(settings.data_dir.resolve()):
        tally.add_files(labels, scrub_tree(labels, customer_id), name="labels")


def legacy_audit_records(audit_dir: Path, customer_id: int) -> int:
    """Audit records that still carry the id in clear (written before subjects were pseudonymous); they cannot be edited."""
    needle = re.compile(rb'"customer_id":\s*%d[,}]' % customer_id)
    count = 0
    for path in sorted(audit_dir.glob("*.jsonl")) if audit_dir.exists() else []:
        with path.open("rb") as f:
            count += sum(1 for line in f if needle.search(line))
    return count


def erase_customer(
    customer_id: int,
    settings: ErasureSettings,
    targets: ErasureTargets,
    receipts: ReceiptSink,
    operator: str,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.time,
) -> Mapping[str, Any]:
    """Erase the customer (see the module docstring) and append the receipt; returns the receipt."""
    cid = customer_id_of(customer_id)
    if settings.settle_s < 0:
        raise InvalidInputError(f"must not be negative, got {settings.settle_s}", field="--settle-s")
    token = erasure_token(targets.privacy.store_key(), cid)
    with erasure_journal.erasure_lock(settings.data_dir) if settings.data_dir.is_dir() else contextlib.nullcontext():
        newly = targets.privacy.suppress(token)
        if settings.journal is not None:
            erasure_journal.record(settings.journal, token, clock())
        tally = Tally()
        erase_pass(cid, settings, targets, tally)
        passes = 1
        if settings.settle_s > 0:
            sleep(settings.settle_s)
            erase_pass(cid, settings, targets, tally)
            passes = 2
        record = receipt(uuid.uuid4().hex, tally, passes, newly, legacy_audit_records(settings.audit_dir, cid), operator, clock(), cid)
        receipts.append([record])
    return record
