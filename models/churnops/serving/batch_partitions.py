"""Batch scoring as engine tasks over partitions of the input: Parquet partitions out, one audit record each.

A partition is a run of row groups of one Parquet file (an input directory's files are partitioned each in
turn), so a task streams its rows in chunks as ``score_file`` does and memory stays bounded by the chunk. Every
task writes ``part-<index>.parquet`` into a staging directory beside the output; the directory takes the
output's name only when every partition is written, so a reader never sees half a job.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from churnops.parallel.runner import Engine
from churnops.serving.batch import BatchInputError, write_scores
from churnops.serving.batch_log import BatchLogSettings, record_chunks
from churnops.serving.explain import CompiledModel
from churnops.training.ensemble import ChurnEnsemble
from churnops.training.registry import sha256_file

PART_GLOB = "part-*.parquet"


@dataclass(frozen=True)
class Partition:
    """Row groups ``row_groups`` of ``src``: ``rows`` rows, the first of them row ``first_row`` of the whole input."""

    index: int
    src: Path
    row_groups: tuple[int, ...]
    rows: int
    first_row: int


@dataclass(frozen=True)
class PartitionJob:
    """What every task of one job shares."""

    job: str
    model_name: str
    version: str
    threshold: float
    out_dir: Path
    top_k: int = 5
    chunk_rows: int = 50_000
    threads: int = 1
    log: BatchLogSettings | None = None


@dataclass(frozen=True)
class PartitionResult:
    partition: Partition
    rows: int
    explained: bool
    output: Path
    output_sha256: str
    seconds: float


def input_files(src: Path) -> list[Path]:
    """The Parquet files of the input: the file itself, or a directory's ``*.parquet`` files in name order."""
    if src.is_dir():
        files = sorted(p for p in src.glob("*.parquet") if p.is_file())
        if not files:
            raise BatchInputError(f"{src}: no .parquet files in this directory")
        return files
    if src.suffix.lower() != ".parquet":
        raise BatchInputError(
            f"{src}: the engine scores Parquet (a file or a directory of them); score a {src.suffix} file with --engine local"
        )
    if not src.exists():
        raise BatchInputError(f"{src}: no such file")
    return [src]


def plan_partitions(src: Path, rows_per_partition: int) -> list[Partition]:
    """Runs of whole row groups of about ``rows_per_partition`` rows (a larger row group is a partition of its own)."""
    if rows_per_partition < 1:
        raise BatchInputError(f"must be at least 1, got {rows_per_partition}", field="--partition-rows")
    parts: list[Partition] = []
    first_row = 0
    for path in input_files(src):
        try:
            meta = pq.ParquetFile(path).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise BatchInputError(f"{path}: cannot read: {e}") from None
        groups: list[int] = []
        rows = 0
        for g in range(meta.num_row_groups):
            if meta.row_group(g).num_rows == 0:
                continue
            groups.append(g)
            rows += meta.row_group(g).num_rows
            if rows >= rows_per_partition:
                parts.append(Partition(len(parts), path, tuple(groups), rows, first_row))
                first_row += rows
                groups, rows = [], 0
        if groups:
            parts.append(Partition(len(parts), path, tuple(groups), rows, first_row))
            first_row += rows
    if not parts:
        raise BatchInputError(f"{src}: no rows to score")
    return parts


# The last ensemble compiled in this process: a worker receives a job's ensemble once and scores many of its
# partitions with it. One entry only, so a long-lived worker holds no model of a finished job but the last.
_last: list[CompiledModel] = []


def compiled(ensemble: ChurnEnsemble, threads: int) -> CompiledModel:
    if not _last or _last[0].model is not ensemble:
        _last[:] = [CompiledModel(ensemble, threads=threads)]
    return _last[0]


def score_partition(part: Partition, job: PartitionJob, ensemble: ChurnEnsemble) -> PartitionResult:
    """One engine task: score a partition into ``<out_dir>/part-<index>.parquet``, logging its rows when asked."""
    model = compiled(ensemble, job.threads)
    try:
        batches = pq.ParquetFile(part.src).iter_batches(batch_size=job.chunk_rows, row_groups=list(part.row_groups))
    except (pa.ArrowInvalid, OSError) as e:
        raise BatchInputError(f"{part.src}: cannot read: {e}") from None
    dst = job.out_dir / f"part-{part.index:05d}.parquet"
    plog = job.log.open() if job.log is not None else None
    try:
        on_chunk = None if plog is None else record_chunks(plog, job.model_name, job.version, model, job.job)
        report = write_scores(model, job.threshold, batches, part.rows, part.src, dst, job.top_k, None, on_chunk, part.first_row)
    finally:
        if plog is not None:
            plog.close()
    return PartitionResult(part, report.rows, report.explained, dst, sha256_file(dst), report.seconds)


def score_partitions(
    engine: Engine,
    ensemble: ChurnEnsemble,
    parts: list[Partition],
    job: PartitionJob,
    progress: Callable[[int], Any] | None = None,
) -> list[PartitionResult]:
    """Every partition as a task on ``engine``; the output directory ``job.out_dir`` appears whole or not at all."""
    out = job.out_dir
    _check_replaceable(out)
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    results: list[PartitionResult] = []
    try:
        for result in engine.map(score_partition, parts, replace(job, out_dir=staging), ensemble):
            results.append(result)
            if progress is not None:
                progress(result.rows)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        shutil.rmtree(out)
    staging.rename(out)
    return [replace(r, output=out / r.output.name) for r in results]


def _check_replaceable(out: Path) -> None:
    """An earlier job's output may be replaced; anything else at that path is the user's and stays."""
    if not out.exists():
        return
    if not out.is_dir() or any(not p.match(PART_GLOB) for p in out.iterdir()):
        raise BatchInputError(f"{out} exists and is not a directory of scored partitions; choose another --out", field="--out")


def audit_records(results: list[PartitionResult], job: PartitionJob, caller: str) -> list[dict[str, Any]]:
    """One record per partition: the digests bind each output partition to its input rows and this run."""
    digests: dict[Path, str] = {}
    records = []
    for r in results:
        src = r.partition.src
        if src not in digests:
            digests[src] = sha256_file(src)
        records.append(
            {
                "kind": "batch",
                "time": time.time(),
                "caller": caller,
                "model": job.model_name,
                "model_version": job.version,
                "input": str(src),
                "input_sha256": digests[src],
                "input_row_groups": list(r.partition.row_groups),
                "first_row": r.partition.first_row,
                "output": str(r.output),
                "output_sha256": r.output_sha256,
                "rows": r.rows,
                "reasons": r.explained,
                "job": job.job,
                "partition": r.partition.index,
                "partitions": len(results),
            }
        )
    return records
