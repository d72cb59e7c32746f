"""The cluster's feature stores lose one customer: Redis online store (the entity's hash), PostgreSQL offline tables.

Published the way the cluster mode publishes (PostgreSQL offline store, Redis online store), then
read back with the serving reader and SQL: the customer is gone, everyone else is still there.
"""

from __future__ import annotations

import psycopg
import pytest
import redis

from churnops.data.generator import load_manifest
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS
from churnops.layout import Layout
from churnops_feast import store as fs
from churnops_feast.definitions import TRAINING_SERVICE, table_name
from churnops_feast.erase import erase_offline_postgres, erase_online_redis
from churnops_feast.online import redis_reader


def rows_of(dsn: str, customer_id: int) -> int:
    with psycopg.connect(dsn) as conn:
        return sum(
            conn.execute(f"SELECT count(*) FROM {table_name(d)} WHERE customer_id = %s", (customer_id,)).fetchone()[0]  # type: ignore[index]
            for d in DOMAINS
        )


@pytest.mark.usefixtures("pg_database")
def test_the_cluster_stores_lose_the_customer_and_keep_the_others(layout_copy: Layout, redis_url: str, pg_database: str) -> None:
    env = {"CHURNOPS_REDIS": redis_url, "CHURNOPS_PG_DATABASE": pg_database}
    redis.Redis.from_url(f"redis://{redis_url}").flushall()
    foundation.publish(layout_copy, "cluster", env)
    store = fs.open_store("cluster", env, layout_copy.data_dir)
    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=2)
    reader = redis_reader(store, TRAINING_SERVICE, client)
    x, y = sorted(foundation.served_customers(layout_copy, load_manifest(layout_copy.raw).calendar))[:2]
    dsn = fs.pg_dsn(env)
    held = rows_of(dsn, x)
    assert reader.read(x) is not None and held > 0

    assert erase_online_redis(store, client, x) == 1
    assert erase_offline_postgres(dsn, x) == held

    assert reader.read(x) is None  # the predictor answers 404 for x now
    assert rows_of(dsn, x) == 0
    assert reader.read(y) is not None and rows_of(dsn, y) > 0
    assert erase_online_redis(store, client, x) == 0 and erase_offline_postgres(dsn, x) == 0  # idempotent
