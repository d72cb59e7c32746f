"""Every rendered object against the schema of its kind, offline.

- Kubernetes' own kinds: ``kubernetes-validate`` (the newest release it ships), strict (unknown fields fail);
- our ModelDeployment and kopf's ClusterKopfPeering: the openAPIV3Schema of their CRDs (JSON Schema);
- KServe's ClusterServingRuntime: the kserve SDK's models with client-side validation, round-tripped so
  that no field is lost (its containers and volumes are Kubernetes' own types, checked strictly as well);
- Gateway API, Prometheus Operator, Knative, Istio and cert-manager objects: the JSON schemas of the
  pinned ``@kubernetes-models`` npm packages.
Each validator is also shown to reject a broken object, so a pass means something.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from tests.charts.render import CHART, SCENARIOS, all_objects, crd_chart, dask_operator_crds, documents, object_id, objects, template
from tests.support.k8s_tools import SCHEMA_PACKAGES, validate_with_npm_schemas

K8S = kubernetes_validate.latest_version()
# The CRDs as the CRD chart (charts/churnops-crds, installed first) renders them, and the Dask Kubernetes
# operator's (its Helm chart's CRDs, as its pinned Python package ships them).
CRDS = {
    (crd["spec"]["group"], crd["spec"]["names"]["kind"]): crd
    for crd in [*crd_chart(), *dask_operator_crds()]
    if crd["kind"] == "CustomResourceDefinition"
}
KSERVE_KINDS = {"ClusterServingRuntime": "V1alpha1ClusterServingRuntime", "InferenceService": "V1beta1InferenceService"}


def group(obj: dict[str, Any]) -> str:
    api = str(obj["apiVersion"])
    return api.split("/", maxsplit=1)[0] if "/" in api else ""


def is_core(obj: dict[str, Any]) -> bool:
    return (group(obj), obj["kind"]) not in CRDS and obj["kind"] not in KSERVE_KINDS and group(obj) not in SCHEMA_PACKAGES


def test_every_rendered_kind_has_a_validator() -> None:
    for _scenario, obj in all_objects():
        if is_core(obj):
            kubernetes_validate.validate(obj, K8S, strict=True)  # raises SchemaNotFoundError for an unknown kind


@pytest.mark.parametrize("item", [i for i in all_objects() if is_core(i[1])], ids=object_id)
def test_kubernetes_objects(item: tuple[str, dict[str, Any]]) -> None:
    kubernetes_validate.validate(item[1], K8S, strict=True)


def test_kubernetes_validation_rejects_a_broken_object() -> None:
    sts = copy.deepcopy(objects("kind", "StatefulSet")[0])
    sts["spec"]["template"]["spec"]["containers"][0]["resources"]["limit"] = {"cpu": "1"}  # a typo: limit
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(sts, K8S, strict=True)


def crd_schema(obj: dict[str, Any]) -> dict[str, Any]:
    crd = CRDS[(group(obj), obj["kind"])]
    version = next(v for v in crd["spec"]["versions"] if v["name"] == obj["apiVersion"].split("/")[1])
    return dict(version["schema"]["openAPIV3Schema"])


@pytest.mark.parametrize("item", [i for i in all_objects() if (group(i[1]), i[1]["kind"]) in CRDS], ids=object_id)
def test_custom_resources_of_our_crds(item: tuple[str, dict[str, Any]]) -> None:
    obj = item[1]
    jsonschema.Draft4Validator(crd_schema(obj)).validate({k: v for k, v in obj.items() if k not in ("apiVersion", "kind", "metadata")})
    kubernetes_validate.validate({"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}, K8S, strict=True)


def test_crd_schema_rejects_a_bad_model_deployment() -> None:
    md = copy.deepcopy(objects("eks", "ModelDeployment")[0])
    md["spec"]["rollout"]["steps"] = [5, 150]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(crd_schema(md)).validate({"spec": md["spec"]})


@pytest.fixture(scope="module")
def kserve_client() -> Iterator[Any]:
    """kserve's API client with client-side validation; its models name Kubernetes' own (V1Container …) by string."""
    import kserve  # noqa: PLC0415  # test-only, slow to import
    import kubernetes.client.models as k8s_models  # type: ignore[import-untyped]  # noqa: PLC0415

    added = [name for name in dir(k8s_models) if name.startswith("V1") and not hasattr(kserve.models, name)]
    for name in added:
        setattr(kserve.models, name, getattr(k8s_models, name))
    config = kserve.Configuration()
    config.client_side_validation = True
    yield kserve.ApiClient(configuration=config)
    for name in added:
        delattr(kserve.models, name)


def lost(want: Any, have: Any, path: str = "") -> list[str]:
    """Fields of ``want`` missing or changed in ``have``."""
    if isinstance(want, dict):
        if not isinstance(have, dict):
            return [path or "/"]
        return [p for k, v in want.items() for p in lost(v, have.get(k), f"{path}/{k}")]
    if isinstance(want, list):
        if not isinstance(have, list) or len(want) != len(have):
            return [path]
        return [p for i, (w, h) in enumerate(zip(want, have, strict=True)) for p in lost(w, h, f"{path}/{i}")]
    return [] if want == have else [path]


@pytest.mark.parametrize("item", [i for i in all_objects() if i[1]["kind"] in KSERVE_KINDS], ids=object_id)
def test_kserve_objects_through_the_sdk(kserve_client: Any, item: tuple[str, dict[str, Any]]) -> None:
    obj = item[1]
    model = kserve_client._ApiClient__deserialize(obj, KSERVE_KINDS[obj["kind"]])  # validates while it builds
    back = kserve_client.sanitize_for_serialization(model)
    assert not lost(obj, back), lost(obj, back)
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "x"},
        "spec": {k: obj["spec"][k] for k in ("containers", "volumes") if k in obj["spec"]},
    }
    kubernetes_validate.validate(pod, K8S, strict=True)


def test_kserve_sdk_rejects_a_broken_runtime(kserve_client: Any) -> None:
    runtime = copy.deepcopy(objects("kind", "ClusterServingRuntime")[0])
    del runtime["spec"]["containers"]
    with pytest.raises(ValueError, match="containers"):
        kserve_client._ApiClient__deserialize(runtime, "V1alpha1ClusterServingRuntime")


def optional_objects() -> list[tuple[str, dict[str, Any]]]:
    """Objects of switches no scenario turns on (Istio: no install path ships it), rendered on top of kind."""
    code, out, err = template("-f", CHART / "ci" / "kind-values.yaml", "--set", "istio.enabled=true")
    assert code == 0, err
    return [("kind+istio", o) for o in documents(out) if group(o) == "security.istio.io"]


def npm_objects() -> list[tuple[str, dict[str, Any]]]:
    return [i for i in all_objects() + optional_objects() if group(i[1]) in SCHEMA_PACKAGES]


def test_objects_of_other_projects_against_their_published_schemas() -> None:
    items = npm_objects()
    kinds = {o["kind"] for _, o in items}
    assert {
        "Gateway",
        "HTTPRoute",
        "PrometheusRule",
        "ServiceMonitor",
        "PodMonitor",
        "Certificate",
        "DomainMapping",
        "PeerAuthentication",
    } <= kinds, kinds
    verdicts = validate_with_npm_schemas([o for _, o in items])
    failed = [f"{object_id(i)}: {v}" for i, v in zip(items, verdicts, strict=True) if v != "ok"]
    assert not failed, failed


def test_published_schemas_reject_broken_objects() -> None:
    by_kind = {o["kind"]: o for _, o in npm_objects()}
    broken = []
    rule = copy.deepcopy(by_kind["PrometheusRule"])
    rule["spec"]["groups"][0]["rules"] = "not a list"
    broken.append(rule)
    route = copy.deepcopy(by_kind["HTTPRoute"])
    route["spec"]["rules"][0]["backendRefs"][0]["weight"] = -1
    broken.append(route)
    cert = copy.deepcopy(by_kind["Certificate"])
    del cert["spec"]["issuerRef"]
    broken.append(cert)
    peer = copy.deepcopy(by_kind["PeerAuthentication"])
    peer["spec"]["mtls"]["mode"] = "SOMETIMES"
    broken.append(peer)
    mapping = copy.deepcopy(by_kind["DomainMapping"])
    del mapping["spec"]["ref"]
    broken.append(mapping)
    verdicts = validate_with_npm_schemas(broken)
    assert all(v != "ok" for v in verdicts), verdicts


def test_scenarios_cover_every_optional_component() -> None:
    names = {(o["kind"], o["metadata"]["name"]) for s in SCENARIOS for o in objects(s)}
    for kind in (
        "Gateway",
        "HTTPRoute",
        "ClusterServingRuntime",
        "PrometheusRule",
        "PodMonitor",
        "DomainMapping",
        "Job",
        "CronJob",
    ):
        assert any(k == kind for k, _ in names), kind
    assert {o["kind"] for _, o in optional_objects()} == {"PeerAuthentication"}
