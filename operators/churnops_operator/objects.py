"""The KServe and Gateway API objects a ModelDeployment should have, built as plain data from the core's ``Routing``.

``import kserve`` would load numpy, pandas, FastAPI, gRPC and Arrow into the
operator (about 2 s, and a large image), so the objects are dicts here; the
tests round-trip each one through the kserve SDK's v1beta1 models and Gateway
API's published schemas.

Serverless (Knative) mode: one InferenceService ``<name>``. KServe's own
canary: the spec carries the canary model and ``canaryTrafficPercent`` sends
that share to it, the rest to the previous rolled-out revision (the stable
one); promotion removes the field, rollback pins it to 0. A missing
InferenceService is recreated with the stable model only: a fresh object has
no previous revision, so a canary split would send everything to the canary.

Standard (RawDeployment) mode: KServe has no traffic split, so the stable and
the canary run in two InferenceServices that alternate between the slots
``<name>-blue`` and ``<name>-green``, and a Gateway API ``HTTPRoute`` named
``<name>`` weights their predictor Services. Promotion flips the stable slot
(the canary's InferenceService already runs the new version at 100 %), so no
object is rebuilt at the moment of promotion.

With ``minReplicas`` of two or more, each InferenceService gets a
PodDisruptionBudget over its predictor pods: a node drain evicts them one at a
time, so the others keep serving while a replacement becomes ready.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from churnops_contract.rollout.core import Routing
from churnops_contract.rollout.machine import SLOTS
from churnops_contract.rollout.spec import API_VERSION, KIND, DeploymentSpec

ISVC_API = "serving.kserve.io/v1beta1"
ISVC_KIND = "InferenceService"
ROUTE_API = "gateway.networking.k8s.io/v1"
ROUTE_KIND = "HTTPRoute"
PDB_API = "policy/v1"
PDB_KIND = "PodDisruptionBudget"
# The label KServe puts on every predictor pod in both modes (kserve pkg/constants/constants.go
# InferenceServicePodLabelKey, set by components/predictor.go buildObjectMeta).
ISVC_POD_LABEL = "serving.kserve.io/inferenceservice"
MIN_REPLICAS_FOR_PDB = 2  # one replica cannot be disrupted safely anyway: a budget would only block node drains
LABEL_DEPLOYMENT = "churnops.io/deployment"
LABEL_VERSION = "churnops.io/model-version"
LABEL_ROLE = "churnops.io/role"
MODE_ANNOTATION = "serving.kserve.io/deploymentMode"
# Where the version's artifact is, for people reading the object; KServe never reads it (see inference_service).
ARTIFACT_ANNOTATION = "churnops.io/artifact-uri"
# KServe >= 0.16 names the modes Knative and Standard, and its defaulting webhook rewrites the older names
# (kserve pkg/apis/serving/v1beta1/inference_service_defaults.go, DefaultInferenceService; pkg/constants/constants.go).
KSERVE_MODE = {"Serverless": "Knative", "Standard": "Standard"}
MODE_ALIASES = {"Serverless": "Knative", "RawDeployment": "Standard"}
MANAGED_BY = {"app.kubernetes.io/managed-by": "churnops-operator", "app.kubernetes.io/part-of": "churnops"}
PREDICTOR_PORT = 80  # KServe's predictor Service port in RawDeployment mode


@dataclass(frozen=True)
class Owner:
    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class Desired:
    objects: tuple[dict[str, Any], ...]  # to create or patch, in this order
    absent: tuple[tuple[str, str], ...]  # (kind, name) to delete after the objects are applied


def same_mode(want: str | None, have: str | None) -> bool:
    """Whether two deployment-mode annotation values mean the same mode (KServe rewrites the legacy names)."""
    return MODE_ALIASES.get(want or "", want) == MODE_ALIASES.get(have or "", have)


def ready(obj: Mapping[str, Any] | None) -> bool | None:
    """An InferenceService's own Ready condition for its current spec: None until its controller reported on this generation.

    KServe writes ``status.observedGeneration`` and a ``Ready`` condition (knative duck ``Status``;
    kserve pkg/apis/serving/v1beta1/inference_service_status.go): a status for an older generation
    says nothing about the spec the operator just applied.
    """
    if obj is None:
        return False
    st = obj.get("status") or {}
    meta = obj.get("metadata") or {}
    observed, generation = st.get("observedGeneration"), meta.get("generation")
    if not isinstance(observed, int) or (isinstance(generation, int) and observed < generation):
        return None
    condition = next((c for c in st.get("conditions") or [] if isinstance(c, Mapping) and c.get("type") == "Ready"), None)
    if condition is None:
        return None
    return {"True": True, "False": False}.get(str(condition.get("status")))


def _meta(owner: Owner, name: str, labels: Mapping[str, str], annotations: Mapping[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": {**MANAGED_BY, LABEL_DEPLOYMENT: owner.name, **labels},
        "annotations": dict(annotations),
        "ownerReferences": [
            {"apiVersion": API_VERSION, "kind": KIND, "name": owner.name, "uid": owner.uid, "controller": True, "blockOwnerDeletion": True}
        ],
    }


def inference_service(
    owner: Owner, name: str, spec: DeploymentSpec, version: str, artifact_uri: str, role: str, mode: str, canary_percent: int | None
) -> dict[str, Any]:
    """One InferenceService serving ``version``; ``canary_percent`` None leaves no split.

    No ``storageUri``: any storage URI makes KServe inject its ``storage-initializer`` init container, which
    carries no securityContext (refused where Pod Security ``restricted`` is enforced) and cannot download
    ``models:/`` or ``mlflow-artifacts:/`` URIs anyway. The predictor loads ``CHURNOPS_MODEL_VERSION`` from
    MLflow itself and checks its digest; the artifact's URI is kept as an annotation for people.
    """
    env = [
        {"name": "CHURNOPS_REGISTERED_MODEL", "value": spec.model.registered_model},
        {"name": "CHURNOPS_MODEL_VERSION", "value": version},
        # stable and canary answer under one URL name (/v1/models/<deployment>:predict), whichever gets the request
        {"name": "CHURNOPS_SERVED_NAME", "value": owner.name},
        {"name": "CHURNOPS_FEATURE_SERVICE", "value": spec.feature_service},
        {"name": "CHURNOPS_EXPLAIN", "value": "true" if spec.serving.explain else "false"},
    ]
    predictor: dict[str, Any] = {
        "minReplicas": spec.serving.min_replicas,
        "maxReplicas": spec.serving.max_replicas,
        # Explicit null: a merge patch removes a split left by a previous state or an edit.
        "canaryTrafficPercent": canary_percent,
        "model": {
            "modelFormat": {"name": "churnops"},
            "runtime": spec.serving.runtime,
            "storageUri": None,  # removed from objects an older operator created (merge patch), never set
            "env": env,
        },
    }
    if mode == KSERVE_MODE["Standard"]:
        # Replicas on distinct nodes where there are several, so a node loss leaves one serving. Knative refuses
        # the field unless its kubernetes.podspec-topologyspreadconstraints flag is on (knative/serving
        # pkg/apis/config/features.go); there the scheduler's default soft spreading applies.
        selector = {"matchLabels": {ISVC_POD_LABEL: name, "component": "predictor"}}
        spread = {"maxSkew": 1, "topologyKey": "kubernetes.io/hostname", "whenUnsatisfiable": "ScheduleAnyway", "labelSelector": selector}
        predictor["topologySpreadConstraints"] = [spread]
    annotations = {MODE_ANNOTATION: mode, ARTIFACT_ANNOTATION: artifact_uri}
    return {
        "apiVersion": ISVC_API,
        "kind": ISVC_KIND,
        "metadata": _meta(owner, name, {LABEL_VERSION: version, LABEL_ROLE: role}, annotations),
        "spec": {"predictor": predictor},
    }


def pdb_name(isvc: str) -> str:
    return f"{isvc}-predictor"


def disruption_budget(owner: Owner, isvc: str) -> dict[str, Any]:
    """At most one predictor pod of ``isvc`` evicted at a time (every revision of it in Knative mode)."""
    spec = {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {ISVC_POD_LABEL: isvc, "component": "predictor"}},
        # a pod that is not ready serves nothing: evicting it never blocks a drain (policy/v1, Kubernetes >= 1.27)
        "unhealthyPodEvictionPolicy": "AlwaysAllow",
    }
    return {"apiVersion": PDB_API, "kind": PDB_KIND, "metadata": _meta(owner, pdb_name(isvc), {}, {}), "spec": spec}


def http_route(owner: Owner, spec: DeploymentSpec, backends: list[tuple[str, int]]) -> dict[str, Any]:
    """The HTTPRoute splitting traffic between predictor Services; weights sum to 100."""
    gateway = spec.serving.gateway
    assert gateway is not None  # the spec parser requires it in Standard mode
    parent: dict[str, Any] = {"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway.name}
    if gateway.namespace:
        parent["namespace"] = gateway.namespace
    if gateway.section_name:
        parent["sectionName"] = gateway.section_name
    route: dict[str, Any] = {
        "parentRefs": [parent],
        "rules": [
            {
                "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                "backendRefs": [{"name": f"{svc}-predictor", "port": PREDICTOR_PORT, "weight": weight} for svc, weight in backends],
            }
        ],
    }
    if spec.serving.hostnames:
        route["hostnames"] = list(spec.serving.hostnames)
    return {"apiVersion": ROUTE_API, "kind": ROUTE_KIND, "metadata": _meta(owner, owner.name, {}, {}), "spec": route}


def observed_version(obj: Mapping[str, Any] | None) -> str | None:
    if obj is None:
        return None
    labels = (obj.get("metadata") or {}).get("labels") or {}
    version = labels.get(LABEL_VERSION)
    return str(version) if version is not None else None


def desired(
    owner: Owner,
    spec: DeploymentSpec,
    route: Routing,
    uris: Mapping[str, str],
    observed: Mapping[str, Mapping[str, Any]],
) -> Desired:
    """What should exist for ``route``; ``observed`` maps InferenceService names to what the API server has."""
    assert route.stable is not None
    name = owner.name
    slots = tuple(f"{name}-{slot}" for slot in SLOTS)
    if spec.serving.mode == "Serverless":
        mode = KSERVE_MODE["Serverless"]
        current = observed.get(name)
        if route.canary is not None and current is not None:
            obj = inference_service(owner, name, spec, route.canary, uris[route.canary], "canary", mode, route.weight)
        elif route.canary is None and route.retired is not None and observed_version(current) == route.retired:
            # Keep the rolled-back revision pinned at 0 %: the previous revision (stable) takes all traffic.
            obj = inference_service(owner, name, spec, route.retired, uris[route.retired], "rejected", mode, 0)
        else:
            obj = inference_service(owner, name, spec, route.stable, uris[route.stable], "stable", mode, None)
        return _with_budgets(owner, spec, [obj], [], [*((ISVC_KIND, s) for s in slots), (ROUTE_KIND, name)])
    mode = KSERVE_MODE["Standard"]
    stable_name, canary_name = f"{name}-{route.stable_slot}", f"{name}-{route.canary_slot}"
    isvcs = [inference_service(owner, stable_name, spec, route.stable, uris[route.stable], "stable", mode, None)]
    absent: list[tuple[str, str]] = [(ISVC_KIND, name)]
    if route.canary is not None:
        isvcs.append(inference_service(owner, canary_name, spec, route.canary, uris[route.canary], "canary", mode, None))
        backends = [(stable_name, 100 - route.weight), (canary_name, route.weight)]
    else:
        absent.append((ISVC_KIND, canary_name))
        backends = [(stable_name, 100)]
    return _with_budgets(owner, spec, isvcs, [http_route(owner, spec, backends)], absent)


def _with_budgets(
    owner: Owner, spec: DeploymentSpec, isvcs: list[dict[str, Any]], others: list[dict[str, Any]], absent: list[tuple[str, str]]
) -> Desired:
    """The InferenceServices, each followed by its PodDisruptionBudget when it runs enough replicas, then ``others``."""
    objects: list[dict[str, Any]] = []
    gone = list(absent)
    for isvc in isvcs:
        objects.append(isvc)
        budget = disruption_budget(owner, isvc["metadata"]["name"])
        if spec.serving.min_replicas >= MIN_REPLICAS_FOR_PDB:
            objects.append(budget)
        else:
            gone.append((PDB_KIND, budget["metadata"]["name"]))
    gone += [(PDB_KIND, pdb_name(isvc)) for kind, isvc in absent if kind == ISVC_KIND]
    return Desired((*objects, *others), tuple(gone))


def versions_needed(spec: DeploymentSpec, route: Routing) -> tuple[str, ...]:
    """Model versions whose artifact URIs ``desired`` may need (each checked to be registered in MLflow first)."""
    found = [v for v in (route.stable, route.canary) if v is not None]
    if spec.serving.mode == "Serverless" and route.canary is None and route.retired is not None:
        found.append(route.retired)
    return tuple(dict.fromkeys(found))


def differs(want: Any, have: Any) -> bool:
    """Whether ``have`` lacks what ``want`` asks for: dicts compare by ``want``'s keys (None means absent), lists whole.

    The deployment-mode annotation compares by meaning: KServe's webhook rewrites legacy names, and a diff that
    never settles would patch the InferenceService on every pass.
    """
    if isinstance(want, Mapping):
        if not isinstance(have, Mapping):
            return True
        for key, value in want.items():
            if key == MODE_ANNOTATION and isinstance(value, str):
                if not same_mode(value, have.get(key)):
                    return True
            elif value is None:
                if have.get(key) is not None:
                    return True
            elif differs(value, have.get(key)):
                return True
        return False
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return True
        return any(differs(w, h) for w, h in zip(want, have, strict=True))
    return bool(want != have)


def strip_nulls(obj: Any) -> Any:
    """The object to create: a null in a merge patch means "remove", in a created object nothing."""
    if isinstance(obj, Mapping):
        return {k: strip_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [strip_nulls(v) for v in obj]
    return obj


def route_weights(route: Mapping[str, Any] | None) -> list[int]:
    """The backend weights of an HTTPRoute (for status and tests)."""
    if not route:
        return []
    rules = (route.get("spec") or {}).get("rules") or []
    return [int(ref.get("weight", 1)) for rule in rules for ref in rule.get("backendRefs") or []]
