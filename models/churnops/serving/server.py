"""Wiring of the online predictor: registry + feature store + audit + guards into a KServe ModelServer.

Everything is built from ``ServeConfig`` at the entry point. The same code runs
as a local process (embedded mode: SQLite online store, file audit log) and
in the cluster image behind an InferenceService (Redis, PostgreSQL audit).
With ``--workers N`` the entry point forks N such processes behind one port
(``churnops.serving.workers``), and each builds everything here for itself.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
import os
import sqlite3
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from churnops.errors import ChurnOpsError, ConfigError, NotFoundError
from churnops.features.catalog import FEATURES
from churnops.monitoring.live import DriftCollector, LiveDriftMonitor, LiveWindow
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import LogStore, Pacer
from churnops.monitoring.predlog.writer import PredictionLog
from churnops.monitoring.profile import load_profile
from churnops.privacy.cached import Pseudonyms, Suppression
from churnops.privacy.store import PrivacyStore, open_store
from churnops.serving.audit import AuditSink, FsyncPolicy
from churnops.serving.audit_setup import AuditSettings, open_sink
from churnops.serving.auth import AuthConfig, KeyDirectory
from churnops.serving.inputs import FeatureSchema
from churnops.serving.instruments import ServingMetrics
from churnops.serving.reasons import ReasonsStore, model_key
from churnops.serving.routing_table import default_path
from churnops.serving.scoring import Breaker, OnFailure, Scorer, ServedModel, ServingPolicy
from churnops.serving.security import HttpLimits, Limits
from churnops.serving.workers import MetricsFanIn, Supervisor, Worker, audit_log_for
from churnops.training import registry
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import FeatureReader, ReadOverBudget, RedisFeatureReader, redis_reader, sqlite_reader

log = logging.getLogger(__name__)

STORE_ERRORS: tuple[type[BaseException], ...] = (redis.RedisError, sqlite3.Error, OSError)
REQUEST_STORE_ERRORS: tuple[type[BaseException], ...] = (ReadOverBudget,)  # fail their request, never open the breaker


@dataclass(frozen=True)
class ServeConfig:
    data_dir: Path
    models: tuple[str, ...] = ("champion",)  # aliases, versions or models:/ URIs; each is served under its own name
    tracking_uri: str | None = None  # default: the embedded registry under data_dir
    feature_mode: feast_store.Mode = "embedded"
    feature_service: str = TRAINING_SERVICE
    http_port: int = 8080
    host: str = "127.0.0.1"  # loopback in embedded mode; a pod binds all addresses
    auth: AuthConfig | None = None  # None: no authentication (only with --insecure-no-auth)
    limits: Limits = field(default_factory=Limits)
    http_limits: HttpLimits = field(default_factory=HttpLimits)  # header bounds and read timeouts of the HTTP layer
    max_connections: int | None = None  # open connections per worker (default churnops.serving.http.DEFAULT_MAX_CONNECTIONS)
    metrics_max_age_s: float = 1.0  # /metrics is rendered at most this often (concurrent scrapes share a rendering)
    on_store_failure: OnFailure = "degrade"
    store_timeout_s: float = 0.05
    breaker_cooldown_s: float = 2.0
    audit_log: Path | None = None  # default: data_dir/audit/predictions.jsonl
    audit_dsn: str | None = None  # PostgreSQL audit sink (cluster); wins over audit_log
    audit_signing_key: Path | None = None  # default: $CHURNOPS_AUDIT_SIGNING_KEY, else the embedded key outside data_dir
    audit_public_keys: Path | None = None  # default: $CHURNOPS_AUDIT_PUBLIC_KEYS, else the embedded key directory
    audit_anchor_dsn: str | None = None  # checkpoints of the audit log in PostgreSQL (rollback detection)
    fsync: FsyncPolicy = "interval"
    privacy_store: Path | None = None  # subject keys and erased customers; default: data_dir/privacy/privacy.db (never in the audit dir)
    privacy_dsn: str | None = None  # PostgreSQL privacy store (cluster); wins over privacy_store
    prediction_log_enabled: bool = True
    prediction_log: Path | None = None  # default: data_dir/predictions (Parquet segments)
    prediction_log_dsn: str | None = None  # PostgreSQL prediction log (cluster); wins over prediction_log
    prediction_log_flush_s: float = 1.0  # a crash loses at most the records of one flush interval
    drift_window: int = 10_000  # predictions in the live drift window (ten sub-windows slide through it)
    kserve_options: Mapping[str, Any] = field(default_factory=dict)  # KServe ModelServer options parsed by its own parser
    model_name: str | None = None  # one served version under a fixed URL name (KServe's --model_name): stable and canary alike
    route: str | None = None  # an endpoint split between a stable and a canary version by a routing table (the embedded rollout)
    routing_table: Path | None = None  # default: data_dir/rollout/<route>/routing.json, where `churnops rollout` writes it
    route_seed: int | None = None  # seeds the router's per-request draws (reproducible splits)

    def table_path(self) -> Path:
        assert self.route is not None
        return self.routing_table or default_path(self.data_dir, self.route)

    def registry(self) -> registry.RegistryConfig:
        if self.tracking_uri:
            return registry.config_for(self.tracking_uri)
        return registry.RegistryConfig.embedded(self.data_dir)


def served_name(ref: str) -> str:
    """URL name of a served model: the alias itself, or ``v<version>``."""
    if ref.startswith("models:/"):
        ref = ref.rsplit("@", 1)[-1] if "@" in ref else ref.rsplit("/", 1)[-1]
    return f"v{ref}" if ref.isdigit() else ref


def feature_schema(model_features: list[str], categorical: list[str]) -> FeatureSchema:
    return FeatureSchema(tuple(model_features), frozenset(categorical), frozenset(f.name for f in FEATURES))


def redis_options(connection: str) -> dict[str, Any]:
    """Feast's Redis connection string, ``host:port[,password=…][,ssl=true][,db=N]``, as redis-py options."""
    address, *settings = [part.strip() for part in connection.split(",")]
    host, _, port = address.partition(":")
    options: dict[str, Any] = {"host": host or "127.0.0.1", "port": int(port or 6379)}
    for setting in settings:
        key, sep, value = setting.partition("=")
        if not sep:
            raise ConfigError(f"expected key=value, got {setting!r}", field="CHURNOPS_REDIS")
        if key == "password":
            options["password"] = value
        elif key == "ssl":
            options["ssl"] = value.lower() in ("1", "true", "yes")
        elif key == "db":
            options["db"] = int(value)
        elif key == "username":
            options["username"] = value
        else:
            raise ConfigError(f"unknown setting {key!r} (password, username, ssl, db)", field="CHURNOPS_REDIS")
    return options


