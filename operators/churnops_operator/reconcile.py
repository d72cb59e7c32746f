"""One reconcile pass for one ModelDeployment: move the world to the persisted status, then decide.

Order matters for crash safety. The pass first makes the outside world match
the status that is already written (InferenceServices and HTTPRoute, the
MLflow ``champion`` alias, the KFP run it recorded), then observes and
decides, and returns the next status for the handler to write. The next pass
applies that status. An operator killed anywhere in a pass therefore either
repeats the pass from the same persisted status or applies a status that was
fully decided: there is never a half-taken decision to undo.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from churnops_contract import registry as reg
from churnops_operator.decisions import analysis, retraining, rollout, serving
from churnops_operator.decisions import status as status_mod
from churnops_operator.decisions.rollout import Event, RolloutStatus
from churnops_operator.http import ExternalError
from churnops_operator.kfp import KFP
from churnops_operator.kube import Kube
from churnops_operator.mlflow import REFERENCE_AUC_METRIC, MLflow
from churnops_operator.prom import Prometheus
from churnops_operator.spec import DeploymentSpec, SpecError, parse
from churnops_operator.telemetry import OperatorMetrics

ISVC = serving.ISVC_KIND
REGISTRY_EVENTS = ("Deployed", "Promoted", "RolledBack")


class ServingConflictError(Exception):
    """An object the operator would manage exists and belongs to something else."""


@dataclass
class Systems:
    kube: Kube
    prom: Prometheus
    mlflow: MLflow
    kfp: KFP | None
    metrics: OperatorMetrics
    clock: Callable[[], float] = time.time
    uris: dict[tuple[str, str], str] = field(default_factory=dict)  # (model, version) -> storage URI; versions are immutable
    reference_auc: dict[tuple[str, str], float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Resource:
    name: str
    namespace: str
    uid: str
    generation: int
    spec: Mapping[str, Any]
    status: Mapping[str, Any]
    resource_version: str = ""

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> Resource:
        meta = obj.get("metadata") or {}
        return cls(
            name=str(meta["name"]),
            namespace=str(meta["namespace"]),
            uid=str(meta.get("uid")),
            generation=int(meta.get("generation") or 0),
            spec=dict(obj.get("spec") or {}),
            status=dict(obj.get("status") or {}),
            resource_version=str(meta.get("resourceVersion") or ""),
        )


def status_patch(old: Mapping[str, Any], new: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON merge patch turning ``old`` into ``new`` (None removes a key); empty when they are equal."""
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        before = old.get(key)
        if isinstance(value, Mapping) and isinstance(before, Mapping):
            inner = status_patch(before, value)
            if inner:
                patch[key] = inner
        elif value != before and not (value is None and key not in old):
            patch[key] = value
    return patch


@dataclass(frozen=True)
class Result:
    status: dict[str, Any]
    events: tuple[Event, ...]


