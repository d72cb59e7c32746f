"""One reconcile pass for one ModelDeployment: the core's pass with the cluster's I/O.

The decisions are ``churnops_contract.rollout.core``'s, shared with the
embedded runner; this module only talks to the outside systems:

1. move the world to the *persisted* status: the InferenceServices and the
   HTTPRoute (``objects``), the MLflow ``champion`` alias and tags of every
   history entry not yet applied, the KFP run the status names;
2. read what the core asked for: the spec's target in MLflow, the canary's
   figures and the retraining signals in Prometheus;
3. return the core's next status for the handler to write.

The calls within each step that do not depend on one another (Kubernetes,
MLflow and KFP in the first; the canary's and the retraining figures in the
second) are sent together: a pass lasts as long as its slowest call, not as
long as all of them one after the other.

No outside failure aborts the pass: each becomes a ``Health`` problem (the
``Degraded`` condition, an event when it starts) and the decision goes on with
what is known, so a registry or KFP outage never freezes a rollback, and the
progress deadline bounds every state. Every version served is first looked
up in MLflow (an unregistered one is a ``serving`` problem, not a predictor
that crash-loops); its artifact URI, kept in ``status.modelSources`` (versions
are immutable), is only recorded on the InferenceService: the predictor loads
the version from MLflow itself.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from churnops_contract import metric_names as m
from churnops_contract import policy, queries
from churnops_contract import registry as reg
from churnops_contract.rollout import core, observe, retraining
from churnops_contract.rollout.analysis import Observation
from churnops_contract.rollout.spec import API_VERSION, KIND, DeploymentSpec, SpecError, parse
from churnops_contract.rollout.status import Health, rfc3339
from churnops_operator import objects
from churnops_operator.http import ExternalError
from churnops_operator.kfp import KFP
from churnops_operator.kube import Kube
from churnops_operator.mlflow import REFERENCE_AUC_METRIC, MLflow
from churnops_operator.prom import Prometheus
from churnops_operator.telemetry import OperatorMetrics

ISVC = objects.ISVC_KIND
RETRY_ANNOTATION = "churnops.io/retry"  # `kubectl annotate md <name> churnops.io/retry=<version>` lets a rejected version run again
BUCKETS = len(m.SCORE_BUCKETS) + 1


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
    annotations: Mapping[str, str] = field(default_factory=dict)
    created: str = ""

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
            annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
            created=str(meta.get("creationTimestamp") or ""),
        )

    def involved(self) -> dict[str, Any]:
        """The object as an Event's ``involvedObject`` needs it."""
        return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid}}


@dataclass(frozen=True)
class Claim:
    """A ModelDeployment's claim on a registered model (from the handlers' index of every resource)."""

    model: str
    created: str
    uid: str
    name: str  # namespace/name
    serving: bool = False  # the status has a stable version: this deployment already serves the model


def owner_of(model: str, claims: Sequence[Claim]) -> Claim | None:
    """The deployment that owns a registered model, the same answer on every pass.

    One already serving wins, then the oldest claim, then the smallest uid. creationTimestamp has a
    resolution of one second, so a newcomer created in the serving deployment's second must not take
    the model over by the luck of its uid.
    """
    mine = sorted((c for c in claims if c.model == model), key=lambda c: (not c.serving, c.created, c.uid))
    return mine[0] if mine else None


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
    notices: tuple[tuple[str, str, str], ...] = ()  # (type, reason, message) about serving objects created, updated, deleted
    retry_seen: str | None = None  # the retry annotation this pass acted on (the handler removes it)


def owned(obj: Mapping[str, Any], uid: str) -> bool:
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or [])


def managed_names(name: str, mode: str | None = None) -> tuple[tuple[str, str], ...]:
    """The (kind, name) pairs the operator may create for ``name`` in ``mode`` (both modes when None)."""
    budget = objects.PDB_KIND
    serverless = ((ISVC, name), (budget, objects.pdb_name(name)))
    standard = (
        *((ISVC, f"{name}-{slot}") for slot in ("blue", "green")),
        *((budget, objects.pdb_name(f"{name}-{slot}")) for slot in ("blue", "green")),
        (objects.ROUTE_KIND, name),
    )
    return serverless if mode == "Serverless" else standard if mode == "Standard" else (*serverless, *standard)


