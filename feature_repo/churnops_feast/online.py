"""Low-latency online reads of one FeatureService for serving.

``FeatureStore.get_online_features`` resolves the registry, builds request and
response objects and reads each feature view separately on every call; at
one customer per request that overhead dominates (several ms). These readers
resolve the service once, then fetch a customer's features in one round trip
(one ``HMGET`` on Redis, one query per view on SQLite) with Feast's own key
encoding and value protos, so they return exactly what Feast returns
(tests compare the two).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import deserialize_entity_key, serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from churnops.data.schema import ENTITY
from churnops.errors import InvalidInputError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 0.05  # the predictor's --store-timeout-ms default
MAX_BACKOFF_S = 5.0  # longest wait between reconnection attempts to a broken SQLite store
PROGRESS_STEPS = 1000  # SQLite VM steps between deadline checks (microseconds apart)
# Allowance per id beyond the first: a read of n ids gets timeout_s + (n - 1) * PER_ID_S. Measured on a 2-core machine
# running a test suite (load 6), reading all 116 features takes 0.4-1.3 ms per id (decoding dominates); 3 ms keeps a
# 1,000-id request (the most one request may hold, about 3 s) within its budget, while a one-id read keeps timeout_s.
PER_ID_S = 0.003
DERIVED_PREFIX = b"churnops:derived:"  # keys ChurnOps writes next to Feast's (Feast's own keys never start with it)


class ReadOverBudget(sqlite3.OperationalError):
    """A read of several ids interrupted by its own deadline: that request was too large for the moment, the store is not
    unhealthy (a lock past the budget or a broken file raise their own errors). Callers fail that request alone."""


@dataclass(frozen=True)
class ServiceLayout:
    """Where a service's features live: project, and (feature view, feature) pairs in order."""

    project: str
    features: tuple[tuple[str, str], ...]
    key_version: int

    @property
    def names(self) -> list[str]:
        return [f for _, f in self.features]

    @property
    def views(self) -> list[str]:
        return list(dict.fromkeys(v for v, _ in self.features))

    def subset(self, names: list[str]) -> ServiceLayout:
        """The same service restricted to ``names`` (in that order): a model needs fewer features than its service."""
        where = {f: (v, f) for v, f in self.features}
        unknown = [n for n in names if n not in where]
        if unknown:
            raise InvalidInputError(f"features {unknown[:5]} are not in the service")
        return ServiceLayout(self.project, tuple(where[n] for n in names), self.key_version)


def service_layout(store: FeatureStore, service: str) -> ServiceLayout:
    fs = store.get_feature_service(service)
    pairs = tuple((p.name, f.name) for p in fs.feature_view_projections for f in p.features)
    return ServiceLayout(project=store.project, features=pairs, key_version=store.config.entity_key_serialization_version)


def _entity_key(customer_id: int) -> EntityKey:
    return EntityKey(join_keys=[ENTITY], entity_values=[Value(int64_val=customer_id)])


def _decode(raw: bytes | None) -> Any:
    if raw is None:
        return None
    value = Value.FromString(raw)
    kind = value.WhichOneof("val")
    return None if kind is None or kind == "null_val" else getattr(value, kind)


class ValueCache:
    """Decoded values by their stored bytes: a customer's features repeat across customers (flags, counts, categories),
    and parsing a protobuf per feature is most of a read's CPU. Scalars only (immutable, safe to share between rows);
    bounded: emptied when full, so a store of unique floats costs at most ``size`` entries."""

    def __init__(self, size: int = 65_536) -> None:
        self.size = size
        self._values: dict[bytes, Any] = {}

    def decode(self, raw: bytes | None) -> Any:
        if raw is None:
            return None
        try:
            return self._values[raw]
        except KeyError:
            pass
        value = _decode(raw)
        if isinstance(value, bool | int | float | str):
            if len(self._values) >= self.size:
                self._values = {}  # a new dict, not clear(): another thread may be reading the old one
            self._values[raw] = value
        return value

    def __len__(self) -> int:
        return len(self._values)


class FeatureReader(Protocol):
    layout: ServiceLayout

    def read(self, customer_id: int) -> dict[str, Any] | None:
        """All features of one customer, or None when the store has none of them."""
        ...

    def read_many(self, customer_ids: list[int]) -> list[dict[str, Any] | None]:
        """``read`` for several customers, in order, in as few round trips as the store allows."""
        ...


