"""The fast online readers return exactly what Feast's get_online_features returns."""

from __future__ import annotations

import math
from typing import Any

import pytest
import redis

from churnops.data.generator import load_manifest
from churnops.data.schema import ENTITY
from churnops.features import steps as foundation
from churnops.features.catalog import FEATURES
from churnops.layout import Layout
from churnops_feast import store as fs
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import FeatureReader, redis_reader, sqlite_reader


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _check_against_feast(reader: FeatureReader, layout: Layout, mode: fs.Mode, env: dict[str, str]) -> None:
    ids = sorted(foundation.served_customers(layout, load_manifest(layout.raw).calendar))[:25]
    expected = foundation.lookup(layout, mode, env, ids)
    for i, cid in enumerate(ids):
        got = reader.read(cid)
        assert got is not None
        assert list(got) == reader.layout.names
        assert sorted(got) == sorted(f.name for f in FEATURES)
        for name, value in got.items():
            assert _same(value, expected[name][i]), (cid, name, value, expected[name][i])
    assert reader.read(1) is None  # unknown customer
    assert expected[ENTITY] == ids


def test_sqlite_reader_matches_feast(layout_copy: Layout) -> None:
    foundation.publish(layout_copy, "embedded", {})
    store = fs.open_store("embedded", {}, layout_copy.data_dir)
    _check_against_feast(sqlite_reader(store, TRAINING_SERVICE), layout_copy, "embedded", {})


@pytest.mark.usefixtures("pg_database")
def test_redis_reader_matches_feast(layout_copy: Layout, redis_url: str, pg_database: str) -> None:
    env = {"CHURNOPS_REDIS": redis_url, "CHURNOPS_PG_DATABASE": pg_database}
    redis.Redis.from_url(f"redis://{redis_url}").flushall()
    foundation.publish(layout_copy, "cluster", env)
    store = fs.open_store("cluster", env, layout_copy.data_dir)
    host, port = redis_url.split(":")
    client = redis.Redis(host=host, port=int(port), socket_timeout=0.5)
    _check_against_feast(redis_reader(store, TRAINING_SERVICE, client), layout_copy, "cluster", env)


def test_redis_reader_fails_fast_when_redis_is_down(layout_copy: Layout) -> None:
    foundation.publish(layout_copy, "embedded", {})
    store = fs.open_store("embedded", {}, layout_copy.data_dir)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    reader = redis_reader(store, TRAINING_SERVICE, dead)
    with pytest.raises(redis.ConnectionError):
        reader.read(100_000)