def redis_client(env: Mapping[str, str], timeout_s: float) -> redis.Redis:
    """The online store's Redis with the request budget as socket timeouts (no retries inside a request)."""
    options = redis_options(env.get("CHURNOPS_REDIS", "127.0.0.1:6379"))
    # no retries: a retry would spend the request's budget twice
    return redis.Redis(**options, socket_timeout=timeout_s, socket_connect_timeout=timeout_s, retry=Retry(NoBackoff(), 0))


ReaderFactory = Callable[[list[str]], FeatureReader]


def store_name(cfg: ServeConfig) -> str:
    return "redis" if cfg.feature_mode == "cluster" else "sqlite"


def feature_readers(cfg: ServeConfig, env: Mapping[str, str]) -> ReaderFactory:
    """Opens the store once; each model gets a reader of just its own features (fewer bytes, fewer decodes)."""
    store = feast_store.open_store(cfg.feature_mode, env, cfg.data_dir)
    if cfg.feature_mode == "cluster":
        client = redis_client(env, cfg.store_timeout_s)
        return lambda only: redis_reader(store, cfg.feature_service, client, only)
    return lambda only: sqlite_reader(store, cfg.feature_service, only, timeout_s=cfg.store_timeout_s)


def store_state(metrics: ServingMetrics, store: str, policy: OnFailure) -> Callable[[bool], None]:
    """Reports the online store going down and coming back: ``churnops_online_store_up{store}`` and one log line each."""
    gauge = metrics.store_up.labels(store)
    gauge.set(1)

    def on_change(up: bool) -> None:
        gauge.set(1 if up else 0)
        if up:
            log.info("online store %s answers again", store)
        elif policy == "reject":
            log.warning("online store %s is down: requests that need it get 503 and the server reports not ready", store)
        else:
            log.warning("online store %s is down: predictions that need it are served degraded", store)

    return on_change