class RedisFeatureReader:
    """One HMGET per customer. Set socket timeouts on ``client``: it is the request's budget."""

    def __init__(self, client: redis.Redis, layout: ServiceLayout) -> None:
        self.client = client
        self.layout = layout
        self._fields = [_mmh3(f"{view}:{name}") for view, name in layout.features]
        self._values = ValueCache()

    def read(self, customer_id: int) -> dict[str, Any] | None:
        # redis-py's stubs say str, but binary keys and fields are what Feast writes.
        raw: list[bytes | None] = self.client.hmget(self._key(customer_id), self._fields)  # type: ignore[arg-type, assignment]
        return self._row(raw)

    def read_many(self, customer_ids: list[int]) -> list[dict[str, Any] | None]:
        if len(customer_ids) == 1:
            return [self.read(customer_ids[0])]
        pipe = self.client.pipeline(transaction=False)
        for cid in customer_ids:
            pipe.hmget(self._key(cid), self._fields)  # type: ignore[arg-type]
        return [self._row(raw) for raw in pipe.execute()]

    def _key(self, customer_id: int) -> bytes:
        return _redis_key(self.layout.project, _entity_key(customer_id), entity_key_serialization_version=self.layout.key_version)

    def _row(self, raw: list[bytes | None]) -> dict[str, Any] | None:
        if all(r is None for r in raw):
            return None
        decode = self._values.decode
        return {name: decode(r) for name, r in zip(self.layout.names, raw, strict=True)}

    # For data kept next to the features (precomputed reasons): the same key, fields and decoding as ``read``.
    key = _key
    row = _row

    @property
    def fields(self) -> list[bytes]:
        return self._fields

    def customers(self, batch: int = 1000) -> list[int]:
        """Every customer with features in the store (one SCAN over the project's keys)."""
        suffix = self.layout.project.encode()
        ids = []
        for key in self.client.scan_iter(match=b"*" + suffix, count=batch):
            if not key.startswith(DERIVED_PREFIX):
                entity = deserialize_entity_key(key[: -len(suffix)], entity_key_serialization_version=self.layout.key_version)
                ids.append(int(entity.entity_values[0].int64_val))
        return ids


def derived_key(feature_key: bytes) -> bytes:
    """The hash of data derived from one customer's online features (precomputed reasons), next to Feast's own hash;
    erasing the customer deletes both."""
    return DERIVED_PREFIX + feature_key


