"""Deleting one customer from the feature stores (privacy erasure).

Feast has no API to delete an entity's online rows: materialization only
writes. The online stores are therefore changed directly, with Feast's own
key encoding (as ``online`` reads them): on SQLite one DELETE per feature
view table (with ``secure_delete``, so the freed pages are overwritten, not
left readable in the file); on Redis the entity's hash and the hash of
reasons precomputed from it. The cluster's
offline store (PostgreSQL feature tables) loses the customer's rows; the
embedded offline store is Parquet under the data directory and is rewritten
with the other data files (``churnops.privacy.files``).
"""

from __future__ import annotations

import sqlite3

import psycopg
import redis
from feast import FeatureStore
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.infra.online_stores.helpers import _redis_key, compute_table_id

from churnops.data.schema import ENTITY
from churnops.features.catalog import DOMAINS
from churnops_feast.definitions import table_name
from churnops_feast.online import _entity_key, derived_key


def erase_online_sqlite(store: FeatureStore, customer_id: int) -> int:
    """Delete the customer's rows from every feature view's table of the SQLite online store; returns rows deleted."""
    key = serialize_entity_key(_entity_key(customer_id), entity_key_serialization_version=store.config.entity_key_serialization_version)
    tables = [compute_table_id(store.project, view) for view in store.list_feature_views()]
    conn = sqlite3.connect(store.config.online_store.path, timeout=30, isolation_level=None)
    try:
        conn.execute("PRAGMA secure_delete=ON")
        existing = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        deleted = 0
        conn.execute("BEGIN IMMEDIATE")
        for table in tables:
            if table in existing:
                deleted += conn.execute(f'DELETE FROM "{table}" WHERE entity_key = ?', (key,)).rowcount
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")  # no copy of the old pages left in a write-ahead log
    finally:
        conn.close()
    return deleted


def erase_online_redis(store: FeatureStore, client: redis.Redis, customer_id: int) -> int:
    """Delete the customer's hash (every feature view's fields) and what was derived from it (precomputed reasons) from the
    Redis online store; returns feature hashes deleted."""
    key = _redis_key(
        store.project, _entity_key(customer_id), entity_key_serialization_version=store.config.entity_key_serialization_version
    )
    pipe = client.pipeline(transaction=True)  # both at once: a reasons write guarded by the features' key cannot land between
    pipe.delete(key)
    pipe.delete(derived_key(key))  # reasons precomputed from the customer's features
    deleted, _ = pipe.execute()
    return int(deleted)


def erase_offline_postgres(dsn: str, customer_id: int) -> int:
    """Delete the customer's rows from the PostgreSQL feature tables (the cluster's offline store); returns rows deleted."""
    deleted = 0
    with psycopg.connect(dsn, connect_timeout=10) as conn, conn.transaction():
        for domain in DOMAINS:
            exists = conn.execute("SELECT to_regclass(%s)", (table_name(domain),)).fetchone()
            if exists and exists[0] is not None:
                deleted += conn.execute(f"DELETE FROM {table_name(domain)} WHERE {ENTITY} = %s", (customer_id,)).rowcount
    return deleted