def store_readiness(cfg: ServeConfig, breaker: Breaker, scorers: Callable[[], list[Scorer]]) -> Callable[[], Awaitable[bool]] | None:
    """Readiness's say on the store: none when failures degrade (the server still answers); with ``reject`` the
    server is not ready while the store is down, and each probe past the breaker's cooldown tries the store (on a
    thread), so the server comes back by itself without traffic."""
    if cfg.on_store_failure != "reject":
        return None

    async def ready() -> bool:
        if breaker.up:
            return True
        found = scorers()
        return await asyncio.to_thread(found[0].probe_store) if found else False

    return ready


def privacy_store(cfg: ServeConfig) -> PrivacyStore:
    return open_store(cfg.data_dir, cfg.privacy_dsn, cfg.privacy_store)


def prediction_log(cfg: ServeConfig, registry: Any, privacy: PrivacyStore) -> PredictionLog | None:
    """The monitoring log of every prediction: PostgreSQL in the cluster, Parquet segments under the data dir otherwise."""
    if not cfg.prediction_log_enabled:
        return None
    if cfg.prediction_log_dsn:
        store: LogStore = PostgresStore(cfg.prediction_log_dsn)
    else:
        store = ParquetStore(cfg.prediction_log or cfg.data_dir / "predictions")
    # paced: the flusher shares the interpreter with the event loop, and a request must not wait out a whole flush
    return PredictionLog(store, registry, flush_interval_s=cfg.prediction_log_flush_s, suppressor=Suppression(privacy), pacer=Pacer())


def audit_log(cfg: ServeConfig) -> Path:
    return cfg.audit_log or cfg.data_dir / "audit" / "predictions.jsonl"


def audit_sink(cfg: ServeConfig, env: Mapping[str, str]) -> AuditSink:
    settings = AuditSettings(
        audit_log(cfg),
        cfg.audit_dsn,
        cfg.audit_signing_key,
        cfg.audit_public_keys,
        cfg.audit_anchor_dsn,
    )
    return open_sink(settings, env, fsync=cfg.fsync)


@dataclass(frozen=True)
class Shared:
    """What every served model of one process shares: store readers, audit trail, metrics, breaker, prediction log, pseudonyms."""

    readers: ReaderFactory
    audit: AuditSink
    metrics: ServingMetrics
    breaker: Breaker
    prediction_log: PredictionLog | None
    pseudonyms: Pseudonyms | None = None