@dataclass
class Pass:
    """What one pass learned, filled as it goes."""

    problems: dict[str, str] = field(default_factory=dict)
    notices: list[tuple[str, str, str]] = field(default_factory=list)
    sources: dict[str, str] = field(default_factory=dict)
    rejected: dict[str, str] = field(default_factory=dict)  # version -> the quality gates it failed
    stable_ready: bool | None = None
    canary_ready: bool = False
    synced: int = 0

    def problem(self, what: str, e: Exception) -> None:
        self.problems.setdefault(what, str(e)[:300])


async def source(sys: Systems, model: str, version: str, p: Pass) -> str | None:
    """A version's artifact URI: from the status, else from MLflow (kept in the status); None when it is not registered
    or is a rejected candidate (noted in ``p.rejected``: registered for inspection, never served)."""
    if version not in p.sources:
        found = await sys.mlflow.model_version(model, version)
        if found is None:
            return None
        gates = reg.rejected_gates({str(t.get("key")): str(t.get("value")) for t in found.get("tags") or []})
        if gates is not None:
            p.rejected[version] = gates
            return None
        p.sources[version] = str(found.get("source") or f"models:/{model}/{version}")
    return p.sources[version]


def unusable(model: str, version: str, p: Pass) -> str:
    gates = p.rejected.get(version)
    return reg.rejected_reason(model, version, gates) if gates is not None else f"version {version} of {model} is not registered"


async def sources(sys: Systems, spec: DeploymentSpec, versions: Sequence[str], p: Pass) -> dict[str, str] | None:
    """Artifact URIs of ``versions``; None (with the problem noted) when one is not registered or MLflow does not answer."""
    model = spec.model.registered_model
    for version in versions:
        try:
            found = await source(sys, model, version, p)
        except ExternalError as e:
            p.problem("registry", e)
            return None
        if found is None:
            p.problems.setdefault("serving", unusable(model, version, p))
            return None
    return {v: p.sources[v] for v in versions}


async def converge_serving(sys: Systems, res: Resource, spec: DeploymentSpec, route: core.Routing, p: Pass) -> None:
    """Create, repair or delete the serving objects so that they match ``route``; note readiness and problems."""
    kube, ns = sys.kube, res.namespace
    observed: dict[tuple[str, str], dict[str, Any]] = {}
    switched = res.status.get("servingMode") != spec.serving.mode
    names = managed_names(res.name, None if switched else spec.serving.mode)
    # Independent reads, sent together: a pass waits for the slowest, not for their sum.
    found, uris = await asyncio.gather(
        asyncio.gather(*(kube.get(kind, ns, name) for kind, name in names)),
        sources(sys, spec, objects.versions_needed(spec, route), p),
    )
    for (kind, name), obj in zip(names, found, strict=True):
        if obj is not None:
            if not owned(obj, res.uid):
                raise ServingConflictError(f"{kind} {ns}/{name} exists and is not owned by this ModelDeployment")
            observed[kind, name] = obj
    if uris is None:
        return
    isvcs = {name: obj for (kind, name), obj in observed.items() if kind == ISVC}
    want = objects.desired(objects.Owner(res.name, ns, res.uid), spec, route, uris, isvcs)
    applied: dict[str, dict[str, Any]] = {}
    for obj in want.objects:
        key = (obj["kind"], obj["metadata"]["name"])
        have = observed.get(key)
        if have is None or objects.differs(obj, have):
            have = await kube.apply(obj, objects.strip_nulls(obj))
            verb = "Created" if key not in observed else "Updated"
            p.notices.append(("Normal", verb, f"{verb} {key[0]} {key[1]} for version {objects.observed_version(obj) or route.stable}"))
        applied[obj["metadata"]["name"]] = have
    for kind, name in want.absent:
        if (kind, name) in observed and await kube.delete(kind, ns, name):
            p.notices.append(("Normal", "Deleted", f"Deleted {kind} {name}"))
    roles = {o["metadata"]["labels"].get(objects.LABEL_ROLE): o["metadata"]["name"] for o in want.objects if o["kind"] == ISVC}
    if "canary" in roles:
        p.canary_ready = objects.ready(applied.get(roles["canary"])) is True
    stable = roles.get("stable") or roles.get("rejected") or roles.get("canary")
    # Serverless: one InferenceService carries both versions; its Ready covers the stable revision as well.
    p.stable_ready = objects.ready(applied.get(stable)) if stable else None


