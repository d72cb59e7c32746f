"""Wiring of the online predictor: registry + feature store + audit + guards into a KServe ModelServer.

Everything is built from ``ServeConfig`` at the entry point. The same code runs
as a local process (embedded mode: SQLite online store, file audit log) and
in the cluster image behind an InferenceService (Redis, PostgreSQL audit).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from churnops_features import store as feast_store
from churnops_features.definitions import TRAINING_SERVICE
from churnops_features.online import FeatureReader, redis_reader, sqlite_reader
from churnops_models import registry
from churnops_models.features import FEATURES
from churnops_models.serving.audit import AuditSink, FileAuditSink, FsyncPolicy, PostgresAuditSink
from churnops_models.serving.inputs import FeatureSchema
from churnops_models.serving.metrics import ServingMetrics
from churnops_models.serving.scoring import Breaker, OnFailure, Scorer, ServedModel, ServingError, ServingPolicy
from churnops_models.serving.security import AuthConfig, Limits

log = logging.getLogger(__name__)

STORE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, sqlite3.Error, OSError)


@dataclass(frozen=True)
class ServeConfig:
    data_dir: Path
    models: tuple[str, ...] = ("champion",)  # aliases, versions or models:/ URIs; each is served under its own name
    tracking_uri: str | None = None  # default: the embedded registry under data_dir
    feature_mode: feast_store.Mode = "embedded"
    feature_service: str = TRAINING_SERVICE
    http_port: int = 8080
    auth: AuthConfig | None = None  # None: no authentication (only with --insecure-no-auth)
    limits: Limits = field(default_factory=Limits)
    on_store_failure: OnFailure = "degrade"
    store_timeout_s: float = 0.05
    breaker_cooldown_s: float = 2.0
    audit_log: Path | None = None  # default: data_dir/audit/predictions.jsonl
    audit_dsn: str | None = None  # PostgreSQL audit sink (cluster); wins over audit_log
    fsync: FsyncPolicy = "interval"

    def registry(self) -> registry.RegistryConfig:
        if self.tracking_uri:
            return registry.RegistryConfig(tracking_uri=self.tracking_uri)
        return registry.RegistryConfig.embedded(self.data_dir)


def served_name(ref: str) -> str:
    """URL name of a served model: the alias itself, or ``v<version>``."""
    if ref.startswith("models:/"):
        ref = ref.rsplit("@", 1)[-1] if "@" in ref else ref.rsplit("/", 1)[-1]
    return f"v{ref}" if ref.isdigit() else ref


def feature_schema(model_features: list[str], categorical: list[str]) -> FeatureSchema:
    return FeatureSchema(tuple(model_features), frozenset(categorical), frozenset(f.name for f in FEATURES))


def redis_client(env: Mapping[str, str], timeout_s: float) -> redis.Redis:
    """The online store's Redis with the request budget as socket timeouts (no retries inside a request)."""
    host, _, port = env.get("CHURNOPS_REDIS", "127.0.0.1:6379").split(",")[0].partition(":")
    # no retries: a retry would spend the request's budget twice
    return redis.Redis(
        host=host, port=int(port or 6379), socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0)
    )


ReaderFactory = Callable[[list[str]], FeatureReader]


def feature_readers(cfg: ServeConfig, env: Mapping[str, str]) -> ReaderFactory:
    """Opens the store once; each model gets a reader of just its own features (fewer bytes, fewer decodes)."""
    store = feast_store.open_store(cfg.feature_mode, env, cfg.data_dir)
    if cfg.feature_mode == "cluster":
        client = redis_client(env, cfg.store_timeout_s)
        return lambda only: redis_reader(store, cfg.feature_service, client, only)
    return lambda only: sqlite_reader(store, cfg.feature_service, only)


def audit_sink(cfg: ServeConfig) -> AuditSink:
    if cfg.audit_dsn:
        return PostgresAuditSink(cfg.audit_dsn)
    return FileAuditSink(cfg.audit_log or cfg.data_dir / "audit" / "predictions.jsonl", fsync=cfg.fsync)


