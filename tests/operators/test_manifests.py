"""Offline validation of the CRD, RBAC, samples and every object the operator creates.

- the CRD and RBAC against Kubernetes' own schemas (``kubernetes-validate``, strict);
- the samples against the CRD's schema (JSON Schema) and the operator's spec parser,
  which repeats the CRD's CEL rules (no CEL runtime for Kubernetes' list library offline);
- InferenceServices through the kserve SDK's v1beta1 models (client-side validation),
  round-tripped so that no field is lost;
- HTTPRoutes against Gateway API's published schemas (npm ``@kubernetes-models/gateway-api``);
- the metadata of created objects (labels, owner references) against Kubernetes' ObjectMeta.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from churnops_contract.rollout import core
from churnops_contract.rollout import machine as rollout
from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.spec import parse
from churnops_operator import objects as serving
from tests.operators.harness import crd_defaults
from tests.support.k8s_tools import validate_with_npm_schemas

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
CRD = yaml.safe_load((MANIFESTS / "crds" / "churnops.io_modeldeployments.yaml").read_text())
SCHEMA = CRD["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
K8S = kubernetes_validate.latest_version()
OWNER = serving.Owner("churn", "churn", "0b7c4b1e-5f0e-4c53-9a55-2b1b5f3f9d11")
URIS = {"6": "s3://churnops-models/churn-classifier/6", "7": "s3://churnops-models/churn-classifier/7"}


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def samples() -> list[dict[str, Any]]:
    return [d for p in sorted((MANIFESTS / "samples").glob("*.yaml")) for d in docs(p)]


def statuses() -> Iterator[tuple[str, Any, RolloutStatus, dict[str, Any]]]:
    """Every kind of status the serving objects are built for, in both modes."""
    for mode in ("Serverless", "Standard"):
        raw = {
            "model": {"version": "7"},
            "featureService": "churn_v1",
            "serving": {"mode": mode, "gateway": {"name": "churnops", "namespace": "gw"}},
        }
        s = parse(raw)
        stable = rollout.decide(s, RolloutStatus(), "6", 0.0).status
        canary = rollout.decide(s, stable, "7", 1.0).status
        rolled = replace(stable, phase="RolledBack", rejected=("7",), retired="7")
        observed = {"churn": {"metadata": {"labels": {serving.LABEL_VERSION: "7"}}}}
        yield f"{mode}-stable", s, stable, {}
        yield f"{mode}-canary", s, canary, observed
        yield f"{mode}-rolled-back", s, rolled, observed


def created_objects() -> list[dict[str, Any]]:
    return [
        serving.strip_nulls(o)
        for _, s, st, observed in statuses()
        for o in serving.desired(OWNER, s, core.routing(st.to_status()), URIS, observed).objects
    ]


@pytest.mark.parametrize(
    "path", [*sorted((MANIFESTS / "crds").glob("*.yaml")), *sorted((MANIFESTS / "rbac").glob("*.yaml"))], ids=lambda p: p.name
)
def test_crd_and_rbac_validate_against_kubernetes_schemas(path: Path) -> None:
    for doc in docs(path):
        kubernetes_validate.validate(doc, K8S, strict=True)


def test_every_schema_field_is_described_and_typed() -> None:
    missing: list[str] = []

    def walk(node: dict[str, Any], path: str) -> None:
        for key, sub in (node.get("properties") or {}).items():
            here = f"{path}.{key}"
            if key != "metadata" and not sub.get("description"):
                missing.append(f"{here}: no description")
            if "type" not in sub:
                missing.append(f"{here}: no type")
            walk(sub, here)
            if isinstance(sub.get("items"), dict):
                walk(sub["items"], f"{here}[]")

    walk(SCHEMA, "")
    assert not missing, missing


def test_printer_columns_and_names() -> None:
    version = CRD["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Ready", "Stable", "Canary", "Weight", "Phase", "Age"]
    assert version["subresources"] == {"status": {}} and "md" in CRD["spec"]["names"]["shortNames"]


@pytest.mark.parametrize("sample", samples(), ids=lambda d: d["metadata"]["name"])
def test_samples_validate_against_the_crd(sample: dict[str, Any]) -> None:
    with_defaults = {**sample, "spec": crd_defaults(sample["spec"])}
    jsonschema.Draft4Validator(SCHEMA).validate(with_defaults)
    parse(with_defaults["spec"])  # the CEL rules, as the operator applies them


@pytest.mark.parametrize(
    "bad",
    [
        {"rollout": {"steps": [5, 25, 101]}},
        {"rollout": {"analysis": {"maxErrorRate": -0.1}}},
        {"serving": {"mode": "Knative"}},
        {"model": {"version": "seven"}},
        {"rollout": {"interval": "5 minutes"}},
    ],
)
def test_the_crd_schema_rejects_bad_specs(bad: dict[str, Any]) -> None:
    base = samples()[0]
    spec = {**base["spec"], **bad, "model": {**base["spec"]["model"], **bad.get("model", {})}}
    if "version" in spec["model"]:
        spec["model"].pop("alias", None)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.Draft4Validator(SCHEMA).validate({**base, "spec": crd_defaults(spec)})


def test_status_written_by_the_operator_fits_the_crd_schema() -> None:
    from churnops_contract.rollout import core, retraining  # noqa: PLC0415
    from churnops_contract.rollout.machine import Deferred, Event  # noqa: PLC0415
    from churnops_contract.rollout.status import Health  # noqa: PLC0415

    health = Health(True, {"metrics": "Prometheus unreachable"})
    event = Event("Warning", "RolledBack", "rolled back", "2", "1", "why")
    for _, _, found, _ in statuses():
        st = replace(found, deferred=Deferred("3", 500.0, 1), retired="3")
        full = core.assemble(None, st, retraining.RetrainingStatus(pending_key="k"), (event,), health, 3, 100.0).status
        full = {**full, "modelSources": {"1": "s3://m/1"}, "servingMode": "Serverless"}
        jsonschema.Draft4Validator(SCHEMA["properties"]["status"]).validate(serving.strip_nulls(full))


@pytest.fixture(scope="module")
def kserve_client() -> Iterator[Any]:
    """kserve's generated API client; its models name Kubernetes' own (V1ObjectMeta, V1EnvVar) by string."""
    import kserve  # noqa: PLC0415  # test-only: the operator never imports kserve
    import kubernetes.client.models as k8s_models  # type: ignore[import-untyped]  # noqa: PLC0415

    added = [name for name in dir(k8s_models) if name.startswith("V1") and not hasattr(kserve.models, name)]
    for name in added:
        setattr(kserve.models, name, getattr(k8s_models, name))
    yield kserve.ApiClient()
    for name in added:
        delattr(kserve.models, name)


@pytest.mark.parametrize(("name", "spec", "st", "observed"), list(statuses()), ids=[n for n, *_ in statuses()])
def test_inference_services_round_trip_through_the_kserve_sdk(
    kserve_client: Any, name: str, spec: Any, st: RolloutStatus, observed: dict[str, Any]
) -> None:
    client = kserve_client
    for obj in serving.desired(OWNER, spec, core.routing(st.to_status()), URIS, observed).objects:
        if obj["kind"] != serving.ISVC_KIND:
            continue
        want = serving.strip_nulls(obj)
        model = client._ApiClient__deserialize(want, "V1beta1InferenceService")  # validates as it builds
        back = client.sanitize_for_serialization(model)
        assert not serving.differs(want, back), (want, back)  # nothing lost or changed (the SDK adds model.name="")


@pytest.mark.parametrize("obj", created_objects(), ids=lambda o: f"{o['kind']}-{o['metadata']['name']}")
def test_created_object_metadata_is_valid_object_meta(obj: dict[str, Any]) -> None:
    shell = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": obj["metadata"]}
    kubernetes_validate.validate(shell, K8S, strict=True)


def test_http_routes_validate_against_gateway_api_schemas() -> None:
    routes = [o for o in created_objects() if o["kind"] == serving.ROUTE_KIND]
    bad = {**routes[0], "spec": {**routes[0]["spec"], "rules": [{"backendRefs": [{"name": "x", "port": 80, "weight": -1}]}]}}
    # the pinned @kubernetes-models/gateway-api package installed by `make tools` (tests/tools), nothing fetched here
    verdicts = validate_with_npm_schemas([*routes, bad])
    assert verdicts[:-1] == ["ok"] * len(routes), verdicts
    assert "weight" in verdicts[-1]  # the validator does reject a bad route