async def converge_registry(sys: Systems, spec: DeploymentSpec, raw: Mapping[str, Any], p: Pass) -> None:
    """Apply the history entries MLflow has not seen: the champion alias and the why on each version."""
    model = spec.model.registered_model
    for entry in core.registry_writes(raw):
        stamp = stamp_of(entry)
        to, frm, why = entry.get("to"), entry.get("from"), str(entry.get("reason") or "")[:500]
        try:
            if entry["event"] == "RolledBack":
                if frm:
                    await sys.mlflow.set_tag(model, str(frm), reg.TAG_ROLLED_BACK_AT, stamp)
                    await sys.mlflow.set_tag(model, str(frm), reg.TAG_ROLLBACK_REASON, why)
                if to:
                    await sys.mlflow.set_alias(model, reg.CHAMPION, str(to))
            elif to:
                await sys.mlflow.set_alias(model, reg.CHAMPION, str(to))
                await sys.mlflow.set_tag(model, str(to), reg.TAG_PROMOTED_AT, stamp)
                await sys.mlflow.set_tag(model, str(to), reg.TAG_PROMOTION_REASON, why)
                if frm:
                    await sys.mlflow.set_tag(model, str(frm), reg.TAG_REPLACED_AT, stamp)
                    await sys.mlflow.set_tag(model, str(frm), reg.TAG_REPLACED_BY, str(to))
        except ExternalError as e:
            p.problem("registry", e)
            return
        p.synced = int(entry["seq"])
    p.synced = max(p.synced, core.history_seq(raw))  # every entry up to here was considered (most need no registry write)


def stamp_of(entry: Mapping[str, Any]) -> str:
    when = entry.get("time")
    return rfc3339(float(when)) if isinstance(when, int | float) else ""


async def track_run(sys: Systems, spec: DeploymentSpec, raw: Mapping[str, Any], p: Pass) -> core.RunReport | None:
    """Start the recorded run (found by name first) or read its state; None when KFP or MLflow did not answer."""
    action = core.run_action(raw)
    if action is None:
        return None
    if sys.kfp is None:
        return core.RunReport(failure="the operator has no KFP endpoint (--kfp-url)")
    r = spec.monitoring.retraining
    try:
        if action[0] == "start":
            run = await sys.kfp.ensure_run(action[1], r.pipeline, r.experiment, core.run_parameters(spec, raw))
            sys.metrics.retraining_runs.inc()
        else:
            run = await sys.kfp.run(action[1])
    except ExternalError as e:
        if e.status in (400, 404) and action[0] == "start":  # an unknown pipeline or a refused request: it will never start
            return core.RunReport(failure=e.message[:300])
        p.problem("pipelines", e)
        return None
    state = str(run.get("state") or "PENDING")
    challenger = None
    if state == "SUCCEEDED":
        try:
            challenger = await sys.mlflow.version_by_alias(spec.model.registered_model, reg.CHALLENGER)
        except ExternalError as e:
            p.problem("registry", e)
            return None
    return core.RunReport(str(run.get("run_id") or action[1]), state, challenger)


async def reference_auc(sys: Systems, model: str, version: str) -> float | None:
    """The version's holdout AUC at training (the policy's reference); None when MLflow does not answer."""
    key = (model, version)
    if key not in sys.reference_auc:
        try:
            mv = await sys.mlflow.model_version(model, version)
            run_id = (mv or {}).get("run_id")
            sys.reference_auc[key] = await sys.mlflow.run_metric(run_id, REFERENCE_AUC_METRIC) if run_id else None
        except ExternalError:
            return None
    return sys.reference_auc[key]


async def resolve_target(sys: Systems, spec: DeploymentSpec, p: Pass) -> tuple[str | None, str | None]:
    """The spec's version (checked to exist) and, when it cannot be used, why; (None, None) while MLflow does not answer."""
    model = spec.model.registered_model
    try:
        version = spec.model.version
        if version is None:
            assert spec.model.alias is not None
            version = await sys.mlflow.version_by_alias(model, spec.model.alias)
            if version is None:
                return None, f"registered model {model} has no alias {spec.model.alias!r}"
        if await source(sys, model, version, p) is None:
            return None, unusable(model, version, p)
    except ExternalError as e:
        p.problem("registry", e)
        return None, None
    return version, None


