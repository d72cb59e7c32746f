"""Feast with the cluster configuration: Redis online store, PostgreSQL offline store and registry.

Talks to a private redis-server and a fresh PostgreSQL database over real connections.
"""

from __future__ import annotations

import pandas as pd
import psycopg
import pytest
import redis

from churnops.data.generator import load_manifest
from churnops.data.raw import read_raw
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS, FEATURES
from churnops.layout import Layout
from churnops_feast import store as fs
from churnops_feast.definitions import LIVE_SERVICE, TRAINING_SERVICE, table_name


@pytest.fixture
def cluster_env(redis_url: str, pg_database: str) -> dict[str, str]:
    client = redis.Redis.from_url(f"redis://{redis_url}")
    client.flushall()
    return {
        "CHURNOPS_REDIS": redis_url,
        "CHURNOPS_PG_DATABASE": pg_database,
        "CHURNOPS_PG_HOST": "127.0.0.1",
        "CHURNOPS_PG_USER": "postgres",
    }


@pytest.fixture
def published(layout_copy: Layout, cluster_env: dict[str, str]) -> Layout:
    foundation.publish(layout_copy, "cluster", cluster_env)
    return layout_copy


def _redis_snapshot(url: str) -> dict[bytes, dict[bytes, bytes]]:
    client = redis.Redis.from_url(f"redis://{url}")
    snapshot: dict[bytes, dict[bytes, bytes]] = {}
    for key in sorted(client.scan_iter(count=1000)):
        snapshot[key] = client.hgetall(key)  # type: ignore[assignment]  # sync client: a dict, not an Awaitable
    return snapshot


def test_features_are_loaded_into_postgres(published: Layout, cluster_env: dict[str, str]) -> None:
    with psycopg.connect(fs.pg_dsn(cluster_env)) as conn:
        for domain in DOMAINS:
            (count,) = conn.execute(f"SELECT count(*) FROM {table_name(domain)}").fetchone()  # type: ignore[misc]
            assert count == len(pd.read_parquet(published.features / f"{domain}.parquet", columns=[ENTITY]))
        # the registry lives in PostgreSQL too
        (views,) = conn.execute("SELECT count(*) FROM feature_views").fetchone()  # type: ignore[misc]
        assert views == len(DOMAINS)


def test_online_read_from_redis_matches_latest_snapshot(published: Layout, cluster_env: dict[str, str]) -> None:
    support = pd.read_parquet(published.features / "support.parquet")
    latest = support[support[TIMESTAMP] == support[TIMESTAMP].max()].set_index(ENTITY)
    ids = [int(i) for i in latest.sort_values("tickets_90d").index[-5:]]
    online = foundation.lookup(published, "cluster", cluster_env, ids)
    assert online["tickets_90d"] == latest.loc[ids, "tickets_90d"].tolist()
    assert len(online) - 1 == len(FEATURES)
    store = fs.open_store("cluster", cluster_env, published.data_dir)
    live = fs.online_features(store, ids[:1], LIVE_SERVICE, {"active_users_today": [3]})
    assert live["live_activity_ratio"][0] == pytest.approx(3 / (live["active_users_mean_7d"][0] + 1))


def test_materializing_the_same_window_twice_changes_nothing_in_redis(published: Layout, cluster_env: dict[str, str]) -> None:
    first = _redis_snapshot(cluster_env["CHURNOPS_REDIS"])
    cfg = load_manifest(published.raw)
    assert len(first) == len(foundation.served_customers(published, cfg.calendar))  # one hash per customer
    store = fs.open_store("cluster", cluster_env, published.data_dir)
    fs.materialize(store, *foundation.serving_window(cfg.calendar))
    assert _redis_snapshot(cluster_env["CHURNOPS_REDIS"]) == first


def test_postgres_historical_retrieval_is_point_in_time_correct(published: Layout, cluster_env: dict[str, str]) -> None:
    cfg = load_manifest(published.raw)
    store = fs.open_store("cluster", cluster_env, published.data_dir)
    demo = pd.read_parquet(published.features / "demographic.parquet")
    s1, s2 = cfg.calendar.day_timestamp(cfg.calendar.snapshot_days()[0]), cfg.calendar.day_timestamp(cfg.calendar.snapshot_days()[1])
    ids = sorted(set(demo.loc[demo[TIMESTAMP] == s1, ENTITY]) & set(demo.loc[demo[TIMESTAMP] == s2, ENTITY]))[:10]
    entity_df = pd.DataFrame({ENTITY: ids * 2, TIMESTAMP: [s2 - pd.Timedelta(seconds=1)] * 10 + [s2] * 10})
    got = fs.historical_features(store, entity_df, TRAINING_SERVICE).set_index([ENTITY, TIMESTAMP])
    at = demo.set_index([ENTITY, TIMESTAMP])["tenure_days"]  # differs between any two snapshots
    for cid in ids:
        assert got.loc[(cid, s2 - pd.Timedelta(seconds=1)), "tenure_days"] == at[(cid, s1)]
        assert got.loc[(cid, s2), "tenure_days"] == at[(cid, s2)] == at[(cid, s1)] + (s2 - s1).days


def test_postgres_keeps_entity_rows_without_a_match(published: Layout, cluster_env: dict[str, str]) -> None:
    """Unlike the file store, PostgreSQL returns unmatched rows with NULL features (no silent drop)."""
    store = fs.open_store("cluster", cluster_env, published.data_dir)
    labels = read_raw(published.raw, "labels").head(50)
    entity_df = pd.concat(
        [labels[[ENTITY, TIMESTAMP]], pd.DataFrame({ENTITY: [1], TIMESTAMP: [labels[TIMESTAMP].iloc[0]]})], ignore_index=True
    )
    got = fs.historical_features(store, entity_df, TRAINING_SERVICE)
    assert len(got) == 51
    assert got.loc[got[ENTITY] == 1, "mrr"].isna().all()
