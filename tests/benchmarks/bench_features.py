"""Feature store benchmark: online retrieval latency and materialization throughput.

Generates a data set, publishes it to the embedded store (SQLite) and to the
cluster store (private redis-server + a temporary PostgreSQL database), then
times, for one customer x all features of the training FeatureService:
  - Feast's own online read (get_online_features), the baseline,
  - the floor in the same run: the raw store read that Feast builds on
    (one SQLite SELECT of the customer's rows, one Redis HGETALL), without
    decoding, i.e. the floor for any client of that store.
  - ChurnOps' serving reader (churnops_feast.online), one round trip.
Prints p50/p95/p99 and materialization throughput (feature-view rows/s).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import redis
from feast.infra.key_encoding_utils import serialize_entity_key
from feast.protos.feast.types.EntityKey_pb2 import EntityKey
from feast.protos.feast.types.Value_pb2 import Value

from churnops.data.config import GeneratorConfig
from churnops.data.generator import load_manifest, save_manifest, write_raw
from churnops.data.schema import ENTITY
from churnops.features import steps as foundation
from churnops.features.engine import build_features
from churnops.layout import Layout
from churnops_feast import store as fs
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import redis_reader, sqlite_reader
from tests.support.services import private_redis, temporary_database


def percentiles(samples_ms: list[float]) -> str:
    a = np.asarray(samples_ms)
    return f"p50 {np.percentile(a, 50):6.3f} ms   p95 {np.percentile(a, 95):6.3f} ms   p99 {np.percentile(a, 99):6.3f} ms   (n={a.size:,})"


def time_calls(fn: Callable[[int], object], ids: list[int], repeats: int, warmup: int = 200) -> list[float]:
    rng = random.Random(0)
    for _ in range(warmup):
        fn(rng.choice(ids))
    out = []
    for _ in range(repeats):
        cid = rng.choice(ids)
        t = time.perf_counter_ns()
        fn(cid)
        out.append((time.perf_counter_ns() - t) / 1e6)
    return out


def entity_key(cid: int) -> bytes:
    key = EntityKey(join_keys=[ENTITY], entity_values=[Value(int64_val=cid)])
    return serialize_entity_key(key, entity_key_serialization_version=3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=int(os.environ.get("BENCH_CUSTOMERS", "20000")))
    parser.add_argument("--requests", type=int, default=3000)
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-features-"))
    layout = Layout(work)
    cfg = GeneratorConfig(n_customers=args.customers)
    t = time.perf_counter()
    counts = write_raw(cfg, layout.raw)
    save_manifest(cfg, layout.raw, counts)
    gen_s = time.perf_counter() - t
    t = time.perf_counter()
    rows = build_features(load_manifest(layout.raw).calendar, layout.raw, layout.features)
    feat_s = time.perf_counter() - t
    n_views = len(fs.objects_for("embedded", layout.features).services[TRAINING_SERVICE].feature_view_projections)
    print(
        f"data: {args.customers:,} customers generated in {gen_s:.1f} s; {rows['usage']:,} snapshot rows x 116 features in {feat_s:.1f} s"
    )
    ids = sorted(foundation.served_customers(layout, cfg.calendar))
    print(
        f"online store: {len(ids):,} customers in the serving window; feature service {TRAINING_SERVICE} ({n_views} views, 116 features)\n"
    )

    # Embedded: SQLite
    seconds, mat_rows = foundation.publish(layout, "embedded", {})
    print(f"materialize -> SQLite: {mat_rows:,} feature-view rows in {seconds:.1f} s = {mat_rows / seconds:,.0f} rows/s")
    store = fs.open_store("embedded", {}, layout.data_dir)
    service = store.get_feature_service(TRAINING_SERVICE)

    def feast_read(cid: int, st=store) -> object:  # type: ignore[no-untyped-def]
        return st.get_online_features(features=service, entity_rows=[{ENTITY: cid}]).to_dict()

    assert len(feast_read(ids[0])) == 117  # type: ignore[arg-type]
    db = sqlite3.connect(layout.data_dir / "feast" / "online_store.db", check_same_thread=False)
    tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table' AND name LIKE 'churnops_customer_%'")]

    def sqlite_raw(cid: int) -> object:
        k = entity_key(cid)
        return [db.execute(f'SELECT feature_name, value FROM "{tb}" WHERE entity_key = ?', (k,)).fetchall() for tb in tables]

    fast_sqlite = sqlite_reader(store, TRAINING_SERVICE)
    print("SQLite  ChurnOps reader (serving) :", percentiles(time_calls(fast_sqlite.read, ids, args.requests)))
    print("SQLite  Feast get_online_features :", percentiles(time_calls(feast_read, ids, args.requests)))
    print("SQLite  floor: raw SELECTs        :", percentiles(time_calls(sqlite_raw, ids, args.requests)))

    # Cluster: Redis online store, PostgreSQL offline store
    with private_redis() as redis_url, temporary_database(prefix="churnops_bench") as dbname:
        env = {"CHURNOPS_REDIS": redis_url, "CHURNOPS_PG_DATABASE": dbname}
        seconds, mat_rows = foundation.publish(layout, "cluster", env)
        print(f"\nmaterialize -> Redis : {mat_rows:,} feature-view rows in {seconds:.1f} s = {mat_rows / seconds:,.0f} rows/s")
        rstore = fs.open_store("cluster", env, layout.data_dir)
        rservice = rstore.get_feature_service(TRAINING_SERVICE)
        host, port = redis_url.split(":")
        client = redis.Redis(host=host, port=int(port))

        def feast_redis(cid: int) -> object:
            return rstore.get_online_features(features=rservice, entity_rows=[{ENTITY: cid}]).to_dict()

        def redis_raw(cid: int) -> object:
            return client.hgetall(entity_key(cid) + b"churnops")  # type: ignore[arg-type]  # binary key

        assert client.hgetall(entity_key(ids[0]) + b"churnops"), "raw key layout changed"  # type: ignore[arg-type]
        fast_redis = redis_reader(rstore, TRAINING_SERVICE, redis.Redis(host=host, port=int(port), socket_timeout=0.05))
        print("Redis   ChurnOps reader (serving) :", percentiles(time_calls(fast_redis.read, ids, args.requests)))
        print("Redis   Feast get_online_features :", percentiles(time_calls(feast_redis, ids, args.requests)))
        print("Redis   floor: raw HGETALL        :", percentiles(time_calls(redis_raw, ids, args.requests)))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