async def observe_canary(sys: Systems, spec: DeploymentSpec, due: core.Due, now: float, p: Pass) -> Observation:
    assert due.canary is not None and due.stable is not None and due.since is not None
    asked = queries.analysis_queries(
        spec.model.registered_model,
        due.canary,
        due.stable,
        max(now - due.since, 1.0),
        max(now - (due.step_since or due.since), 1.0),
        spec.rollout.analysis.max_latency_p95_ms,
    )
    answers = await sys.prom.answers(asked, now)
    broken = [a for a in answers.values() if a.failed]
    if broken:
        sys.metrics.external_errors.labels("prometheus").inc(len(broken))
        if len(broken) == len(answers):
            p.problems.setdefault("metrics", broken[0].note)
    return observe.analysis_observation(answers, due.look, BUCKETS)


async def observe_signals(sys: Systems, spec: DeploymentSpec, version: str, now: float) -> policy.Observation:
    model = spec.model.registered_model
    drift = spec.monitoring.drift
    answers = await sys.prom.answers(queries.retraining_queries(model, version, drift.methods), now)
    return observe.retraining_observation(answers, drift.threshold, await reference_auc(sys, model, version), now)


async def nothing() -> None:
    return None


async def reconcile(sys: Systems, res: Resource, claims: Sequence[Claim] = ()) -> Result:
    now = sys.clock()
    raw = dict(res.status)
    try:
        spec = parse(res.spec)
    except SpecError as e:
        return Result(core.blocked(raw, Health(problems={"spec": str(e)}), res.generation, now).status)
    owner = owner_of(spec.model.registered_model, claims)
    if owner is not None and owner.uid != res.uid:
        why = f"registered model {spec.model.registered_model} is deployed by {owner.name}; one ModelDeployment per registered model"
        return Result(core.blocked(raw, Health(problems={"owner": why}), res.generation, now).status)
    saved = raw.get("modelSources")
    p = Pass(sources={str(k): str(v) for k, v in saved.items()} if isinstance(saved, Mapping) else {})
    route = core.routing(raw)

    async def serve() -> None:
        if route.stable is not None:
            try:
                await converge_serving(sys, res, spec, route, p)
            except (ExternalError, ServingConflictError) as e:
                p.problem("serving", e)

    async def registry_then_target() -> tuple[str | None, str | None]:
        await converge_registry(sys, spec, raw, p)  # first: the target may follow an alias this moves
        return await resolve_target(sys, spec, p)

    # The serving objects (Kubernetes), the registry (MLflow) and the training run (KFP) are independent: one wait.
    _, run, (target, problem) = await asyncio.gather(serve(), track_run(sys, spec, raw, p), registry_then_target())
    due = core.due(spec, raw, now, p.canary_ready)
    observation, signals = await asyncio.gather(
        observe_canary(sys, spec, due, now, p) if due.check else nothing(),
        observe_signals(sys, spec, due.stable, now) if due.evaluation and due.stable else nothing(),
    )
    retry = res.annotations.get(RETRY_ANNOTATION) or None
    world = core.World(
        target=target,
        target_problem=problem,
        health=Health(p.stable_ready, p.problems),
        canary_ready=p.canary_ready,
        observation=observation,
        signals=signals,
        run=run,
        retry=retry,
        model_ref=core.model_ref(spec),
        run_prefix=retraining.run_prefix(res.namespace, res.name, res.uid),
    )
    plan = core.decide(spec, raw, world, res.generation, now)
    status = core.mark_synced(plan.status, p.synced)
    status["servingMode"] = spec.serving.mode if route.stable is not None else raw.get("servingMode")
    status["modelSources"] = dict(sorted(p.sources.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else 0)[-10:])
    return Result(status, tuple(p.notices), retry)


async def cleanup(kube: Kube, name: str, namespace: str, uid: str) -> list[str]:
    """Delete every serving object this ModelDeployment owns (the finalizer's work)."""
    deleted = []
    for kind, child in managed_names(name):
        obj = await kube.get(kind, namespace, child)
        if obj is not None and owned(obj, uid) and await kube.delete(kind, namespace, child):
            deleted.append(f"{kind} {child}")
    return deleted
