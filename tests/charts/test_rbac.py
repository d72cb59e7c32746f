"""The chart's RBAC equals the canonical manifests/rbac/ (which the operator's tests hold to the API calls it makes).

Rules are compared as sets of (apiGroup, resource, verb, resourceName) grants, so that splitting or
reordering rules changes nothing while a missing or an extra permission fails.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.render import SCENARIOS, load_yaml, objects
from tests.support.k8s_tools import ROOT

RBAC = ROOT / "manifests" / "rbac"
# Verbs that "*" grants on a custom resource (the chart lists them instead of the wildcard).
ALL_VERBS = {"create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"}


def grants(rules: list[dict[str, Any]]) -> set[tuple[str, str, str, str]]:
    return {
        (group, resource, verb, name)
        for rule in rules
        for group in rule.get("apiGroups", [])
        for resource in rule.get("resources", [])
        for verb in (ALL_VERBS if rule["verbs"] == ["*"] else rule["verbs"])
        for name in rule.get("resourceNames") or ["*any*"]
    }


def canonical(kind: str, name: str) -> dict[str, Any]:
    return next(d for p in sorted(RBAC.glob("*.yaml")) for d in load_yaml(p) if d["kind"] == kind and d["metadata"]["name"] == name)


def chart_role(scenario: str, suffix: str) -> dict[str, Any]:
    return next(r for r in objects(scenario, "ClusterRole") if r["metadata"]["name"].endswith(suffix))


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_role_equals_the_canonical_one(scenario: str) -> None:
    want = grants(canonical("ClusterRole", "churnops-operator")["rules"])
    have = grants(chart_role(scenario, "-operator")["rules"])
    assert not want - have, f"missing in the chart: {sorted(want - have)}"
    assert not have - want, f"extra in the chart: {sorted(have - want)}"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_operator_binding_names_the_pods_service_account(scenario: str) -> None:
    binding = next(b for b in objects(scenario, "ClusterRoleBinding") if b["metadata"]["name"].endswith("-operator"))
    sts = next(s for s in objects(scenario, "StatefulSet") if s["metadata"]["name"].endswith("-operator"))
    assert binding["roleRef"]["name"] == chart_role(scenario, "-operator")["metadata"]["name"]
    subject = binding["subjects"][0]
    assert subject == {
        "kind": "ServiceAccount",
        "name": sts["spec"]["template"]["spec"]["serviceAccountName"],
        "namespace": sts["metadata"]["namespace"],
    }
    assert len(binding["subjects"]) == 1
    assert not objects(scenario, "RoleBinding") and len(objects(scenario, "ClusterRoleBinding")) == 1  # nothing else is granted


@pytest.mark.parametrize("role", ["admin", "editor", "viewer"])
def test_user_roles_equal_the_canonical_ones(role: str) -> None:
    want = canonical("ClusterRole", f"churnops-modeldeployment-{role}")
    have = chart_role("kind", f"-modeldeployment-{role}")
    assert grants(have["rules"]) == grants(want["rules"])
    aggregate = {k: v for k, v in want["metadata"]["labels"].items() if k.startswith("rbac.authorization.k8s.io/")}
    assert aggregate.items() <= have["metadata"]["labels"].items()


def test_a_missing_or_extra_grant_is_seen() -> None:
    rules = chart_role("kind", "-operator")["rules"]
    want = grants(canonical("ClusterRole", "churnops-operator")["rules"])
    assert grants(rules[1:]) != want
    assert grants([*rules, {"apiGroups": [""], "resources": ["pods"], "verbs": ["list"]}]) != want
