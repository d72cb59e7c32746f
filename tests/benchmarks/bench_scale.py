"""Scale benchmark (`make bench-scale`): the single-process path and the engine path side by side as customers grow.

For each size (``BENCH_SCALE_CUSTOMERS``, default 20,000, 200,000 and 2,000,000 customers) and each path, the
commands a user runs, each in its own process tree: ``churnops data generate``, ``churnops features build`` and
``churnops score`` with exact top-5 reasons, with ``--engine local`` (this process) and ``--engine dask`` (a
local Dask cluster of one single-threaded worker process per core). Both paths do the same work: the same
customers in the same blocks (``--block-size``, default 10,000), the same rows scored by the same model, the
same cores. Peak memory is the largest sum of the resident memory of a command's whole process tree (the
command, the Dask scheduler in it, its workers), sampled every 50 ms.

The scoring input is every snapshot row of the feature tables, joined across the five domains into one
Parquet file (row groups of 100,000 rows; untimed); the model is the challenger trained once on the smallest
size (``churnops features publish`` and ``churnops train``, untimed). Training at scale is not measured here.

Finally the curve is extrapolated to 100 GB of raw Parquet: measured per-customer cost on this machine's
cores, scaled linearly, on a stated cluster size. What is measured and what is extrapolated is printed.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import psutil  # type: ignore[import-untyped]  # installed with distributed (the engine)
import pyarrow as pa
import pyarrow.parquet as pq

from churnops.features.catalog import DOMAINS

CHURNOPS = str(Path(sys.executable).parent / "churnops")
SIZES = [int(s) for s in os.environ.get("BENCH_SCALE_CUSTOMERS", "20000,200000,2000000").split(",")]
BLOCK = int(os.environ.get("BENCH_SCALE_BLOCK", "10000"))
CORES = os.cpu_count() or 1
PATHS = ("local", "dask")
STEPS = ("generate", "features", "score")
TARGET_RAW_BYTES = 100 * 10**9
CLUSTER_CORES = 64  # the cluster the extrapolation assumes: e.g. 8 nodes of 8 cores (m6i.2xlarge)


@dataclass(frozen=True)
class Measured:
    customers: int
    path: str
    step: str
    seconds: float
    peak_mib: float
    detail: str = ""


def tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # exited between the listing and the read
            total += p.memory_info().rss
    return total


def run(cmd: list[str], log: Path) -> tuple[float, float]:
    """Run ``cmd``; returns (seconds, peak MiB of its process tree). A failing command stops the benchmark."""
    started = time.perf_counter()
    with log.open("w") as out:
        child = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        proc = psutil.Process(child.pid)
        peak = 0
        while child.poll() is None:
            peak = max(peak, tree_rss(proc))
            time.sleep(0.05)
    seconds = time.perf_counter() - started
    if child.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({child.returncode}); its output: {log}\n{log.read_text()[-3000:]}")
    return seconds, peak / 2**20


def joined_features(features: Path, out: Path) -> int:
    """Every snapshot row with all 116 features in one file: the domains' files hold the same rows in the same
    order (one engine writes them together), so their row groups are zipped, keys checked, and never all loaded."""
    files = {d: pq.ParquetFile(features / f"{d}.parquet") for d in DOMAINS}
    readers = {d: f.iter_batches(batch_size=100_000) for d, f in files.items()}
    writer: pq.ParquetWriter | None = None
    rows = 0
    try:
        for first in readers[DOMAINS[0]]:
            table = pa.Table.from_batches([first])
            for d in DOMAINS[1:]:
                other = pa.Table.from_batches([next(readers[d])])
                if not other.select(["customer_id", "event_timestamp"]).equals(table.select(["customer_id", "event_timestamp"])):
                    sys.exit(f"{d}'s rows are not in the order of {DOMAINS[0]}'s")
                for name in other.column_names[2:]:
                    table = table.append_column(name, other[name])
            if writer is None:
                writer = pq.ParquetWriter(out, table.schema)
            writer.write_table(table)
            rows += table.num_rows
    finally:
        if writer is not None:
            writer.close()
    return rows


def train_champion(data: Path, logs: Path) -> str:
    """A model to score with (registered as challenger), trained once on the smallest data set; returns its tracking URI."""
    run([CHURNOPS, "--data-dir", str(data), "features", "publish"], logs / "publish.log")
    run([CHURNOPS, "--data-dir", str(data), "train", "--trials", "4", "--budget-minutes", "0"], logs / "train.log")
    return f"sqlite:///{data / 'mlflow' / 'mlflow.db'}"


def measure_size(customers: int, root: Path, logs: Path, tracking: str | None) -> tuple[list[Measured], str | None]:
    results = []
    for path in PATHS:
        data = root / f"{customers}-{path}"
        engine = ["--engine", path]
        gen = [CHURNOPS, "--data-dir", str(data), "data", "generate", "--customers", str(customers), "--block-size", str(BLOCK)]
        seconds, peak = run([*gen, *engine], logs / f"{customers}-{path}-generate.log")
        raw_bytes = sum(p.stat().st_size for p in (data / "raw").glob("*/part-*.parquet"))
        results.append(Measured(customers, path, "generate", seconds, peak, f"{raw_bytes / 2**20:,.0f} MiB raw"))
        seconds, peak = run([CHURNOPS, "--data-dir", str(data), "features", "build", *engine], logs / f"{customers}-{path}-features.log")
        results.append(Measured(customers, path, "features", seconds, peak))
        if tracking is None:
            tracking = train_champion(data, logs)
        scoring_input = data / "score-input.parquet"
        rows = joined_features(data / "features", scoring_input)
        out = data / "scores"
        cmd = [CHURNOPS, "--data-dir", str(data), "score", str(scoring_input), "--out", str(out), "--tracking-uri", tracking]
        cmd += ["--model", "challenger", "--partition-rows", "100000", "--no-prediction-log", *engine]
        seconds, peak = run(cmd, logs / f"{customers}-{path}-score.log")
        partitions = re.findall(r'"partitions": (\d+)', (logs / f"{customers}-{path}-score.log").read_text())[-1]
        results.append(Measured(customers, path, "score", seconds, peak, f"{rows:,} rows, {partitions} partition(s)"))
        print_rows(results[-3:])
        if path == PATHS[-1]:
            same_scores(root / f"{customers}-{PATHS[0]}" / "scores", out)
        shutil.rmtree(data / "raw")  # the largest part; the next size needs the disk
    return results, tracking


def same_scores(single: Path, partitioned: Path) -> None:
    """The engine path's output must be the single-process path's, row for row."""
    a, b = pq.read_table(single, columns=["churn_probability"]), pq.read_table(partitioned, columns=["churn_probability"])
    if not a.equals(b):
        sys.exit(f"{partitioned} differs from {single}")


def print_rows(rows: list[Measured]) -> None:
    for m in rows:
        print(f"{m.customers:>11,} {m.path:<6} {m.step:<9} {m.seconds:>9.1f} s {m.peak_mib:>10,.0f} MiB  {m.detail}", flush=True)


def report(results: list[Measured]) -> None:
    print("\n== the curve (wall seconds / peak MiB of the process tree) ==")
    print(f"{'customers':>11} " + " ".join(f"{s + ' ' + p:>22}" for s in STEPS for p in PATHS))
    for n in sorted({m.customers for m in results}):
        cells = []
        for s in STEPS:
            for p in PATHS:
                m = next(m for m in results if (m.customers, m.step, m.path) == (n, s, p))
                cells.append(f"{m.seconds:>9.1f} s {m.peak_mib:>7,.0f} MiB")
        print(f"{n:>11,} " + " ".join(f"{c:>22}" for c in cells))
    sizes = sorted({m.customers for m in results})
    if len(sizes) >= 2:
        lo, hi = sizes[0], sizes[-1]
        print(f"\n== growth from {lo:,} to {hi:,} customers (x{hi / lo:,.0f}) ==")
        for s in STEPS:
            for p in PATHS:
                a = next(m for m in results if (m.customers, m.step, m.path) == (lo, s, p))
                b = next(m for m in results if (m.customers, m.step, m.path) == (hi, s, p))
                print(f"{s:<9} {p:<6} time x{b.seconds / a.seconds:6.1f}   peak memory x{b.peak_mib / a.peak_mib:5.2f}")
    extrapolate(results)


def extrapolate(results: list[Measured]) -> None:
    """100 GB of raw Parquet from the two largest sizes: their marginal cost per customer (start-up excluded),
    scaled linearly and divided over the cluster's cores."""
    sizes = sorted({m.customers for m in results})
    if len(sizes) < 2:
        return
    lo, hi = sizes[-2], sizes[-1]
    gen = next(m for m in results if (m.customers, m.step, m.path) == (hi, "generate", "dask"))
    raw_mib = float(gen.detail.split()[0].replace(",", ""))
    customers = TARGET_RAW_BYTES / (raw_mib * 2**20 / hi)
    print(f"\n== extrapolation to 100 GB of raw Parquet (about {customers / 1e6:,.0f}M customers) ==")
    print(f"measured: up to {hi:,} customers ({raw_mib:,.0f} MiB raw) on {CORES} cores. Extrapolated: the rest, from the")
    print(f"marginal cost per customer between {lo:,} and {hi:,} on the engine path, linear in customers (a task's cost")
    print(f"depends on its partition only), on a cluster of {CLUSTER_CORES} worker cores with this machine's per-core speed")
    for step in STEPS:
        a, b = (next(m for m in results if (m.customers, m.step, m.path) == (n, step, "dask")) for n in (lo, hi))
        per_customer = max(b.seconds - a.seconds, 0.0) / (hi - lo)
        core_hours = per_customer * CORES * customers / 3600
        print(f"{step:<9} {core_hours:9,.1f} core-hours -> {core_hours / CLUSTER_CORES:6.2f} h on {CLUSTER_CORES} cores")


def main() -> None:
    root = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    os.environ["CHURNOPS_AUDIT_KEY_DIR"] = str(root / "audit-keys")  # the scoring runs sign with a key of this run only
    logs = root / "logs"
    logs.mkdir()
    print(f"sizes {SIZES}, blocks of {BLOCK:,} customers, {CORES} cores; work and logs under {root}")
    print(f"{'customers':>11} {'path':<6} {'step':<9} {'wall':>11} {'peak':>14}")
    results: list[Measured] = []
    tracking = None
    for n in sorted(SIZES):
        measured, tracking = measure_size(n, root, logs, tracking)
        results += measured
    report(results)
    shutil.rmtree(root)  # on a failure it stays, with the failing command's log


if __name__ == "__main__":
    main()
