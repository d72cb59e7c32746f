"""``churnops score``: batch scoring of a Parquet or CSV file, bound to the audit trail."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tqdm import tqdm

from churnops.cli.audit import add_key_args
from churnops.cli.common import add_engine_args, add_tracking_arg, engine_config, registry_config
from churnops_contract.registry import CHAMPION

if TYPE_CHECKING:
    from churnops.parallel.choice import EngineConfig
    from churnops.serving.batch_log import BatchLogSettings
    from churnops.training.ensemble import ChurnEnsemble


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    score = sub.add_parser("score", help="batch scoring: Parquet/CSV in, Parquet with scores and reasons out")
    score.add_argument("input", type=Path)
    score.add_argument("--out", type=Path, required=True)
    score.add_argument("--model", default=CHAMPION, help="alias, version or models:/ URI")
    add_tracking_arg(score)
    score.add_argument("--top-k", type=int, default=5, help="reasons per row (0: scores only)")
    score.add_argument("--chunk-rows", type=int, default=50_000, help="rows scored at a time (bounds memory)")
    score.add_argument(
        "--partition-rows", type=int, default=500_000, help="rows per engine task; on Dask, --out is a directory of part-NNNNN.parquet"
    )
    add_engine_args(score, size_decides=False)  # scoring streams on every core here: Dask pays off on a cluster
    score.add_argument("--audit-log", type=Path, default=None, help="audit log for the batch record (default <data-dir>/audit/batch.jsonl)")
    add_key_args(score, signing=True)
    score.add_argument("--audit-anchor-dsn", default=None, help="PostgreSQL for checkpoints of the audit log (rollback detection)")
    score.add_argument("--prediction-log", type=Path, default=None, help="Parquet segments directory (default <data-dir>/predictions)")
    score.add_argument("--prediction-log-dsn", default=None, help="PostgreSQL prediction log instead (cluster)")
    score.add_argument("--no-prediction-log", action="store_true", help="do not record the scores for monitoring")
    score.add_argument(
        "--privacy-store", type=Path, default=None, help="erased customers, left out of the log (default <data-dir>/privacy/privacy.db)"
    )
    score.add_argument("--privacy-dsn", default=None, help="PostgreSQL privacy store instead (cluster)")
    score.set_defaults(func=run)


def log_settings(args: argparse.Namespace) -> BatchLogSettings | None:
    from churnops.serving.batch_log import BatchLogSettings

    if args.no_prediction_log:
        return None
    return BatchLogSettings(
        args.data_dir, args.prediction_log or args.data_dir / "predictions", args.prediction_log_dsn, args.privacy_store, args.privacy_dsn
    )


def input_bytes(src: Path) -> int:
    if src.is_dir():
        return sum(p.stat().st_size for p in src.glob("*.parquet"))
    return src.stat().st_size if src.exists() else 0


@dataclass(frozen=True)
class Scored:
    """What a scoring path hands back: the audit records to chain and the summary to print."""

    records: list[dict[str, Any]]
    rows: int
    seconds: float
    explained: bool
    output: Path
    partitions: int = 1


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.parallel.choice import resolve
    from churnops.serving.audit_keys import signer_for
    from churnops.serving.audit_setup import AuditSettings, open_sink
    from churnops.training import registry

    audit = AuditSettings(
        args.audit_log or args.data_dir / "audit" / "batch.jsonl",
        signing_key=args.audit_signing_key,
        public_keys=args.audit_public_keys,
        anchor_dsn=args.audit_anchor_dsn,
    )
    signer = signer_for(audit.signing_key, env, audit.log.parent)  # a key problem stops the run before it scores
    engine = engine_config(args, env)
    reg = registry_config(args)
    version = registry.resolve_version(reg, args.model)
    model = Model(reg.model_name, version, registry.load_model(reg, version), registry.version_info(reg, version)["threshold"])
    job = f"batch-{uuid.uuid4().hex[:12]}"
    # a directory is scored partition by partition even in this process; a file goes to Dask when the engine says so
    size = input_bytes(args.input)
    partitioned = args.input.is_dir() or resolve(engine, size) == "dask"
    scored = score_partitioned(args, engine, size, model, job) if partitioned else score_in_process(args, model, job)
    # chained records (one per partition on the engine): the digests bind every row of the output to this run
    sink = open_sink(audit, env, fsync="always", lock_wait_s=30, signer=signer)
    try:
        head = sink.append(scored.records)
    finally:
        sink.close()
    summary = {
        "model": reg.model_name,
        "version": version,
        "rows": scored.rows,
        "seconds": round(scored.seconds, 2),
        "rows_per_minute": round(scored.rows / scored.seconds * 60) if scored.seconds > 0 else None,
        "reasons": scored.explained,
        "output": str(scored.output),
        "partitions": scored.partitions,
        "audit_seq": head.seq,
        "job": job,
    }
    print(json.dumps(summary, indent=2))
    return 0


@dataclass(frozen=True)
class Model:
    name: str
    version: str
    ensemble: ChurnEnsemble
    threshold: float


def score_in_process(args: argparse.Namespace, model: Model, job: str) -> Scored:
    """One file in, one file out, every core on each chunk."""
    from churnops.serving.batch import score_file
    from churnops.serving.batch_log import record_chunks
    from churnops.serving.explain import CompiledModel
    from churnops.training.registry import sha256_file

    compiled = CompiledModel(model.ensemble, threads=os.cpu_count() or 1)
    settings = log_settings(args)
    plog = None if settings is None else settings.open()
    try:
        with tqdm(desc="batch scoring", unit="row", unit_scale=True) as bar:

            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)

            on_chunk = None if plog is None else record_chunks(plog, model.name, model.version, compiled, job)
            report = score_file(compiled, model.threshold, args.input, args.out, args.chunk_rows, args.top_k, progress, on_chunk)
    finally:
        if plog is not None:
            plog.close()
    record = {
        "kind": "batch",
        "time": time.time(),
        "caller": getpass.getuser(),
        "model": model.name,
        "model_version": model.version,
        "input": str(args.input),
        "input_sha256": sha256_file(args.input),
        "output": str(report.output),
        "output_sha256": sha256_file(report.output),
        "rows": report.rows,
        "reasons": report.explained,
        "job": job,
    }
    return Scored([record], report.rows, report.seconds, report.explained, report.output)


def score_partitioned(args: argparse.Namespace, engine: EngineConfig, size: int, model: Model, job: str) -> Scored:
    """Partitions of the input as engine tasks; ``--out`` becomes a directory of ``part-NNNNN.parquet``."""
    from churnops.parallel.runner import open_engine
    from churnops.serving.batch_partitions import PartitionJob, audit_records, plan_partitions, score_partitions

    parts = plan_partitions(args.input, args.partition_rows)
    began = time.perf_counter()
    with open_engine(engine, size) as runner:
        settings = PartitionJob(
            job,
            model.name,
            model.version,
            model.threshold,
            args.out,
            args.top_k,
            args.chunk_rows,
            threads=(os.cpu_count() or 1) if runner.name == "local" else 1,
            log=log_settings(args),
        )
        total = sum(p.rows for p in parts)
        with tqdm(
            total=total, desc=f"batch scoring ({runner.name} × {runner.workers}, {len(parts)} partitions)", unit="row", unit_scale=True
        ) as bar:
            results = score_partitions(runner, model.ensemble, parts, settings, bar.update)
    seconds = time.perf_counter() - began
    explained = all(r.explained for r in results)
    return Scored(audit_records(results, settings, getpass.getuser()), total, seconds, explained, args.out, len(results))
