"""kopf handlers: thin wrappers that call ``reconcile`` and write what it returns.

Everything is level-based. One timer per ModelDeployment runs a reconcile
pass every ``tick`` seconds and on start; it reads the persisted status and
returns the next one, so a handler that runs twice or is interrupted does no
harm. After the status is written, the decisions in its history that have no
Event yet are posted under names derived from their sequence numbers: an
operator killed between the two posts them on restart, once. Deletion goes
through a finalizer: the owned serving objects are deleted explicitly (owner
references also let Kubernetes' garbage collector do it), which works as
well when the resource was deleted while the operator was down. Handlers of
one object never overlap: the timer and the deletion share a lock. A pass
that fails is retried with exponential backoff and jitter.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from churnops_contract.registry import DEFAULT_MODEL_NAME
from churnops_contract.rollout import core
from churnops_contract.rollout.spec import FINALIZER, GROUP, KIND, PLURAL, VERSION
from churnops_operator import reconcile as rec
from churnops_operator.http import ExternalError
from churnops_operator.kfp import KFP
from churnops_operator.kube import Credentials, Kube, credentials_from_kopf
from churnops_operator.mlflow import MLflow
from churnops_operator.prom import Prometheus
from churnops_operator.telemetry import OperatorMetrics

MAX_BACKOFF_S = 60.0


def backoff(failures: int, base_s: float, rng: random.Random) -> float:
    """Seconds before retrying a pass after ``failures`` failures in a row: doubling, capped, with full jitter in [0.5, 1.5)."""
    return min(base_s * 2.0 ** max(failures - 1, 0), MAX_BACKOFF_S) * (0.5 + rng.random())


def event_name(res: rec.Resource, seq: int) -> str:
    """The Event name of a history entry: the same entry always gets the same name, so a repeated post is refused."""
    return f"{res.name}.{res.uid.replace('-', '')[:8]}.{seq:06d}"


@dataclass(frozen=True)
class Config:
    prometheus_url: str
    mlflow_url: str
    kfp_url: str | None = None
    tick_s: float = 10.0
    request_timeout_s: float = 5.0  # Prometheus, MLflow, KFP
    kube_timeout_s: float = 10.0
    peering: str = "churnops-operator"
    standalone: bool = False
    priority: int = 0
    peering_lifetime_s: int = 6  # see main.py --peering-lifetime
    identity: str = "churnops-operator"  # this replica, in the User-Agent of its Kubernetes calls
    mlflow_username: str | None = field(default=None, repr=False)
    mlflow_password: str | None = field(default=None, repr=False)


@dataclass
class State:
    """Process-wide clients, built on the first pass (after kopf has logged in)."""

    config: Config
    metrics: OperatorMetrics
    credentials: Credentials | None = None
    systems: rec.Systems | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    failures: dict[str, int] = field(default_factory=dict)  # passes failed in a row, per resource uid
    rng: random.Random = field(default_factory=random.Random)
    relogin: Any = None  # logs in again after a 401 (a rotated token); set by the login handler
    building: asyncio.Lock = field(default_factory=asyncio.Lock)

    def build(self) -> rec.Systems:
        if self.systems is None:
            if self.credentials is None:
                raise kopf.TemporaryError("not logged in to Kubernetes yet", delay=1)
            cfg = self.config
            self.systems = rec.Systems(
                kube=Kube(
                    self.credentials, timeout_s=cfg.kube_timeout_s, relogin=self.relogin, user_agent=f"churnops-operator ({cfg.identity})"
                ),
                prom=Prometheus(cfg.prometheus_url, cfg.request_timeout_s),
                mlflow=MLflow(cfg.mlflow_url, cfg.request_timeout_s, username=cfg.mlflow_username, password=cfg.mlflow_password),
                kfp=KFP(cfg.kfp_url, cfg.request_timeout_s * 2) if cfg.kfp_url else None,
                metrics=self.metrics,
            )
        return self.systems

    async def ready(self) -> rec.Systems:
        """The clients, built in a worker thread: building them loads CA bundles (a second or more on a busy node),
        and a blocked event loop would hold back kopf's peering keep-alive until a standby takes over."""
        if self.systems is None:
            async with self.building:
                if self.systems is None:
                    await asyncio.to_thread(self.build)
        return self.build()

    def lock(self, uid: str) -> asyncio.Lock:
        return self.locks.setdefault(uid, asyncio.Lock())


