"""Rendered manifests for GitOps (manifests/kustomize/<scenario>): current, and buildable with kustomize."""

from __future__ import annotations

import pytest
from charts.sync import GITOPS_SCENARIOS, gitops_differences

from tests.charts.render import crd_chart, documents, rendered
from tests.support.k8s_tools import ROOT, binary, run, validate_with_npm_schemas


def test_rendered_manifests_are_current() -> None:
    assert gitops_differences(binary("helm")) == [], "run `make gitops`"


@pytest.mark.parametrize("scenario", GITOPS_SCENARIOS)
def test_kustomize_builds_the_chart_and_the_namespace(scenario: str) -> None:
    result = run([binary("kubectl"), "kustomize", ROOT / "manifests" / "kustomize" / scenario])
    assert result.returncode == 0, result.stderr
    built = documents(result.stdout)
    keys = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in built}
    chart = {(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rendered(scenario)}
    assert chart <= keys
    namespace = next(o for o in built if o["kind"] == "Namespace" and o["metadata"]["name"] == "churnops-system")
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_kind_issuer_is_a_valid_cert_manager_object() -> None:
    issuer = documents((ROOT / "manifests" / "kustomize" / "kind" / "selfsigned-issuer.yaml").read_text())
    assert validate_with_npm_schemas(issuer) == ["ok"]
    kind_values = (ROOT / "charts" / "churnops" / "ci" / "kind-values.yaml").read_text()
    assert f"name: {issuer[0]['metadata']['name']}" in kind_values


@pytest.mark.parametrize("scenario", GITOPS_SCENARIOS)
def test_gitops_render_carries_the_crds_before_their_objects(scenario: str) -> None:
    """GitOps applies one directory: the CRD chart's objects come with it, ahead of the chart's (Argo CD and Flux
    also order CustomResourceDefinitions first)."""
    docs = documents((ROOT / "manifests" / "kustomize" / scenario / "churnops.yaml").read_text())
    crds = [i for i, d in enumerate(docs) if d["kind"] == "CustomResourceDefinition"]
    assert [docs[i] for i in crds] == list(crd_chart())
    users = [i for i, d in enumerate(docs) if d["kind"] in {"ModelDeployment", "ClusterKopfPeering"}]
    assert users and max(crds) < min(users)
