"""The routing table of a served endpoint: which version is stable, which is the canary, and its share of traffic.

The embedded rollout runner decides; the predictor follows. The two are
separate processes that share nothing but this small JSON file, written
atomically by the runner (a temporary file renamed over the old one, so a
reader sees the old table or the new one, never half of one) and re-read by
the server when its modification time changes. A table that cannot be read
keeps the server on the last good one: a bad write must not take the endpoint
down.

Which version answers a request is decided per request (``choose``): by a
uniform draw against the canary's weight, or, with ``split: customer``, by a
hash of the customer id so that a customer keeps the same version for a whole
step and stays on the canary as its weight grows. The draw is the default
because the canary analysis compares the two versions' score histograms,
which assumes they see the same population; a hash gives the canary a fixed
subset of customers, which differs from the rest by chance when there are few.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from churnops.errors import InvalidInputError
from churnops.files import replace_text

log = logging.getLogger(__name__)

Split = Literal["request", "customer"]
SPLITS: tuple[Split, ...] = ("request", "customer")
FORMAT = "churnops.routing/v1"
RECHECK_S = 0.5  # the server looks at the file's modification time at most this often
DEFAULT_ROUTE = "churn"


def default_path(data_dir: Path, route: str) -> Path:
    """Where the runner of deployment ``route`` writes its table and where ``churnops serve --route`` reads it."""
    return data_dir / "rollout" / route / "routing.json"


@dataclass(frozen=True)
class RoutingTable:
    """Stable and canary versions of one endpoint; ``weight`` is the canary's percent of requests."""

    stable: str | None = None
    canary: str | None = None
    weight: int = 0
    split: Split = "request"
    updated: float = 0.0  # when the runner wrote it (seconds since the epoch), for people

    def __post_init__(self) -> None:
        for name in ("stable", "canary"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.isdigit()):
                raise InvalidInputError(f"must be a registered version number such as '3', got {value!r}", field=f"routing.{name}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or not 0 <= self.weight <= 100:
            raise InvalidInputError(f"must be an integer percentage in [0, 100], got {self.weight!r}", field="routing.weight")
        if self.canary is None and self.weight != 0:
            raise InvalidInputError(f"is {self.weight} but no canary is named", field="routing.weight")
        if self.canary is not None and self.canary == self.stable:
            raise InvalidInputError(f"version {self.canary} cannot be both stable and canary", field="routing.canary")
        if self.split not in SPLITS:
            raise InvalidInputError(f"must be one of {', '.join(SPLITS)}, got {self.split!r}", field="routing.split")
        if not math.isfinite(self.updated):
            raise InvalidInputError(f"must be a finite time, got {self.updated!r}", field="routing.updated")

    @property
    def versions(self) -> tuple[str, ...]:
        """The versions the server must have loaded: stable first."""
        return tuple(v for v in (self.stable, self.canary) if v is not None)

    def same_routes(self, other: RoutingTable) -> bool:
        """Equal apart from the time it was written."""
        return (self.stable, self.canary, self.weight, self.split) == (other.stable, other.canary, other.weight, other.split)

    def to_doc(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "stable": self.stable,
            "canary": self.canary,
            "weight": self.weight,
            "split": self.split,
            "updated": self.updated,
        }

    @classmethod
    def from_doc(cls, doc: Any) -> RoutingTable:
        if not isinstance(doc, Mapping):
            raise InvalidInputError("must be a JSON object", field="routing")
        if doc.get("format") != FORMAT:
            raise InvalidInputError(f"unknown format {doc.get('format')!r}, expected {FORMAT!r}", field="routing.format")
        unknown = set(doc) - {"format", "stable", "canary", "weight", "split", "updated"}
        if unknown:
            raise InvalidInputError(f"unknown key(s) {sorted(unknown)}", field="routing")
        updated = doc.get("updated", 0.0)
        if isinstance(updated, bool) or not isinstance(updated, int | float):
            raise InvalidInputError(f"must be a number, got {updated!r}", field="routing.updated")
        return cls(doc.get("stable"), doc.get("canary"), doc.get("weight", 0), doc.get("split", "request"), float(updated))


def write_table(path: Path, table: RoutingTable) -> None:
    """Replace the table atomically (write, fsync, rename): a reader never sees a partial file."""
    replace_text(path, json.dumps(table.to_doc(), indent=1) + "\n")


def read_table(path: Path) -> RoutingTable:
    """The table in ``path``; a missing file is an empty table (nothing to serve yet)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return RoutingTable()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise InvalidInputError(f"not JSON ({e})", field=str(path)) from None
    return RoutingTable.from_doc(doc)


class TableWatcher:
    """The current table of a file, re-read when its modification time or size changes (at most every ``recheck_s``)."""

    def __init__(self, path: Path, recheck_s: float = RECHECK_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.recheck_s = recheck_s
        self.clock = clock
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._checked: float | None = None
        self.table = RoutingTable()
        self.error: str | None = None  # why the file's latest content was refused (the last good table stays)

    def _file_stamp(self) -> tuple[int, int] | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        return st.st_mtime_ns, st.st_size

    def current(self, force: bool = False) -> RoutingTable:
        """The table, refreshed if the file changed since the last look."""
        now = self.clock()
        with self._lock:
            if not force and self._checked is not None and now - self._checked < self.recheck_s:
                return self.table
            self._checked = now
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return self.table
            try:
                table = read_table(self.path)
            except (InvalidInputError, OSError) as e:
                if str(e) != self.error:
                    log.error("routing table %s refused, keeping the last good one: %s", self.path, e)
                self.error = str(e)
                return self.table
            self._stamp, self.table, self.error = stamp, table, None
            return table


def customer_bucket(customer_id: int) -> float:
    """A customer's fixed place in [0, 100): the same on every request and in every process."""
    digest = hashlib.blake2b(str(customer_id).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % 10_000 / 100.0


def choose(table: RoutingTable, ready: Collection[str], customer_id: int | None, draw: float) -> str | None:
    """The version that answers a request, or None when no version named by the table is ready.

    ``draw`` is uniform in [0, 100); with ``split: customer`` a request with a
    customer id uses the customer's bucket instead. A canary that is not ready
    yet gets nothing (everything goes to the stable version); a stable version
    that is not ready leaves the canary serving only at 100 %.
    """
    canary_ok = table.canary is not None and table.canary in ready and table.weight > 0
    point = customer_bucket(customer_id) if table.split == "customer" and customer_id is not None else draw
    if canary_ok and point < table.weight:
        return table.canary
    if table.stable is not None and table.stable in ready:
        return table.stable
    if canary_ok and table.weight == 100:
        return table.canary
    return None
