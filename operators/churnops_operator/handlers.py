"""kopf handlers: thin wrappers that call ``reconcile`` and write what it returns.

Everything is level-based. One timer per ModelDeployment runs a reconcile
pass every ``tick`` seconds and on start; it reads the persisted status and
returns the next one, so a handler that runs twice or is interrupted does no
harm. Deletion goes through a finalizer: the owned serving objects are
deleted explicitly (owner references also let Kubernetes' garbage collector
do it), which works as well when the resource was deleted while the operator
was down. Handlers of one object never overlap: the timer and the deletion
share a lock.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import kopf

from churnops_operator import reconcile as rec
from churnops_operator.http import ExternalError
from churnops_operator.kfp import KFP
from churnops_operator.kube import Credentials, Kube, credentials_from_kopf
from churnops_operator.mlflow import MLflow
from churnops_operator.prom import Prometheus
from churnops_operator.spec import FINALIZER, GROUP, KIND, PLURAL, VERSION
from churnops_operator.telemetry import OperatorMetrics


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


@dataclass
class State:
    """Process-wide clients, built on the first pass (after kopf has logged in)."""

    config: Config
    metrics: OperatorMetrics
    credentials: Credentials | None = None
    systems: rec.Systems | None = None
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)

    def build(self) -> rec.Systems:
        if self.systems is None:
            if self.credentials is None:
                raise kopf.TemporaryError("not logged in to Kubernetes yet", delay=1)
            cfg = self.config
            self.systems = rec.Systems(
                kube=Kube(self.credentials, timeout_s=cfg.kube_timeout_s),
                prom=Prometheus(cfg.prometheus_url, cfg.request_timeout_s),
                mlflow=MLflow(cfg.mlflow_url, cfg.request_timeout_s),
                kfp=KFP(cfg.kfp_url, cfg.request_timeout_s * 2) if cfg.kfp_url else None,
                metrics=self.metrics,
            )
        return self.systems

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
        settings.posting.loggers = False  # Events come from decisions (kopf.event), not from every log line
        settings.posting.level = logging.INFO
        settings.watching.server_timeout = 300
        settings.networking.request_timeout = 30

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        info = kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)
        if info is not None:
            state.credentials = credentials_from_kopf(info)
        return info

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        if state.systems is not None:
            s = state.systems
            for client in (s.kube, s.prom, s.mlflow, s.kfp):
                if client is not None:
                    await client.aclose()

    @kopf.timer(GROUP, VERSION, PLURAL, id="reconcile", interval=cfg.tick_s, initial_delay=0, registry=registry)
    async def tick(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        """One pass on the object as the API server has it now, never on kopf's possibly older copy.

        The status is written with the resourceVersion that was read: a pass that raced
        another writer (or a replica during a leader hand-over) gets 409 and is retried.
        """
        systems = state.build()
        started = time.perf_counter()
        async with state.lock(str(body.meta.uid)):
            try:
                fresh = await systems.kube.get(KIND, str(body.meta.namespace), str(body.meta.name))
                if fresh is None or (fresh.get("metadata") or {}).get("deletionTimestamp"):
                    return
                res = rec.Resource.from_object(fresh)
                result = await rec.reconcile(systems, res)
                patch = rec.status_patch(res.status, result.status)
                if patch:
                    await systems.kube.patch_status(KIND, res.namespace, res.name, patch, res.resource_version)
            except ExternalError as e:
                state.metrics.reconciles.labels("retry").inc()
                # A conflict means the object moved on (kopf's own patches, another writer): re-read soon.
                delay = 1.0 if e.status == 409 else min(cfg.tick_s * 3, 30)
                raise kopf.TemporaryError(str(e), delay=delay) from e
        state.metrics.duration.observe(time.perf_counter() - started)
        state.metrics.reconciles.labels("ok").inc()
        for event in result.events:  # only decisions whose status was written
            state.metrics.decisions.labels(event.reason).inc()
            kopf.event(body, type=event.type, reason=event.reason, message=event.message)
            logger.info("%s: %s", event.reason, event.message)
        state.metrics.canary_weight.labels(res.namespace, res.name).set(result.status.get("canaryWeight") or 0)
        state.metrics.failed_checks.labels(res.namespace, res.name).set(result.status.get("failedChecks") or 0)

    @kopf.on.delete(GROUP, VERSION, PLURAL, id="cleanup", registry=registry)
    async def delete(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
        systems = state.build()
        name, namespace, uid = str(body.meta.name), str(body.meta.namespace), str(body.meta.uid)
        async with state.lock(uid):
            try:
                deleted = await rec.cleanup(systems.kube, name, namespace, uid)
            except ExternalError as e:
                raise kopf.TemporaryError(str(e), delay=2) from e
        state.locks.pop(uid, None)
        state.metrics.forget(namespace, name)
        logger.info("deleted %s", ", ".join(deleted) or "nothing (already gone)")
