"""The InferenceServices the operator creates give predictor pods that Pod Security ``restricted`` admits.

The pods are built from what the operator really writes (``objects.desired``) and the chart's
ClusterServingRuntime as ``helm template`` renders it, by the upstream rules modelled in
``tests/operators/predictor_pod.py`` (KServe v0.20.0, Knative Serving v0.48.1; the files are cited there).
Serving namespaces enforce ``restricted``, so a pod this checker refuses never runs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from churnops_contract.rollout.core import Routing
from churnops_contract.rollout.spec import parse
from churnops_operator import objects
from tests.charts.render import objects as chart_objects
from tests.operators import predictor_pod as kserve

OWNER = objects.Owner("churn", "churn", "uid-1")
# What MLflow records as a version's source: proxied artifacts (kind) and S3 (EKS)
URIS = {"1": "mlflow-artifacts:/1/models/m-1/artifacts", "2": "s3://churnops-mlflow-artifacts/mlflow/2/models/m-2/artifacts"}
MODES = {"Serverless": {}, "Standard": {"gateway": {"name": "churnops"}}}


def runtime(scenario: str) -> dict[str, Any]:
    (found,) = chart_objects(scenario, "ClusterServingRuntime")
    return found


def isvcs(mode: str) -> list[dict[str, Any]]:
    """Every InferenceService the operator writes mid-canary in ``mode`` (stable and canary)."""
    spec = parse({"model": {"version": "2"}, "featureService": "churn_v1", "serving": {"mode": mode, **MODES[mode]}})
    route = Routing(stable="1", canary="2", weight=25, retired=None, stable_slot="blue", canary_slot="green")
    existing = {"churn": {"metadata": {"labels": {objects.LABEL_VERSION: "1"}}}}  # Serverless: the split needs a running service
    want = objects.desired(OWNER, spec, route, URIS, existing)
    return [objects.strip_nulls(o) for o in want.objects if o["kind"] == objects.ISVC_KIND]


@pytest.mark.parametrize("scenario", ["kind", "eks"])
@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_predictor_pods_pass_pod_security_restricted(scenario: str, mode: str) -> None:
    for isvc in isvcs(mode):
        assert "storageUri" not in isvc["spec"]["predictor"]["model"]
        pod = kserve.pod_for(isvc, runtime(scenario))
        assert [c["name"] for c in pod["spec"].get("initContainers") or []] == []
        assert kserve.restricted_violations(pod) == [], f"{mode} {isvc['metadata']['name']}"
        (server,) = (c for c in pod["spec"]["containers"] if c["name"] == kserve.KSERVE_CONTAINER)
        env = {e["name"]: e.get("value") for e in server["env"]}
        # the predictor finds its version by itself: the runtime's args expand these
        assert env["CHURNOPS_MODEL_VERSION"] == isvc["metadata"]["labels"][objects.LABEL_VERSION]
        assert "--model=$(CHURNOPS_MODEL_VERSION)" in server["args"]
        assert isvc["metadata"]["annotations"][objects.ARTIFACT_ANNOTATION] == URIS[env["CHURNOPS_MODEL_VERSION"]]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_storage_uri_would_inject_an_initializer_that_restricted_refuses(mode: str) -> None:
    """What the operator wrote before: any storageUri, even the runtime's ``storageHelper.disabled``, gets the initializer."""
    for isvc in isvcs(mode):
        old = copy.deepcopy(isvc)
        version = old["metadata"]["labels"][objects.LABEL_VERSION]
        old["spec"]["predictor"]["model"]["storageUri"] = URIS[version]
        pod = kserve.pod_for(old, runtime("kind"))
        assert [c["name"] for c in pod["spec"]["initContainers"]] == [kserve.STORAGE_INITIALIZER]
        refused = kserve.restricted_violations(pod)
        assert refused and all(v.split(": ", 1)[1].startswith(kserve.STORAGE_INITIALIZER) for v in refused), refused
        assert {v.split(":")[0] for v in refused} == {"privilege escalation", "running as non-root", "seccomp", "capabilities"}


def test_kserve_refuses_unknown_schemes_and_passes_mlflow_uris_to_the_initializer() -> None:
    """``models:/`` has no ``://``: KServe takes it for a local path and the initializer fails at download time."""
    kserve.validate_storage_uri("models:/churn/1")
    kserve.validate_storage_uri("mlflow-artifacts:/1/models/m-1/artifacts")
    with pytest.raises(kserve.StorageURIRefusedError):
        kserve.validate_storage_uri("runs://abc/model")


def test_knative_renames_the_port_and_adds_a_restricted_queue_proxy() -> None:
    (isvc,) = isvcs("Serverless")
    pod = kserve.pod_for(isvc, runtime("kind"))
    names = [c["name"] for c in pod["spec"]["containers"]]
    assert names == [kserve.KSERVE_CONTAINER, "queue-proxy"]
    assert pod["spec"]["containers"][0]["ports"] == [{"name": "user-port", "containerPort": 8080}]
    assert "readinessProbe" not in pod["spec"]["containers"][0]  # the queue-proxy probes the container


def test_the_checker_refuses_what_restricted_refuses() -> None:
    (isvc,) = isvcs("Standard")[:1]
    good = kserve.pod_for(isvc, runtime("kind"))
    breaks: dict[str, Callable[[dict[str, Any], dict[str, Any]], object]] = {
        "privilege escalation": lambda c, s: c["securityContext"].pop("allowPrivilegeEscalation"),
        "running as non-root": lambda c, s: c["securityContext"].pop("runAsNonRoot"),
        "running as non-root user": lambda c, s: c["securityContext"].update(runAsUser=0),
        "seccomp": lambda c, s: c["securityContext"].pop("seccompProfile"),
        "capabilities": lambda c, s: c["securityContext"]["capabilities"].update(add=["NET_ADMIN"]),
        "privileged containers": lambda c, s: c["securityContext"].update(privileged=True),
        "host ports": lambda c, s: c["ports"][0].update(hostPort=8080),
        "volume types": lambda c, s: s.setdefault("volumes", []).append({"name": "h", "hostPath": {"path": "/"}}),
        "host namespaces": lambda c, s: s.update(hostNetwork=True),
    }
    for rule, spoil in breaks.items():
        bad = copy.deepcopy(good)
        spoil(bad["spec"]["containers"][0], bad["spec"])
        assert rule in {v.split(":")[0] for v in kserve.restricted_violations(bad)}, rule
    # a pod-level securityContext satisfies the rules it can carry
    moved = copy.deepcopy(good)
    sc = moved["spec"]["containers"][0]["securityContext"]
    sc.pop("runAsNonRoot"), sc.pop("seccompProfile")
    moved["spec"]["securityContext"] = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
    assert kserve.restricted_violations(moved) == []