def owned(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def managed_names(name: str, mode: str | None = None) -> tuple[tuple[str, str], ...]:
    """The (kind, name) pairs the operator may create for ``name`` in ``mode`` (both modes when None)."""
    serverless = ((ISVC, name),)
    standard = (*((ISVC, f"{name}-{slot}") for slot in rollout.SLOTS), (serving.ROUTE_KIND, name))
    return serverless if mode == "Serverless" else standard if mode == "Standard" else (*serverless, *standard)


async def storage_uri(sys: Systems, model: str, version: str) -> str | None:
    key = (model, version)
    if key not in sys.uris:
        found = await sys.mlflow.model_version(model, version)
        if found is None:
            return None
        sys.uris[key] = str(found.get("source") or f"models:/{model}/{version}")
    return sys.uris[key]


async def converge_serving(sys: Systems, res: Resource, spec: DeploymentSpec, st: RolloutStatus) -> tuple[list[Event], bool]:
    """Create, repair or delete the serving objects so that they match ``st``.

    Only the current mode's objects are read, unless the last pass served another mode
    (``status.servingMode``): then the other mode's objects are read too, and deleted.
    Returns the events and whether the applied objects carry the canary's traffic.
    """
    kube, ns = sys.kube, res.namespace
    observed: dict[tuple[str, str], dict[str, Any]] = {}
    switched = res.status.get("servingMode") != spec.serving.mode
    for kind, name in managed_names(res.name, None if switched else spec.serving.mode):
        obj = await kube.get(kind, ns, name)
        if obj is not None:
            if not owned(obj, res.uid):
                raise ServingConflictError(f"{kind} {ns}/{name} exists and is not owned by this ModelDeployment")
            observed[kind, name] = obj
    uris: dict[str, str] = {}
    for version in serving.versions_needed(spec, st):
        uri = await storage_uri(sys, spec.model.registered_model, version)
        if uri is None:
            raise SpecError(f"version {version} of {spec.model.registered_model} is not registered in MLflow")
        uris[version] = uri
    isvcs = {name: obj for (kind, name), obj in observed.items() if kind == ISVC}
    want = serving.desired(serving.Owner(res.name, ns, res.uid), spec, st, uris, isvcs)
    events: list[Event] = []
    for obj in want.objects:
        key = (obj["kind"], obj["metadata"]["name"])
        have = observed.get(key)
        if have is None or serving.differs(obj, have):
            await kube.apply(obj, serving.strip_nulls(obj))
            verb = "Created" if have is None else "Updated"
            events.append(Event("Normal", verb, f"{verb} {key[0]} {key[1]} for version {serving.observed_version(obj) or st.stable}"))
    for kind, name in want.absent:
        if (kind, name) in observed and await kube.delete(kind, ns, name):
            events.append(Event("Normal", "Deleted", f"Deleted {kind} {name}"))
    carries = any(o["metadata"]["labels"].get(serving.LABEL_ROLE) == "canary" for o in want.objects)
    return events, carries


async def converge_registry(sys: Systems, spec: DeploymentSpec, st: RolloutStatus, synced: float | None) -> float | None:
    """Replay the history entries not yet applied to MLflow: the champion alias and the why on each version."""
    model = spec.model.registered_model
    last = synced
    for entry in st.history:
        when = entry.get("time")
        if entry.get("event") not in REGISTRY_EVENTS or not isinstance(when, int | float) or (synced is not None and when <= synced):
            continue
        stamp = status_mod.rfc3339(float(when))
        to, frm, why = entry.get("to"), entry.get("from"), str(entry.get("reason") or "")[:500]
        if to:
            await sys.mlflow.set_alias(model, reg.CHAMPION, str(to))
        if entry["event"] == "RolledBack" and frm:
            await sys.mlflow.set_tag(model, str(frm), reg.TAG_ROLLED_BACK_AT, stamp)
            await sys.mlflow.set_tag(model, str(frm), reg.TAG_ROLLBACK_REASON, why)
        elif to:
            await sys.mlflow.set_tag(model, str(to), reg.TAG_PROMOTED_AT, stamp)
            await sys.mlflow.set_tag(model, str(to), reg.TAG_PROMOTION_REASON, why)
            if frm:
                await sys.mlflow.set_tag(model, str(frm), reg.TAG_REPLACED_AT, stamp)
                await sys.mlflow.set_tag(model, str(frm), reg.TAG_REPLACED_BY, str(to))
        last = float(when)
    return last


async def track_run(
    sys: Systems, spec: DeploymentSpec, rs: retraining.RetrainingStatus, stable: str | None
) -> tuple[retraining.RetrainingStatus, tuple[Event, ...]]:
    """Start the recorded run if it has no id yet (found by name first), or read its state."""
    if not rs.active or rs.pending_key is None:
        return rs, ()
    if sys.kfp is None:
        raise SpecError("spec.monitoring.retraining: the operator has no KFP endpoint (--kfp-url)")
    r = spec.monitoring.retraining
    if rs.run_id is None:
        run = await sys.kfp.ensure_run(rs.pending_key, r.pipeline, r.experiment, dict(r.parameters))
        sys.metrics.retraining_runs.inc()
    else:
        run = await sys.kfp.run(rs.run_id)
    state = str(run.get("state") or "PENDING")
    challenger = await sys.mlflow.version_by_alias(spec.model.registered_model, reg.CHALLENGER) if state == "SUCCEEDED" else None
    return retraining.on_run(rs, str(run["run_id"]), state, challenger, stable)


async def reference_auc(sys: Systems, model: str, version: str) -> float | None:
    key = (model, version)
    if key not in sys.reference_auc:
        mv = await sys.mlflow.model_version(model, version)
        run_id = (mv or {}).get("run_id")
        sys.reference_auc[key] = await sys.mlflow.run_metric(run_id, REFERENCE_AUC_METRIC) if run_id else None
    return sys.reference_auc[key]


async def resolve_target(sys: Systems, spec: DeploymentSpec) -> tuple[str | None, str | None]:
    """The spec's version (checked to exist) and, when it cannot be used, why."""
    model = spec.model.registered_model
    version = spec.model.version
    if version is None:
        assert spec.model.alias is not None
        version = await sys.mlflow.version_by_alias(model, spec.model.alias)
        if version is None:
            return None, f"registered model {model} has no alias {spec.model.alias!r}"
    if await storage_uri(sys, model, version) is None:
        return None, f"version {version} of {model} is not registered"
    return version, None


async def reconcile(sys: Systems, res: Resource) -> Result:
    now = sys.clock()
    old = dict(res.status)
    st = RolloutStatus.from_status(old)
    rs = retraining.RetrainingStatus.from_status(old.get("retraining"))
    try:
        spec = parse(res.spec)
    except SpecError as e:
        return _degraded(st, rs, res, now, old, str(e))
    events: list[Event] = []
    before = st
    try:
        if st.stable is not None:
            applied, carries_canary = await converge_serving(sys, res, spec, st)
            events += applied
            if carries_canary:
                st = rollout.traffic_applied(st, now)
        synced = await converge_registry(sys, spec, st, rollout.number(old, "registrySyncedAt"))
        rs, run_events = await track_run(sys, spec, rs, st.stable)
        events += run_events
        spec_target, problem = await resolve_target(sys, spec)
    except (SpecError, ServingConflictError) as e:
        return _degraded(st, rs, res, now, old, str(e))
    except ExternalError as e:
        sys.metrics.external_errors.labels(e.system).inc()
        if e.transient:
            raise
        return _degraded(st, rs, res, now, old, str(e))
    target = rollout.choose_target(spec_target, rs.candidate, spec.rollout.auto_promote, st.rejected)
    verdict = None
    if rollout.check_due(spec, st, now):
        assert st.canary is not None and st.stable is not None and st.traffic_since is not None
        obs = await sys.prom.observe(
            spec.model.registered_model,
            st.canary,
            st.stable,
            st.traffic_since,
            st.step_started or st.traffic_since,
            spec.rollout.analysis.max_latency_p95_ms,
            st.checks + 1,
            now,
        )
        if obs.problems:
            sys.metrics.external_errors.labels("prometheus").inc(len(obs.problems))
        verdict = analysis.judge(spec.rollout.analysis, obs, spec.rollout.min_samples)
    transition = rollout.decide(spec, st, target, now, verdict)
    st = transition.status
    events += transition.events
    if problem and st.stable is None:
        st = replace(st, message=problem)
    if st.stable is not None and retraining.evaluation_due(spec, rs, st.canary is not None, now):
        ref = await _optional(reference_auc(sys, spec.model.registered_model, st.stable))
        d = spec.monitoring.drift
        signals = await sys.prom.retraining_signals(spec.model.registered_model, st.stable, d.methods, d.threshold, ref, now)
        rs, eval_events = retraining.evaluate(spec, rs, signals, f"{res.namespace}-{res.name}")
        events += eval_events
    status = status_mod.assemble(st, rs, res.generation, now, old)
    status["registrySyncedAt"] = synced
    status["servingMode"] = spec.serving.mode if before.stable is not None else old.get("servingMode")
    return Result(status, tuple(events))


async def _optional(coro: Any) -> Any:
    """A value the decision can do without: None when its system is down."""
    try:
        return await coro
    except ExternalError:
        return None


def _degraded(st: RolloutStatus, rs: retraining.RetrainingStatus, res: Resource, now: float, old: Mapping[str, Any], error: str) -> Result:
    status = status_mod.assemble(st, rs, res.generation, now, old, error=error)
    status["registrySyncedAt"] = old.get("registrySyncedAt")
    status["servingMode"] = old.get("servingMode")
    repeated = old.get("phase") == "Degraded" and old.get("message") == error
    return Result(status, () if repeated else (Event("Warning", "Degraded", error),))


async def cleanup(kube: Kube, name: str, namespace: str, uid: str) -> list[str]:
    """Delete every serving object this ModelDeployment owns (the finalizer's work)."""
    deleted = []
    for kind, child in managed_names(name):
        obj = await kube.get(kind, namespace, child)
        if obj is not None and owned(obj, uid) and await kube.delete(kind, namespace, child):
            deleted.append(f"{kind} {child}")
    return deleted
