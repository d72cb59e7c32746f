"""``churnops score``: batch scoring of a Parquet or CSV file, bound to the audit trail."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from tqdm import tqdm

from churnops.cli.audit import add_key_args
from churnops.cli.common import add_tracking_arg, registry_config
from churnops_contract.registry import CHAMPION

if TYPE_CHECKING:
    import pandas as pd

    from churnops.monitoring.predlog.writer import PredictionLog
    from churnops.serving.explain import CompiledModel


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    score = sub.add_parser("score", help="batch scoring: Parquet/CSV in, Parquet with scores and reasons out")
    score.add_argument("input", type=Path)
    score.add_argument("--out", type=Path, required=True)
    score.add_argument("--model", default=CHAMPION, help="alias, version or models:/ URI")
    add_tracking_arg(score)
    score.add_argument("--top-k", type=int, default=5, help="reasons per row (0: scores only)")
    score.add_argument("--chunk-rows", type=int, default=50_000)
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


def batch_log(args: argparse.Namespace) -> PredictionLog:
    from prometheus_client import CollectorRegistry

    from churnops.monitoring.predlog.parquet import ParquetStore
    from churnops.monitoring.predlog.postgres import PostgresStore
    from churnops.monitoring.predlog.writer import PredictionLog
    from churnops.privacy.cached import Suppression
    from churnops.privacy.store import open_store

    store = (
        PostgresStore(args.prediction_log_dsn)
        if args.prediction_log_dsn
        else ParquetStore(args.prediction_log or args.data_dir / "predictions")
    )
    # erased customers in the input are scored (the output is the caller's) but never logged for monitoring
    suppression = Suppression(open_store(args.data_dir, args.privacy_dsn, args.privacy_store))
    return PredictionLog(store, CollectorRegistry(), flush_interval_s=5.0, suppressor=suppression)


def record_chunks(plog: PredictionLog, model_name: str, version: str, model: CompiledModel, job: str) -> Callable[..., None]:
    """The scorer's per-chunk hook: every scored row goes to the prediction log (request ids ``<job>/<row>``)."""
    from churnops.monitoring.predlog.records import SOURCE_BATCH, FeatureLayout, PredictionBatch

    layout = FeatureLayout(tuple(model.features), frozenset(model.categorical))

    def record(inputs: pd.DataFrame, scored: pd.DataFrame, first_row: int) -> None:
        ids = inputs["customer_id"].tolist() if "customer_id" in inputs else [None] * len(inputs)
        batch = PredictionBatch(
            model_name,
            version,
            layout,
            ids,
            scored["churn_probability"].to_numpy(),
            scored["risk_band"].to_numpy(),
            [f"{job}/{first_row + i}" for i in range(len(inputs))],
            inputs[list(layout.names)],
            time.time(),
            source=SOURCE_BATCH,
        )
        plog.record_many(batch, timeout_s=60)  # a batch job may wait for room rather than drop

    return record


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.serving.audit_keys import signer_for
    from churnops.serving.audit_setup import AuditSettings, open_sink
    from churnops.serving.batch import score_file
    from churnops.serving.explain import CompiledModel
    from churnops.training import registry
    from churnops.training.registry import sha256_file

    audit = AuditSettings(
        args.audit_log or args.data_dir / "audit" / "batch.jsonl",
        signing_key=args.audit_signing_key,
        public_keys=args.audit_public_keys,
        anchor_dsn=args.audit_anchor_dsn,
    )
    signer = signer_for(audit.signing_key, env, audit.log.parent)  # a key problem stops the run before it scores
    reg = registry_config(args)
    version = registry.resolve_version(reg, args.model)
    model = CompiledModel(registry.load_model(reg, version), threads=os.cpu_count() or 1)
    threshold = registry.version_info(reg, version)["threshold"]
    job = f"batch-{uuid.uuid4().hex[:12]}"
    plog = None if args.no_prediction_log else batch_log(args)
    try:
        with tqdm(desc="batch scoring", unit="row", unit_scale=True) as bar:

            def progress(done: int, total: int | None) -> None:
                bar.total = total
                bar.update(done - bar.n)

            on_chunk = None if plog is None else record_chunks(plog, reg.model_name, version, model, job)
            report = score_file(model, threshold, args.input, args.out, args.chunk_rows, args.top_k, progress, on_chunk)
    finally:
        if plog is not None:
            plog.close()
    # one chained record per batch: the digests bind every row of the output to this run
    sink = open_sink(audit, env, fsync="always", lock_wait_s=30, signer=signer)
    try:
        head = sink.append(
            [
                {
                    "kind": "batch",
                    "time": time.time(),
                    "caller": getpass.getuser(),
                    "model": reg.model_name,
                    "model_version": version,
                    "input": str(args.input),
                    "input_sha256": sha256_file(args.input),
                    "output": str(report.output),
                    "output_sha256": sha256_file(report.output),
                    "rows": report.rows,
                    "reasons": report.explained,
                    "job": job,
                }
            ]
        )
    finally:
        sink.close()
    summary = {
        "model": reg.model_name,
        "version": version,
        "rows": report.rows,
        "seconds": round(report.seconds, 2),
        "rows_per_minute": round(report.rows_per_minute),
        "reasons": report.explained,
        "output": str(report.output),
        "audit_seq": head.seq,
        "job": job,
    }
    print(json.dumps(summary, indent=2))
    return 0
