"""CLI commands for serving: ``serve``, ``score`` (batch), ``token`` and ``audit verify``."""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import time
from collections.abc import Mapping
from pathlib import Path

from tqdm import tqdm

from churnops_models import registry
from churnops_models.registry import sha256_file
from churnops_models.serving.audit import FileAuditSink, verify_file, verify_postgres
from churnops_models.serving.security import AuthConfig, Limits, issue_token

SECRET_ENV = "CHURNOPS_JWT_SECRET"


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run the online predictor (KServe ModelServer, V1 + V2)")
    serve.add_argument(
        "--model", action="append", dest="models", help="alias, version or models:/ URI; repeat to serve several (default champion)"
    )
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument(
        "--mode", choices=["embedded", "cluster"], default="embedded", help="online store: SQLite (embedded) or Redis (cluster)"
    )
    serve.add_argument("--tracking-uri", default=None, help="MLflow registry (default: embedded SQLite under --data-dir)")
    _add_auth_args(serve)
    serve.add_argument("--insecure-no-auth", action="store_true", help="serve without authentication (local experiments only)")
    serve.add_argument("--on-store-failure", choices=["degrade", "reject"], default="degrade", help="answer flagged as degraded, or 503")
    serve.add_argument("--store-timeout-ms", type=float, default=50.0, help="online store budget per request")
    serve.add_argument("--max-body-bytes", type=int, default=1 << 20)
    serve.add_argument("--rate", type=float, default=2000.0, help="sustained requests/s per token subject")
    serve.add_argument("--burst", type=int, default=400, help="burst size per token subject")
    serve.add_argument("--audit-log", type=Path, default=None, help="audit log file (default <data-dir>/audit/predictions.jsonl)")
    serve.add_argument("--audit-dsn", default=None, help="PostgreSQL DSN for the audit trail (cluster); overrides --audit-log")
    serve.add_argument("--fsync", choices=["always", "interval", "never"], default="interval", help="when audit records reach the disk")

    score = sub.add_parser("score", help="batch scoring: Parquet/CSV in, Parquet with scores and reasons out")
    score.add_argument("input", type=Path)
    score.add_argument("--out", type=Path, required=True)
    score.add_argument("--model", default="champion", help="alias, version or models:/ URI")
    score.add_argument("--tracking-uri", default=None)
    score.add_argument("--top-k", type=int, default=5, help="reasons per row (0: scores only)")
    score.add_argument("--chunk-rows", type=int, default=50_000)
    score.add_argument("--audit-log", type=Path, default=None, help="audit log for the batch record (default <data-dir>/audit/batch.jsonl)")

    token = sub.add_parser("token", help="issue a JWT for the predictor (HMAC secret)")
    token.add_argument("--subject", required=True)
    token.add_argument("--role", action="append", dest="roles", required=True, help="viewer, predictor, deployer or admin")
    token.add_argument("--ttl-seconds", type=int, default=3600)
    _add_auth_args(token)

    audit = sub.add_parser("audit", help="the prediction audit trail").add_subparsers(dest="action", required=True)
    verify = audit.add_parser("verify", help="check the hash chain and its head (edits, deletions, reordering, truncation)")
    verify.add_argument("--log", type=Path, default=None, help="audit log file (default <data-dir>/audit/predictions.jsonl)")
    verify.add_argument("--dsn", default=None, help="PostgreSQL audit trail instead of a file")


def _add_auth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--jwt-secret-file", type=Path, default=None, help=f"HMAC secret (default: ${SECRET_ENV}, else <data-dir>/secrets/jwt.key)"
    )
    p.add_argument("--jwt-public-key-file", type=Path, default=None, help="PEM public key for RS256/ES256 tokens from an identity provider")
    p.add_argument("--jwt-algorithm", default=None, help="pinned algorithm (default HS256, or RS256 with a public key)")
    p.add_argument("--audience", default="churnops")


def auth_config(args: argparse.Namespace, env: Mapping[str, str]) -> AuthConfig:
    if args.jwt_public_key_file is not None:
        return AuthConfig(key=args.jwt_public_key_file.read_text(), audience=args.audience, algorithm=args.jwt_algorithm or "RS256")
    if args.jwt_secret_file is not None:
        key = args.jwt_secret_file.read_text().strip()
    elif env.get(SECRET_ENV):
        key = env[SECRET_ENV]
    else:
        key = _local_secret(args.data_dir / "secrets" / "jwt.key")
    return AuthConfig(key=key, audience=args.audience, algorithm=args.jwt_algorithm or "HS256")


def _local_secret(path: Path) -> str:
    """The embedded mode's HMAC secret, created once with owner-only permissions."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()


def dispatch(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    if args.command == "serve":
        from churnops_pipelines.serving import ServeConfig, serve  # noqa: PLC0415 - KServe parses argv on import

        cfg = ServeConfig(
            data_dir=args.data_dir,
            models=tuple(args.models or ["champion"]),
            tracking_uri=args.tracking_uri,
            feature_mode=args.mode,
            http_port=args.port,
            auth=None if args.insecure_no_auth else auth_config(args, env),
            limits=Limits(max_body_bytes=args.max_body_bytes, rate_per_s=args.rate, burst=args.burst),
            on_store_failure=args.on_store_failure,
            store_timeout_s=args.store_timeout_ms / 1000,
            audit_log=args.audit_log,
            audit_dsn=args.audit_dsn,
            fsync=args.fsync,
        )
        serve(cfg, env)
        return 0
    if args.command == "score":
        return _score(args)
    if args.command == "token":
        print(issue_token(auth_config(args, env), args.subject, args.roles, args.ttl_seconds))
        return 0
    result = verify_postgres(args.dsn) if args.dsn else verify_file(args.log or args.data_dir / "audit" / "predictions.jsonl")
    status = "OK" if result.ok else "TAMPERED"
    print(f"audit trail {status}: {result.records:,} records checked")
    if result.unacknowledged:
        print(f"note: {result.unacknowledged} valid record(s) after the stored head (a crash between append and head update)")
    for problem in result.problems:
        print(f"  - {problem}")
    return 0 if result.ok else 1


def _score(args: argparse.Namespace) -> int:
    from churnops_models.serving.batch import score_file  # noqa: PLC0415 - keeps `churnops --help` fast
    from churnops_models.serving.explain import CompiledModel  # noqa: PLC0415

    reg = registry.RegistryConfig(tracking_uri=args.tracking_uri) if args.tracking_uri else registry.RegistryConfig.embedded(args.data_dir)
    version = registry.resolve_version(reg, args.model)
    model = CompiledModel(registry.load_model(reg, version), threads=os.cpu_count() or 1)
    threshold = registry.version_info(reg, version)["threshold"]
    with tqdm(desc="batch scoring", unit="row", unit_scale=True) as bar:

        def progress(done: int, total: int | None) -> None:
            bar.total = total
            bar.update(done - bar.n)

        report = score_file(model, threshold, args.input, args.out, args.chunk_rows, args.top_k, progress)
    # one chained record per batch: the digests bind every row of the output to this run
    sink = FileAuditSink(args.audit_log or args.data_dir / "audit" / "batch.jsonl", fsync="always")
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
            }
        ]
    )
    sink.close()
    print(
        json.dumps(
            {
                "model": reg.model_name,
                "version": version,
                "rows": report.rows,
                "seconds": round(report.seconds, 2),
                "rows_per_minute": round(report.rows_per_minute),
                "reasons": report.explained,
                "output": str(report.output),
                "audit_seq": head.seq,
            },
            indent=2,
        )
    )
    return 0