class SqliteFeatureReader:
    """One indexed SELECT per feature view on the embedded online store, bounded by ``budget_s`` per read.

    A one-id read shares one connection and gets ``timeout_s``; a read of several ids opens its own connection and
    gets ``per_id_s`` more per further id, so a large request neither overruns a budget sized for one id nor keeps
    other requests from the shared connection.

    SQLite's own busy timeout (5 s) would let a writer's lock stall every request: here a read waits for the
    connection, for a lock and for its queries within one budget, and fails with ``sqlite3.OperationalError``
    past it. A failure a new connection may cure (tables gone, a damaged or missing file) drops the connection;
    the next read reconnects, at most every ``backoff_s`` (doubling up to ``MAX_BACKOFF_S``) while it keeps
    failing. The file's identity is compared every ``check_every_s``, so a store replaced by a rename (as a
    materialization does) is picked up instead of serving the old file's rows forever.
    """

    def __init__(
        self,
        path: str,
        layout: ServiceLayout,
        tables: dict[str, str],
        timeout_s: float = DEFAULT_TIMEOUT_S,
        per_id_s: float = PER_ID_S,
        check_every_s: float = 1.0,
        backoff_s: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.path = path
        self.layout = layout
        self.timeout_s = timeout_s
        self.per_id_s = per_id_s
        self.check_every_s = check_every_s
        self.clock = clock
        union = " UNION ALL ".join(f'SELECT feature_name, value FROM "{tables[view]}" WHERE entity_key = :key' for view in layout.views)
        # One row per customer: each row fetched gives up and retakes the GIL, which costs up to a switch interval (5 ms)
        # while another thread computes, so a read of a hundred rows could miss its budget in a busy process.
        self._query = f"SELECT json_group_array(json_array(feature_name, hex(value))) FROM ({union})"
        self._wanted = set(layout.names)
        self._lock = threading.Lock()  # one connection, one reader at a time (one-id reads take well under a millisecond)
        self._deadline = float("inf")  # of the read in progress; the progress handler interrupts a query past it
        self._min_backoff_s = self._backoff_s = backoff_s
        self._retry_at = float("-inf")
        self._conn: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._connect()  # a store that cannot be opened at start is a configuration error: raise now

    def read(self, customer_id: int) -> dict[str, Any] | None:
        return self.read_many([customer_id])[0]

    def budget_s(self, ids: int) -> float:
        """The time a read of ``ids`` customers may take: the store budget plus an allowance per further id."""
        return self.timeout_s + max(0, ids - 1) * self.per_id_s

    def read_many(self, customer_ids: list[int]) -> list[dict[str, Any] | None]:
        if len(customer_ids) > 1:
            return self._read_apart(customer_ids)
        deadline = self.clock() + self.timeout_s
        if not self._lock.acquire(timeout=self.timeout_s):
            raise sqlite3.OperationalError(f"online store busy: no read slot within {self.timeout_s * 1000:.0f} ms")
        try:
            conn = self._connection()
            remaining_ms = max(1, int((deadline - self.clock()) * 1000))
            conn.execute(f"PRAGMA busy_timeout = {remaining_ms}")  # SQLite waits this long for a writer's lock
            self._deadline = deadline
            try:
                rows = [self._read(conn, cid) for cid in customer_ids]
            except sqlite3.Error as e:
                if _reconnectable(e):
                    self._drop(f"{type(e).__name__}: {e}")
                    self._back_off()
                raise
            finally:
                self._deadline = float("inf")
            self._backoff_s = self._min_backoff_s
            return rows
        finally:
            self._lock.release()

    def _read_apart(self, customer_ids: list[int]) -> list[dict[str, Any] | None]:
        """A read of several ids on a connection of its own, within ``budget_s``: however long it takes, it never holds
        the shared connection that one-id reads wait for (a 1,000-id read takes hundreds of milliseconds)."""
        budget = self.budget_s(len(customer_ids))
        deadline = self.clock() + budget
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=budget)
        try:
            conn.execute(f"PRAGMA busy_timeout = {max(1, int(budget * 1000))}")
            conn.set_progress_handler(lambda: self.clock() > deadline, PROGRESS_STEPS)
            try:
                return [self._read(conn, cid) for cid in customer_ids]
            except sqlite3.OperationalError as e:
                if getattr(e, "sqlite_errorname", "") == "SQLITE_INTERRUPT":
                    raise ReadOverBudget(f"a read of {len(customer_ids)} ids ran past its {budget * 1000:.0f} ms budget") from e
                raise
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _read(self, conn: sqlite3.Connection, customer_id: int) -> dict[str, Any] | None:
        key = serialize_entity_key(_entity_key(customer_id), entity_key_serialization_version=self.layout.key_version)
        found: dict[str, Any] = {}
        (packed,) = conn.execute(self._query, {"key": key}).fetchone()
        for name, value in json.loads(packed):
            if name in self._wanted:
                found[name] = _decode(bytes.fromhex(value) if value else None)
        if not found:
            return None
        return {name: found.get(name) for name in self.layout.names}

    def _connection(self) -> sqlite3.Connection:
        """The open connection; reconnects when the file was replaced or after a failure (once its backoff passed)."""
        now = self.clock()
        if self._conn is not None and now - self._checked >= self.check_every_s:
            self._checked = now
            identity = _identity(self.path)
            if identity != self._identity:
                self._drop(f"{self.path} was replaced" if identity is not None else f"{self.path} is gone")
                self._retry_at = now  # a replaced file is worth opening at once
        if self._conn is None:
            if now < self._retry_at:
                raise sqlite3.OperationalError(f"online store unavailable; reconnecting in {self._retry_at - now:.2f} s")
            try:
                self._connect()
            except sqlite3.Error:
                self._back_off()
                raise
            log.info("online store %s reconnected", self.path)
        assert self._conn is not None
        return self._conn

    def _connect(self) -> None:
        # read-only: Feast writes through its own connection
        conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, check_same_thread=False, timeout=self.timeout_s)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # opens the file now: a bad one fails here
        except sqlite3.Error:
            conn.close()
            raise
        conn.set_progress_handler(self._past_deadline, PROGRESS_STEPS)
        self._conn, self._identity, self._checked = conn, _identity(self.path), self.clock()

    def _back_off(self) -> None:
        """The next reconnection waits; each failure in a row doubles the wait (a success resets it)."""
        self._retry_at = self.clock() + self._backoff_s
        self._backoff_s = min(self._backoff_s * 2, MAX_BACKOFF_S)

    def _drop(self, why: str) -> None:
        log.warning("online store %s: %s; reconnecting", self.path, why)
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def _past_deadline(self) -> bool:
        return self.clock() > self._deadline  # true aborts the running query ("interrupted")


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = Path(path).stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _reconnectable(error: sqlite3.Error) -> bool:
    """Errors of the file rather than of the moment: a new connection may cure them (a lock or a timeout will pass)."""
    name = getattr(error, "sqlite_errorname", "")
    return name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB", "SQLITE_CANTOPEN", "SQLITE_IOERR")) or "no such table" in str(error)


def redis_reader(store: FeatureStore, service: str, client: redis.Redis, only: list[str] | None = None) -> RedisFeatureReader:
    layout = service_layout(store, service)
    return RedisFeatureReader(client, layout.subset(only) if only is not None else layout)


def sqlite_reader(
    store: FeatureStore, service: str, only: list[str] | None = None, timeout_s: float = DEFAULT_TIMEOUT_S, per_id_s: float = PER_ID_S
) -> SqliteFeatureReader:
    layout = service_layout(store, service)
    layout = layout.subset(only) if only is not None else layout
    tables = {v: compute_table_id(layout.project, store.get_feature_view(v)) for v in layout.views}
    return SqliteFeatureReader(store.config.online_store.path, layout, tables, timeout_s=timeout_s, per_id_s=per_id_s)
