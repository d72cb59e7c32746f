"""The fast online readers return exactly what Feast's get_online_features returns."""

from __future__ import annotations

import math
import shutil
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from feast.protos.feast.types.Value_pb2 import Int64List, Null, Value

from churnops.data.generator import load_manifest
from churnops.data.schema import ENTITY
from churnops.features import steps as foundation
from churnops.features.catalog import FEATURES
from churnops.layout import Layout
from churnops_feast import store as fs
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import FeatureReader, SqliteFeatureReader, ValueCache, _decode, redis_reader, sqlite_reader


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return bool(a == b)


def _check_against_feast(reader: FeatureReader, layout: Layout, mode: fs.Mode, env: dict[str, str]) -> None:
    ids = sorted(foundation.served_customers(layout, load_manifest(layout.raw).calendar))[:25]
    expected = foundation.lookup(layout, mode, env, ids)
    for _ in range(2):  # the second time, the Redis reader's values come from its cache of decoded values
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


def test_the_value_cache_decodes_as_feast_keeps_only_scalars_and_stays_bounded() -> None:
    stored = [
        Value(int64_val=3),
        Value(double_val=0.25),
        Value(string_val="monthly"),
        Value(bool_val=True),
        Value(null_val=Null.NULL),
        Value(),
        Value(int64_list_val=Int64List(val=[1, 2])),
    ]
    raws = [v.SerializeToString() for v in stored]
    cache = ValueCache(size=4)
    for _ in range(2):
        assert [cache.decode(r) for r in raws] == [_decode(r) for r in raws]
    assert cache.decode(None) is None
    first = cache.decode(raws[-1])
    assert first is not cache.decode(raws[-1])  # a list is mutable: decoded afresh each time, never shared between rows
    for i in range(10):
        assert cache.decode(Value(int64_val=100 + i).SerializeToString()) == 100 + i
    assert len(cache) <= 4


def test_redis_reader_fails_fast_when_redis_is_down(layout_copy: Layout) -> None:
    foundation.publish(layout_copy, "embedded", {})
    store = fs.open_store("embedded", {}, layout_copy.data_dir)
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    reader = redis_reader(store, TRAINING_SERVICE, dead)
    with pytest.raises(redis.ConnectionError):
        reader.read(100_000)


def _published_sqlite(layout: Layout, timeout_s: float = 0.1, **options: Any) -> tuple[SqliteFeatureReader, Path, int]:
    foundation.publish(layout, "embedded", {})
    store = fs.open_store("embedded", {}, layout.data_dir)
    reader = sqlite_reader(store, TRAINING_SERVICE, timeout_s=timeout_s)
    path = Path(store.config.online_store.path)
    for name, value in options.items():
        setattr(reader, name, value)
    cid = sorted(foundation.served_customers(layout, load_manifest(layout.raw).calendar))[0]
    return reader, path, cid


def test_sqlite_reader_gives_up_within_its_timeout_when_a_writer_holds_the_lock(layout_copy: Layout) -> None:
    reader, path, cid = _published_sqlite(layout_copy, timeout_s=0.1)
    assert reader.read(cid) is not None
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("BEGIN EXCLUSIVE")
    try:
        started = time.monotonic()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            reader.read_many([cid] * 32)
        # SQLite's own busy timeout is 5 s; the budget is 0.1 s (a bound 40x the budget, not a latency check)
        assert time.monotonic() - started < 4.0
    finally:
        writer.execute("ROLLBACK")
        writer.close()
    assert reader.read(cid) is not None  # a lock is not a broken store: the same connection reads again


def test_sqlite_reader_reconnects_after_the_file_is_truncated_and_restored(layout_copy: Layout) -> None:
    reader, path, cid = _published_sqlite(layout_copy, _min_backoff_s=0.0, _backoff_s=0.0)
    expected = reader.read(cid)
    saved = path.read_bytes()
    with path.open("r+b") as f:
        f.truncate(0)
    with pytest.raises(sqlite3.Error):
        reader.read(cid)
    with path.open("r+b") as f:  # restored in place: the same file, the same inode
        f.write(saved)
    assert reader.read(cid) == expected


def test_sqlite_reader_backs_off_while_the_store_stays_broken(layout_copy: Layout) -> None:
    now = [0.0]
    reader, path, cid = _published_sqlite(layout_copy, clock=lambda: now[0])
    saved = path.read_bytes()
    path.write_bytes(b"")
    with pytest.raises(sqlite3.OperationalError, match="no such table"):
        reader.read(cid)
    with pytest.raises(sqlite3.OperationalError, match="reconnecting in"):
        reader.read(cid)  # within the backoff: not even an attempt
    path.write_bytes(saved)
    now[0] = 0.3  # past the first backoff (0.25 s)
    assert reader.read(cid) is not None


def test_sqlite_reader_picks_up_a_store_replaced_by_a_rename(layout_copy: Layout) -> None:
    reader, path, cid = _published_sqlite(layout_copy, check_every_s=0.0)
    assert reader.read(cid) is not None
    replacement = path.with_suffix(".new")
    shutil.copyfile(path, replacement)
    with sqlite3.connect(replacement) as db:  # the new materialization no longer has this customer
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            db.execute(f'DELETE FROM "{table}"')
    replacement.replace(path)  # a rename over the old file, as a materialization writes it
    assert reader.read(cid) is None