def load_scorer(cfg: ServeConfig, ref: str, readers: ReaderFactory, audit: AuditSink, metrics: ServingMetrics, breaker: Breaker) -> Scorer:
    """Resolve ``ref`` in the registry, download and verify the artifact, compile it for serving."""
    reg = cfg.registry()
    version = registry.resolve_version(reg, ref)
    model = registry.load_model(reg, version)  # raises ModelIntegrityError on a sha256 mismatch
    info = registry.version_info(reg, version)
    alias = ref if not ref.isdigit() and not ref.startswith("models:/") else None
    served = ServedModel(reg.model_name, version, alias, model, info["threshold"], info["run_id"])
    scorer = Scorer(
        served,
        feature_schema(model.feature_names, model.categorical),
        readers(list(model.feature_names)),
        STORE_ERRORS,
        audit,
        metrics,
        ServingPolicy(on_store_failure=cfg.on_store_failure),
        breaker,
    )
    metrics.info.labels(reg.model_name, version, alias or "").set(1)
    log.info(
        "serving %s v%s as %s (threshold %.3f, %d features)",
        reg.model_name,
        version,
        served_name(ref),
        served.threshold,
        len(model.feature_names),
    )
    return scorer


async def serving_error_handler(_: Any, exc: ServingError) -> Any:
    from fastapi.responses import JSONResponse  # noqa: PLC0415 - FastAPI comes with KServe, imported by serve() only

    headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after else None
    return JSONResponse(status_code=exc.status, content={"error": exc.message}, headers=headers)


def count_errors(metrics: ServingMetrics, names: set[str]) -> Any:
    def on_error(path: str, status: int) -> None:
        parts = path.split("/")
        model = next((p.split(":")[0] for p in parts[3:4] if p.split(":")[0] in names), "-")
        metrics.errors.labels(model, str(status)).inc()

    return on_error


def serve(cfg: ServeConfig, env: Mapping[str, str]) -> None:
    """Start the ModelServer and block. KServe reads sys.argv when imported, so it only sees a clean one."""
    sys.argv = sys.argv[:1]
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # more threads than cores make tail latency erratic
    from kserve import ModelServer  # noqa: PLC0415 - see above
    from kserve.model_server import app  # noqa: PLC0415
    from prometheus_client import REGISTRY  # noqa: PLC0415

    from churnops_models.serving.openapi import spec  # noqa: PLC0415
    from churnops_models.serving.predictor import ChurnModel  # noqa: PLC0415
    from churnops_models.serving.security import GuardMiddleware, RateLimiter  # noqa: PLC0415

    metrics = ServingMetrics(REGISTRY)
    readers = feature_readers(cfg, env)
    audit = audit_sink(cfg)
    breaker = Breaker(cfg.breaker_cooldown_s)
    models = []
    for ref in cfg.models:
        model = ChurnModel(served_name(ref), lambda ref=ref: load_scorer(cfg, ref, readers, audit, metrics, breaker))  # type: ignore[misc]
        model.load()
        models.append(model)
    ready = [m for m in models if m.ready]
    if not ready:
        raise SystemExit("no model could be loaded: " + "; ".join(f"{m.name}: {m.load_error}" for m in models))
    names = [m.name for m in models]
    first = ready[0].scorer
    assert first is not None
    document = spec(first.schema, names, first.served.version)
    app.openapi = lambda: document
    app.add_exception_handler(ServingError, serving_error_handler)
    app.add_middleware(
        GuardMiddleware,
        auth=cfg.auth,
        limits=cfg.limits,
        limiter=RateLimiter(cfg.limits.rate_per_s, cfg.limits.burst),
        on_error=count_errors(metrics, set(names)),
    )
    server = ModelServer(http_port=cfg.http_port, enable_grpc=False, workers=1, enable_docs_url=False)
    for m in models:
        server.register_model(m)  # unready ones too: they answer 503 and fail readiness instead of vanishing
    print(
        f"ChurnOps predictor on http://127.0.0.1:{cfg.http_port}: "
        + ", ".join(f"{m.name} ({'ready' if m.ready else 'NOT READY'})" for m in models),
        flush=True,
    )
    try:
        server.start([])
    finally:
        audit.close()