def drift_monitor(reg: registry.RegistryConfig, version: str, features: list[str], window: int) -> LiveDriftMonitor | None:
    """Live drift against the version's reference profile; None when ``window`` is 0 (off) or the version has no profile."""
    if window <= 0:
        return None
    try:
        profile = load_profile(reg.tracking_uri, reg.model_name, version)
    except NotFoundError as e:
        log.warning("model %s v%s: no live drift (%s)", reg.model_name, version, e)
        return None
    slots = 10
    return LiveDriftMonitor(profile, features, model=reg.model_name, version=version, window=LiveWindow(max(1, window // slots), slots))


def reasons_store(source: FeatureReader, served: ServedModel) -> ReasonsStore | None:
    """Precomputed reasons live next to the features in Redis; they need the artifact's digest to name the model."""
    if not isinstance(source, RedisFeatureReader) or served.fingerprint is None:
        return None
    key = model_key(served.registered_model, served.version, served.fingerprint)
    return ReasonsStore(source, key, len(served.model.feature_names))


def load_scorer(cfg: ServeConfig, ref: str, shared: Shared) -> Scorer:
    """Resolve ``ref`` in the registry, download and verify the artifact, compile it for serving."""
    reg = cfg.registry()
    version = registry.resolve_version(reg, ref)
    model = registry.load_model(reg, version)  # raises ModelIntegrityError on a sha256 mismatch
    info = registry.version_info(reg, version)
    alias = ref if not ref.isdigit() and not ref.startswith("models:/") else None
    fingerprint = registry.recorded_sha256(info)
    served = ServedModel(reg.model_name, version, alias, model, info["threshold"], info["run_id"], fingerprint)
    source = shared.readers(list(model.feature_names))
    scorer = Scorer(
        served,
        feature_schema(model.feature_names, model.categorical),
        source,
        STORE_ERRORS,
        shared.audit,
        shared.metrics,
        ServingPolicy(on_store_failure=cfg.on_store_failure),
        shared.breaker,
        shared.prediction_log,
        drift_monitor(reg, version, model.feature_names, cfg.drift_window),
        shared.pseudonyms,
        REQUEST_STORE_ERRORS,
        reasons_store(source, served),
    )
    scorer.start_warming()
    shared.metrics.info.labels(reg.model_name, version, alias or "").set(1)
    shared.metrics.reference(reg.model_name, version, info["metrics"])
    log.info(
        "serving %s v%s as %s (threshold %.3f, %d features)",
        reg.model_name,
        version,
        served_name(ref),
        served.threshold,
        len(model.feature_names),
    )
    return scorer


def model_server_options(options: Mapping[str, Any], server_type: type) -> dict[str, Any]:
    """The KServe ModelServer constructor arguments among the parsed options; each worker is one KServe process."""
    accepted = set(inspect.signature(server_type).parameters) - {"http_port", "workers"}
    return {k: v for k, v in options.items() if k in accepted}


def worker_count(options: Mapping[str, Any]) -> int:
    """KServe's ``--workers``: processes behind the port (one per core: a process scores on one core at a time)."""
    count = int(options.get("workers", 1) or 1)
    if count < 1:
        raise ConfigError(f"at least one worker, got {count}", field="--workers")
    return count


def for_worker(cfg: ServeConfig, index: int) -> ServeConfig:
    """Worker ``index``'s configuration: a file audit trail of its own (one writer per chain); a PostgreSQL trail is
    one chain the workers extend in turn, as replicas do."""
    return replace(cfg, audit_log=audit_log_for(audit_log(cfg), index))


def check(cfg: ServeConfig) -> None:
    """What no worker could serve, refused before any starts."""
    if cfg.max_connections is not None and cfg.max_connections < 1:
        raise ConfigError(f"at least one connection, got {cfg.max_connections}", field="--max-connections")
    if cfg.model_name and len(cfg.models) != 1:
        raise ConfigError("serves exactly one --model under a fixed name", field="--model_name")
    if cfg.route is not None and cfg.route in {cfg.model_name or served_name(ref) for ref in cfg.models}:
        raise ConfigError(f"the route's name {cfg.route!r} is also the name of a --model", field="--route")


def count_errors(metrics: ServingMetrics, labels_of: Callable[[str], tuple[str, str] | None]) -> Callable[[str, int], None]:
    """Counts every error status under the model and version it concerns, so a canary's errors are told from the stable's.

    ``labels_of(url name)`` gives (registered model, version) of a served model, None for an unknown name. A served
    model without a loaded version counts under an empty version (the operator treats such errors as its canary's).
    """

    def on_error(path: str, status: int) -> None:
        parts = path.split("/")
        name = parts[3].split(":")[0] if len(parts) > 3 and parts[1] in ("v1", "v2") and parts[2] == "models" else None
        found = labels_of(name) if name else None
        metrics.errors.labels(*(found or ("-", "-")), str(status)).inc()

    return on_error


def served_labels(models: list[Any], registered_model: str, name: str, route: str | None = None) -> tuple[str, str] | None:
    """(registered model, version) of the model served as ``name``; the version is empty while it is not loaded.

    For the routed endpoint it is the version the router chose for this request (None before it chose one:
    such an error, e.g. a refused token, concerns no version).
    """
    if route is not None and name == route:
        from churnops.serving.routed_endpoint import ROUTED  # noqa: PLC0415 - imports KServe, like serve() itself

        return ROUTED.get()
    for m in models:
        if m.name == name:
            labels: tuple[str, str] = m.scorer.labels if m.scorer is not None else (registered_model, "")
            return labels
    return None


def served_version(models: list[Any], name: str) -> str | None:
    """The version loaded under ``name`` (None for an unknown name, the routed endpoint, or a model not loaded)."""
    for m in models:
        if m.name == name and m.scorer is not None:
            version: str = m.scorer.served.version
            return version
    return None


def routed_endpoint(cfg: ServeConfig, shared: Shared, workers: ThreadPoolExecutor) -> Any:
    """The endpoint split by the routing table: one ChurnModel per version it names, loaded when first named."""
    from churnops.serving.predictor import ChurnModel  # noqa: PLC0415 - imports KServe: only when serving
    from churnops.serving.routed_endpoint import Router  # noqa: PLC0415
    from churnops.serving.routing_table import TableWatcher  # noqa: PLC0415

    assert cfg.route is not None
    route = cfg.route

    def make_model(version: str) -> ChurnModel:
        # named like the route, so V2 answers carry the endpoint's name and the version that scored them
        return ChurnModel(route, partial(load_scorer, cfg, version, shared), executor=workers)

    return Router(route, TableWatcher(cfg.table_path()), make_model, cfg.registry().model_name, shared.metrics, seed=cfg.route_seed)


def serve(cfg: ServeConfig, env: Mapping[str, str]) -> None:
    """Serve until stopped: in this process, or (``--workers N``) in N forked workers sharing the port."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # more threads than cores make tail latency erratic
    check(cfg)
    count = worker_count(cfg.kserve_options)
    if count == 1:
        serve_process(cfg, env)
        return
    from churnops.serving import modelserver, predictor  # noqa: F401, PLC0415 - imported once, before the fork: workers share the pages
    from churnops.serving.http import raise_fd_limit  # noqa: PLC0415

    raise_fd_limit()  # the workers inherit it

    def run(worker: Worker) -> None:
        serve_process(for_worker(cfg, worker.index), env, worker)

    grace = int(cfg.kserve_options.get("grace_period", 30) or 30)
    code = Supervisor(run, cfg.host, cfg.http_port, count, grace_s=grace).serve()
    if code:
        raise SystemExit(f"a worker failed at its start (see its log above); exit code {code}")


def serve_process(cfg: ServeConfig, env: Mapping[str, str], worker: Worker | None = None) -> None:
    """Build the wiring and run one ModelServer process (the only one, or ``worker`` of several) until stopped."""
    from fastapi.exceptions import RequestValidationError  # noqa: PLC0415
    from kserve import ModelServer  # noqa: PLC0415 - imports FastAPI, uvicorn, gRPC: only when serving
    from kserve.logging import logger as kserve_logger  # noqa: PLC0415
    from kserve.model_server import app  # noqa: PLC0415
    from prometheus_client import REGISTRY, generate_latest  # noqa: PLC0415

    from churnops.serving.errors import error_handler, validation_error_handler  # noqa: PLC0415
    from churnops.serving.exposition import CachedExposition, MetricsEndpoint  # noqa: PLC0415
    from churnops.serving.http import connection_cap, raise_fd_limit  # noqa: PLC0415
    from churnops.serving.modelserver import ChurnModelServer, ChurnRepository, ClientErrorLogs  # noqa: PLC0415
    from churnops.serving.openapi import spec  # noqa: PLC0415
    from churnops.serving.predictor import ChurnModel  # noqa: PLC0415
    from churnops.serving.security import GuardMiddleware, RateLimiter  # noqa: PLC0415

    options = model_server_options(cfg.kserve_options, ModelServer)
    metrics = ServingMetrics(REGISTRY)
    readers = feature_readers(cfg, env)
    audit = audit_sink(cfg, env)
    privacy = privacy_store(cfg)
    plog = prediction_log(cfg, REGISTRY, privacy)
    breaker = Breaker(cfg.breaker_cooldown_s, on_change=store_state(metrics, store_name(cfg), cfg.on_store_failure))
    if cfg.auth is not None and isinstance(cfg.auth.keys, KeyDirectory):
        directory = cfg.auth.keys
        metrics.key_files_rejected.set_function(lambda: len(directory.rejected))
    shared = Shared(readers, audit, metrics, breaker, plog, Pseudonyms(privacy))
    # large requests score here, off the event loop; one thread per core (the boosters release the GIL)
    workers = ThreadPoolExecutor(max_workers=os.cpu_count() or 1, thread_name_prefix="score")
    models = []
    for ref in cfg.models:
        loader = partial(load_scorer, cfg, ref, shared)
        model = ChurnModel(cfg.model_name or served_name(ref), loader, executor=workers)
        model.load()
        models.append(model)
    router = None
    if cfg.route is not None:
        router = routed_endpoint(cfg, shared, workers)
        router.load()  # loads the table's versions now: the server starts ready when the table names a stable version
    ready = [m for m in models if m.ready]
    if not ready and router is None:
        raise SystemExit("no model could be loaded: " + "; ".join(f"{m.name}: {m.load_error}" for m in models))

    def scorers() -> list[Scorer]:
        return [m.scorer for m in models if m.scorer is not None] + (router.scorers() if router is not None else [])

    names = [m.name for m in models] + ([router.name] if router is not None else [])
    loaded = scorers()
    if loaded:  # a route without a stable version yet keeps KServe's generic document
        document = spec(loaded[0].schema, names, loaded[0].served.version)
        app.openapi = lambda: document
    app.add_exception_handler(ChurnOpsError, error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    render = partial(generate_latest, REGISTRY)
    fan_in = MetricsFanIn(render, worker) if worker is not None else None
    # added first, so it runs inside the guard (which limits scrapes per address)
    app.add_middleware(MetricsEndpoint, exposition=CachedExposition(fan_in.render if fan_in else render, cfg.metrics_max_age_s))
    app.add_middleware(
        GuardMiddleware,
        auth=cfg.auth,
        limits=cfg.limits,
        limiter=RateLimiter(cfg.limits.rate_per_s, cfg.limits.burst),
        on_error=count_errors(metrics, partial(served_labels, models, cfg.registry().model_name, route=cfg.route)),
        served_version=partial(served_version, models),
    )
    kserve_logger.addFilter(ClientErrorLogs())

    def drift_monitors() -> list[LiveDriftMonitor]:
        # one monitor per version: a version served both under its alias and by the route must not export its series twice
        monitors: dict[tuple[str, str], LiveDriftMonitor] = {}
        for s in scorers():
            if s.drift is not None:
                monitors.setdefault(s.labels, s.drift)
        return list(monitors.values())

    # drift gauges are computed when Prometheus scrapes, for whichever versions are loaded then
    REGISTRY.register(DriftCollector(drift_monitors))
    settings = {"enable_grpc": False, "enable_docs_url": False, **options}
    server = ChurnModelServer(
        cfg.host,
        ChurnRepository(),
        cfg.http_limits,
        max_connections=connection_cap(raise_fd_limit(), cfg.max_connections),
        sockets=[worker.sock] if worker is not None else None,
        **settings,
        http_port=cfg.http_port,
        workers=1,
    )
    server.dataplane.store_ready = store_readiness(cfg, breaker, scorers)
    for m in [*models, *([router] if router is not None else [])]:
        server.register_model(m)  # unready ones too: they answer 503 and fail readiness instead of vanishing
    served = [f"{m.name} ({'ready' if m.ready else 'NOT READY'})" for m in models]
    if router is not None:
        table = router.watcher.current()
        split = f"stable v{table.stable}" if table.stable else "no stable version yet"
        split += f", canary v{table.canary} at {table.weight}%" if table.canary else ""
        served.append(f"{router.name} (routed by {router.watcher.path}: {split})")
    port = worker.sock.getsockname()[1] if worker is not None else cfg.http_port
    which = f" (worker {worker.index} of {worker.count}, pid {os.getpid()})" if worker is not None else ""
    print(f"ChurnOps predictor on http://{cfg.host}:{port}{which}: " + ", ".join(served), flush=True)
    # Everything loaded so far (libraries, models, explainers) lives as long as the server: leave it out of
    # the collector's full passes, which otherwise walk it all and stall every request (and probe) meanwhile.
    gc.collect()
    gc.freeze()
    if fan_in is not None:
        fan_in.start()
    if worker is not None:
        worker.built.set()
    try:
        server.start([])
    finally:
        if fan_in is not None:
            fan_in.close()
        if router is not None:
            router.stop()
        workers.shutdown(wait=True)
        if shared.prediction_log is not None:
            shared.prediction_log.close()  # drains what is buffered: nothing is lost on a clean stop
        audit.close()
        privacy.close()
