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

import sqlite3
from dataclasses import dataclass
from typing import Any, Protocol

import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _mmh3, _redis_key, compute_table_id
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from churnops.data.schema import ENTITY
from churnops.errors import InvalidInputError


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
        return {name: _decode(r) for name, r in zip(self.layout.names, raw, strict=True)}


class SqliteFeatureReader:
    """One indexed SELECT per feature view on the embedded online store."""

    def __init__(self, path: str, layout: ServiceLayout, tables: dict[str, str]) -> None:
        self.layout = layout
        # Read-only connection; Feast writes through its own connection.
        self.conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False)
        self._queries = [f'SELECT feature_name, value FROM "{tables[view]}" WHERE entity_key = ?' for view in layout.views]
        self._wanted = set(layout.names)

    def read(self, customer_id: int) -> dict[str, Any] | None:
        key = serialize_entity_key(_entity_key(customer_id), entity_key_serialization_version=self.layout.key_version)
        found: dict[str, Any] = {}
        for query in self._queries:
            for name, value in self.conn.execute(query, (key,)):
                if name in self._wanted:
                    found[name] = _decode(value)
        if not found:
            return None
        return {name: found.get(name) for name in self.layout.names}

    def read_many(self, customer_ids: list[int]) -> list[dict[str, Any] | None]:
        return [self.read(cid) for cid in customer_ids]


def redis_reader(store: FeatureStore, service: str, client: redis.Redis, only: list[str] | None = None) -> RedisFeatureReader:
    layout = service_layout(store, service)
    return RedisFeatureReader(client, layout.subset(only) if only is not None else layout)


def sqlite_reader(store: FeatureStore, service: str, only: list[str] | None = None) -> SqliteFeatureReader:
    layout = service_layout(store, service)
    layout = layout.subset(only) if only is not None else layout
    tables = {v: compute_table_id(layout.project, store.get_feature_view(v)) for v in layout.views}
    return SqliteFeatureReader(store.config.online_store.path, layout, tables)
