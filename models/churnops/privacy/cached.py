"""The server's views of the privacy store: cached, and fresh within a second of an erasure elsewhere.

``Pseudonyms`` gives the audit trail a subject per customer from an
in-memory key cache (no I/O on the request path once a customer is known; a
new customer costs one insert). ``Suppression`` tells the prediction log's
writer which rows belong to erased customers. Both look at the store's
generation at most every ``every_s`` seconds; when it moved (an erasure by
``churnops privacy erase``, in another process) they drop what they hold.
``Pseudonyms`` also knows the suppression list: an erased customer gets no
subject (the server refuses the request before it is scored), and the store
itself refuses to create their key, so a request racing the erasure cannot
make them linkable again.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from churnops.privacy.keys import ErasedCustomerError, erased_among, refresh_due, subject
from churnops.privacy.store import PrivacyStore

REFRESH_S = 1.0


class _Generation:
    """Polls the store's generation at most every ``every_s``; says when it changed since the last poll."""

    def __init__(self, store: PrivacyStore, every_s: float, clock: Callable[[], float]) -> None:
        self.store = store
        self.every_s = every_s
        self.clock = clock
        self._checked: float | None = None
        self._seen: int | None = None

    def moved(self) -> bool:
        now = self.clock()
        if not refresh_due(self._checked, now, self.every_s):
            return False
        self._checked = now
        current = self.store.generation()
        moved = current != self._seen
        self._seen = current
        return moved


class Pseudonyms:
    """Subjects for audit records (thread-safe; one per process)."""

    def __init__(self, store: PrivacyStore, every_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._generation = _Generation(store, every_s, clock)
        self._store_key = store.store_key()
        self._keys: dict[int, bytes] = {}
        self._tokens: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def _refresh(self) -> frozenset[str]:
        """The suppression list, after dropping every cached key if an erasure happened since the last look (lock held)."""
        if self._generation.moved():
            self._keys.clear()  # keys may have been shredded: never reuse one
            self._tokens = self.store.tokens()
        return self._tokens

    def erased(self, customer_ids: Iterable[int]) -> set[int]:
        """The ids among ``customer_ids`` that belong to erased customers (the request path refuses them)."""
        with self._lock:
            tokens = self._refresh()
        return erased_among(customer_ids, tokens, self._store_key)

    def subject(self, customer_id: int | None) -> str | None:
        """The customer's pseudonym; None without a customer id (features sent: the record names no one).

        ``ErasedCustomerError`` for an erased customer: a pseudonym would need a new key, which links them again.
        """
        if customer_id is None:
            return None
        with self._lock:
            tokens = self._refresh()
            if erased_among([customer_id], tokens, self._store_key):
                raise ErasedCustomerError(f"customer {customer_id} was erased")
            key = self._keys.get(customer_id)
            if key is None:
                key = self._keys[customer_id] = self.store.subject_key(customer_id)
        return subject(key, customer_id)


class Suppression:
    """The suppression list as the prediction log's writer sees it (``churnops.monitoring.predlog`` ``Suppressor``)."""

    def __init__(self, store: PrivacyStore, every_s: float = REFRESH_S, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self._generation = _Generation(store, every_s, clock)
        self._key = store.store_key()
        self._tokens: frozenset[str] = frozenset()
        self._lock = threading.Lock()

    def erased(self, customer_ids: Iterable[int]) -> set[int]:
        """The ids among ``customer_ids`` that belong to erased customers."""
        with self._lock:
            if self._generation.moved():
                self._tokens = self.store.tokens()
            tokens = self._tokens
        return erased_among(customer_ids, tokens, self._key)