def register(registry: kopf.OperatorRegistry, state: State) -> None:
    """Register every handler on ``registry`` (nothing happens at import time)."""
    cfg = state.config

    @kopf.on.startup(registry=registry)
    def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.persistence.finalizer = FINALIZER
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=GROUP, key="last-handled-configuration")
        settings.peering.name = cfg.peering
        settings.peering.standalone = cfg.standalone
        settings.peering.mandatory = not cfg.standalone  # replicas must agree on a leader: wait for the peering object
        settings.peering.priority = cfg.priority
        settings.peering.lifetime = cfg.peering_lifetime_s
        settings.posting.loggers = False  # Events come from the status history (write), not from every log line
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 30

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        """kopf calls this at start and again when its own calls get 401; the operator's client calls it on its 401s."""

        def connect() -> kopf.ConnectionInfo | None:
            return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)

        def fresh() -> Credentials | None:
            info = connect()
            if info is not None:
                state.credentials = credentials_from_kopf(info)
            return state.credentials if info is not None else None

        state.relogin = fresh
        if state.systems is not None:
            state.systems.kube.relogin = fresh
        info = connect()
        if info is not None:
            state.credentials = credentials_from_kopf(info)
        return info

    @kopf.index(GROUP, VERSION, PLURAL, id="claims", registry=registry)
    async def claims(body: kopf.Body, spec: kopf.Spec, **_: Any) -> dict[str, rec.Claim]:
        """Which registered model each ModelDeployment deploys: the oldest claim owns the model.

        Async although it awaits nothing: kopf runs a sync handler in a worker thread, one hop per watch event."""
        model = (spec.get("model") or {}).get("registeredModel") or DEFAULT_MODEL_NAME
        meta = body.get("metadata") or {}
        serving = (body.get("status") or {}).get("stableVersion") is not None
        return {
            str(meta.get("uid")): rec.Claim(
                str(model),
                str(meta.get("creationTimestamp") or ""),
                str(meta.get("uid")),
                f"{meta.get('namespace')}/{meta.get('name')}",
                serving,
            )
        }

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        if state.systems is not None:
            s = state.systems
            for client in (s.kube, s.prom, s.mlflow, s.kfp):
                if client is not None:
                    await client.aclose()

    @kopf.timer(GROUP, VERSION, PLURAL, id="reconcile", interval=cfg.tick_s, initial_delay=0, registry=registry)
    async def tick(body: kopf.Body, logger: kopf.Logger, **kwargs: Any) -> None:
        """One pass on the object as the API server has it now, never on kopf's possibly older copy.

        The status is written with the resourceVersion that was read: a pass that raced
        another writer (or a replica during a leader hand-over) gets 409 and is retried.
        """
        systems = await state.ready()
        started = time.perf_counter()
        uid = str(body.meta.uid)
        async with state.lock(uid):
            try:
                fresh = await systems.kube.get(KIND, str(body.meta.namespace), str(body.meta.name))
                if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                    return
                res = rec.Resource.from_object(fresh)
                index: kopf.Index[str, rec.Claim] = kwargs["claims"]
                result = await rec.reconcile(systems, res, [c for found in index.values() for c in found])
                stopped: kopf.DaemonStopped = kwargs["stopped"]
                if stopped:  # paused for a peer of higher priority (or deleted) mid-pass: the leader decides, not this pass
                    logger.info("pass abandoned: %s", stopped.reason)
                    return
                written = await write(systems, body, res, result, logger)
            except ExternalError as e:
                state.metrics.reconciles.labels("retry").inc()
                state.failures[uid] = state.failures.get(uid, 0) + 1
                # A conflict means the object moved on (kopf's own patches, another writer): re-read soon.
                base = 0.5 if e.status == 409 else cfg.tick_s
                raise kopf.TemporaryError(str(e), delay=backoff(state.failures[uid], base, state.rng)) from e
        state.failures.pop(uid, None)
        state.metrics.duration.observe(time.perf_counter() - started)
        state.metrics.reconciles.labels("ok").inc()
        state.metrics.canary_weight.labels(res.namespace, res.name).set(written.get("canaryWeight") or 0)
        state.metrics.failed_checks.labels(res.namespace, res.name).set(written.get("failedChecks") or 0)

    async def write(systems: rec.Systems, body: kopf.Body, res: rec.Resource, result: rec.Result, logger: kopf.Logger) -> dict[str, Any]:
        """Write the status, then post its unposted decisions and the serving notices; record what was posted."""
        status = dict(res.status)
        patch = rec.status_patch(status, result.status)
        if patch:
            await systems.kube.patch_status(KIND, res.namespace, res.name, patch, res.resource_version)
            status = result.status
        for kind, reason, message in result.notices:
            kopf.event(body, type=kind, reason=reason, message=message)
        entries = core.unposted(status)
        for entry in entries:
            posted = await systems.kube.post_event(
                res.involved(),
                event_name(res, int(entry["seq"])),
                str(entry.get("type") or "Normal"),
                str(entry.get("event")),
                str(entry.get("message")),
                float(entry.get("time") or 0.0),
            )
            if posted:
                state.metrics.decisions.labels(str(entry.get("event"))).inc()
                logger.info("%s: %s", entry.get("event"), entry.get("message"))
        if entries:
            last = int(entries[-1]["seq"])
            await systems.kube.patch_status(KIND, res.namespace, res.name, {"eventsPosted": last}, None)  # monotone: no precondition
            status = core.mark_posted(status, last)
        if result.retry_seen is not None:  # acted on (or moot): a person's request is taken once
            await systems.kube.remove_annotation(KIND, res.namespace, res.name, rec.RETRY_ANNOTATION)
        return status

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup", registry=registry)
    async def delete(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        systems = await state.ready()
        name, namespace, uid = str(body.meta.name), str(body.meta.namespace), str(body.meta.uid)
        async with state.lock(uid):
            try:
                deleted = await rec.cleanup(systems.kube, name, namespace, uid)
            except ExternalError as e:
                raise kopf.TemporaryError(str(e), delay=2) from e
        state.locks.pop(uid, None)
        state.metrics.forget(namespace, name)
        logger.info("deleted %s", ", ".join(deleted) or "nothing (already gone)")
