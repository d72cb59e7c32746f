"""Prediction log benchmark: write throughput through the queue, read-back throughput, cost on the request path.

Rows carry all 116 catalog features (7 categorical), as the predictor logs them.
For each store (Parquet in a temporary directory, PostgreSQL in a temporary
database) it times:
  - the request path: ``record()`` per prediction (the call's own cost,
    p50/p99, and end-to-end events/min until the last flush completed);
  - batched requests: ``record_many`` of 100-row requests (rows, as the
    predictor holds them);
  - the batch scorer: ``record_many`` of 50,000-row frames;
  - read-back of the whole window, and of 10 features only.
Baseline in the same run: the same rows, already in Arrow, written and read
as one Parquet file with raw pyarrow (no queue, no conversion, no
partitioning, no fsync), with pyarrow's defaults and with the store's writer
options (dictionaries for text only, statistics for time and customer id).

Usage: PYTHONPATH=. python tests/benchmarks/bench_predlog.py [--rows 1000000] [--pg-rows 300000] [--stores parquet,postgres]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from prometheus_client import CollectorRegistry

from churnops.features.catalog import FEATURES
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import FeatureLayout, LogStore, PredictionBatch, to_table
from churnops.monitoring.predlog.writer import PredictionLog
from tests.support.services import DEFAULT_ADMIN_DSN, temporary_database

LAYOUT = FeatureLayout(tuple(f.name for f in FEATURES), frozenset(f.name for f in FEATURES if f.dtype == "string"))
T0 = time.time()


def features_frame(n: int, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    cols: dict[str, object] = {}
    for name in LAYOUT.names:
        if name in LAYOUT.categorical:
            cols[name] = rng.choice(np.array(["a", "b", "c", "d"], dtype=object), n)
        else:
            v = rng.gamma(2.0, 10.0, n)
            v[rng.random(n) < 0.02] = np.nan
            cols[name] = v
    return pd.DataFrame(cols)


def frame_batch(frame: pd.DataFrame, start: int, t: float) -> PredictionBatch:
    n = len(frame)
    ids = np.arange(start, start + n, dtype=np.int64)
    scores = np.random.default_rng(start).random(n)
    bands = np.where(scores > 0.5, "high", "low").astype(object)
    return PredictionBatch("churn", "1", LAYOUT, ids, scores, bands, [f"b{i}" for i in ids], frame, t, source="batch")


def per_min(n: int, seconds: float) -> str:
    return f"{n / seconds * 60:>14,.0f} events/min  ({n:,} in {seconds:6.2f} s)"


def open_log(store: LogStore) -> tuple[PredictionLog, CollectorRegistry]:
    registry = CollectorRegistry()
    # Room for a few seconds of traffic: the benchmark measures throughput, not drops.
    return PredictionLog(store, registry, flush_interval_s=1.0, flush_records=50_000, capacity=200_000, max_block_s=60.0), registry


def drops(registry: CollectorRegistry, sink: str) -> float:
    return sum(
        registry.get_sample_value("churnops_prediction_log_dropped_total", {"sink": sink, "reason": r}) or 0.0
        for r in ("queue_full", "closed", "invalid", "rejected", "unwritten_at_close")
    )


def bench_single(store: LogStore, rows: np.ndarray, n: int) -> None:
    plog, registry = open_log(store)
    calls = np.empty(n)
    t_start = time.perf_counter()
    for i in range(n):
        t = time.perf_counter_ns()
        plog.record(
            model="churn",
            version="1",
            layout=LAYOUT,
            customer_id=i,
            score=0.42,
            risk_band="low",
            request_id=f"s{i}",
            values=rows[i % len(rows)],
            time=T0,
        )
        calls[i] = time.perf_counter_ns() - t
    plog.close()
    elapsed = time.perf_counter() - t_start
    us = calls / 1000
    print(
        f"  record() one prediction     {per_min(n, elapsed)}   call p50 {np.percentile(us, 50):.1f} µs  p99 {np.percentile(us, 99):.1f} µs"
    )
    assert drops(registry, store.sink) == 0


def bench_requests(store: LogStore, rows: np.ndarray, n: int, size: int = 100) -> None:
    plog, registry = open_log(store)
    t_start = time.perf_counter()
    for start in range(0, n, size):
        k = min(size, n - start)
        ids = list(range(start, start + k))
        block = rows[np.arange(start, start + k) % len(rows)]
        batch = PredictionBatch("churn", "1", LAYOUT, ids, [0.3] * k, ["low"] * k, [f"q{i}" for i in ids], block, T0 + 1)
        plog.record_many(batch)
    plog.close()
    print(f"  record_many() 100-row reqs  {per_min(n, time.perf_counter() - t_start)}")
    assert drops(registry, store.sink) == 0


def bench_frames(store: LogStore, frame: pd.DataFrame, n: int, chunk: int = 50_000) -> None:
    plog, registry = open_log(store)
    t_start = time.perf_counter()
    for start in range(0, n, chunk):
        part = frame.iloc[: min(chunk, n - start)]
        plog.record_many(frame_batch(part, start, T0 + 2), timeout_s=600)
    plog.close()
    print(f"  record_many() 50k frames    {per_min(n, time.perf_counter() - t_start)}")
    assert drops(registry, store.sink) == 0


def bench_read(store: LogStore, expected: int) -> None:
    window = (dt.datetime.fromtimestamp(T0 - 60, dt.UTC), dt.datetime.fromtimestamp(T0 + 60, dt.UTC))
    t = time.perf_counter()
    got = store.read_window(*window)
    print(f"  read_window all columns     {per_min(len(got), time.perf_counter() - t)}")
    assert len(got) == expected, (len(got), expected)
    t = time.perf_counter()
    got = store.read_window(*window, features=list(LAYOUT.names[:10]))
    print(f"  read_window 10 features     {per_min(len(got), time.perf_counter() - t)}")


def baseline(frame: pd.DataFrame, n: int, root: Path) -> None:
    table = to_table([frame_batch(frame.iloc[:n], 0, T0)])
    path = root / "baseline.parquet"
    t = time.perf_counter()
    pq.write_table(table, path, compression="zstd")
    print(f"  baseline pyarrow write      {per_min(n, time.perf_counter() - t)}   (rows already in Arrow, pyarrow's defaults)")
    text = [f.name for f in table.schema if pa.types.is_string(f.type)]
    t = time.perf_counter()
    pq.write_table(table, path, compression="zstd", use_dictionary=text, write_statistics=["time", "customer_id"])
    print(f"  baseline pyarrow write      {per_min(n, time.perf_counter() - t)}   (rows already in Arrow, the store's writer options)")
    t = time.perf_counter()
    back = pq.read_table(path).to_pandas()
    print(f"  baseline pyarrow read       {per_min(len(back), time.perf_counter() - t)}")


def run_store(name: str, make: Callable[[], LogStore], frame: pd.DataFrame, rows: np.ndarray, n: int, n_single: int) -> None:
    print(f"\n{name}: {len(LAYOUT.names)} features ({len(LAYOUT.categorical)} categorical)")
    store = make()
    bench_single(store, rows, n_single)
    bench_requests(store, rows, n)
    bench_frames(store, frame, n)
    bench_read(store, n_single + 2 * n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows per batched path (Parquet)")
    parser.add_argument("--single", type=int, default=200_000, help="single record() calls")
    parser.add_argument("--pg-rows", type=int, default=300_000, help="rows per batched path (PostgreSQL)")
    parser.add_argument("--pg-dsn", default=os.environ.get("CHURNOPS_TEST_PG_DSN", DEFAULT_ADMIN_DSN))
    parser.add_argument("--stores", default="parquet,postgres", help="comma-separated: parquet, postgres")
    args = parser.parse_args()

    frame = features_frame(min(args.rows, 50_000))
    rows = features_frame(10_000, seed=1).to_numpy(dtype=object)  # the predictor's rows: object arrays in layout order
    frame_full = pd.concat([frame] * (args.rows // len(frame) + 1), ignore_index=True).iloc[: args.rows]
    with tempfile.TemporaryDirectory(prefix="churnops-bench-predlog-") as tmp:
        root = Path(tmp)
        print("baseline (same rows, one file, raw pyarrow)")
        baseline(frame_full, args.rows, root)
        stores = args.stores.split(",")
        if "parquet" in stores:
            run_store("parquet store", lambda: ParquetStore(root / "predictions"), frame_full, rows, args.rows, args.single)
        if "postgres" not in stores:
            return
        with temporary_database(args.pg_dsn, prefix="churnops_bench_predlog") as db:
            pg_rows = min(args.pg_rows, args.rows)
            run_store(
                "postgres store",
                lambda: PostgresStore(f"{args.pg_dsn} dbname={db}"),
                frame_full.iloc[:pg_rows],
                rows,
                pg_rows,
                min(args.single, pg_rows),
            )


if __name__ == "__main__":
    main()
