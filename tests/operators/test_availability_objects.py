"""The objects that keep the predictor available: PodDisruptionBudgets, and the RBAC their owner references need."""

from __future__ import annotations

from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest

from churnops_contract.rollout.core import Routing
from churnops_contract.rollout.spec import parse
from churnops_operator import objects
from churnops_operator.kube import KINDS
from churnops_operator.reconcile import managed_names
from tests.operators import predictor_pod as kserve
from tests.operators.harness import crd_defaults
from tests.operators.kubemock import operator_rules
from tests.operators.test_kserve_pod import MODES, OWNER, URIS, runtime

MID_CANARY = Routing(stable="1", canary="2", weight=25, retired=None, stable_slot="blue", canary_slot="green")
SETTLED = Routing(stable="2", canary=None, weight=0, retired=None, stable_slot="green", canary_slot="blue")
EXISTING = {"churn": {"metadata": {"labels": {objects.LABEL_VERSION: "1"}}}}


def want(mode: str, route: Routing, **serving: Any) -> objects.Desired:
    spec = parse({"model": {"version": "2"}, "featureService": "churn_v1", "serving": {"mode": mode, **MODES[mode], **serving}})
    return objects.desired(OWNER, spec, route, URIS, EXISTING)


def allowed(group: str, resource: str, verb: str) -> bool:
    return any(rule.allows(group, resource, verb) for rule in operator_rules())


@pytest.mark.parametrize("mode", sorted(MODES))
def test_every_predictor_gets_a_budget_that_selects_its_pods(mode: str) -> None:
    desired = want(mode, MID_CANARY)
    isvcs = [o for o in desired.objects if o["kind"] == objects.ISVC_KIND]
    budgets = {o["metadata"]["name"]: o for o in desired.objects if o["kind"] == objects.PDB_KIND}
    assert sorted(budgets) == sorted(f"{i['metadata']['name']}-predictor" for i in isvcs)
    for isvc in isvcs:
        budget = budgets[f"{isvc['metadata']['name']}-predictor"]
        assert budget["spec"]["maxUnavailable"] == 1 and budget["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
        for version in ("1.29.0", "1.35.0"):  # the Kubernetes versions the chart supports
            kubernetes_validate.validate(budget, version, strict=True)
        pod = kserve.pod_for(objects.strip_nulls(isvc), runtime("kind"))  # the labels KServe really puts on the pod
        labels = pod["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in budget["spec"]["selector"]["matchLabels"].items())
        for other in isvcs:  # a budget never counts the other InferenceService's pods
            if other is not isvc:
                theirs = kserve.pod_for(objects.strip_nulls(other), runtime("kind"))["metadata"]["labels"]
                assert not all(theirs.get(k) == v for k, v in budget["spec"]["selector"]["matchLabels"].items())
    assert all(name in {n for _, n in managed_names("churn", mode)} for name in budgets)  # cleaned up by the finalizer


def test_standard_replicas_spread_over_nodes_and_knative_gets_no_field_it_refuses() -> None:
    for isvc in [o for o in want("Standard", MID_CANARY).objects if o["kind"] == objects.ISVC_KIND]:
        pod = kserve.pod_for(objects.strip_nulls(isvc), runtime("kind"))
        (spread,) = pod["spec"]["topologySpreadConstraints"]
        assert spread["topologyKey"] == "kubernetes.io/hostname" and spread["whenUnsatisfiable"] == "ScheduleAnyway"  # kind: one node
        assert all(pod["metadata"]["labels"].get(k) == v for k, v in spread["labelSelector"]["matchLabels"].items())
    (serverless,) = [o for o in want("Serverless", MID_CANARY).objects if o["kind"] == objects.ISVC_KIND]
    assert "topologySpreadConstraints" not in serverless["spec"]["predictor"]


@pytest.mark.parametrize("mode", sorted(MODES))
def test_a_single_replica_gets_no_budget_and_a_retired_slot_loses_its_own(mode: str) -> None:
    single = want(mode, MID_CANARY, minReplicas=1, maxReplicas=4)
    assert not [o for o in single.objects if o["kind"] == objects.PDB_KIND]
    assert (objects.PDB_KIND, "churn-predictor" if mode == "Serverless" else "churn-blue-predictor") in single.absent
    if mode == "Standard":
        settled = want(mode, SETTLED)
        assert (objects.PDB_KIND, "churn-blue-predictor") in settled.absent
        assert [o["metadata"]["name"] for o in settled.objects if o["kind"] == objects.PDB_KIND] == ["churn-green-predictor"]


def test_the_crd_default_runs_two_replicas() -> None:
    assert crd_defaults({})["serving"]["minReplicas"] == 2
    assert parse({"model": {"version": "1"}, "featureService": "f"}).serving.min_replicas == 2


@pytest.mark.parametrize("mode", sorted(MODES))
def test_the_operator_may_write_every_object_it_wants_and_block_its_owner_deletion(mode: str) -> None:
    """``blockOwnerDeletion`` needs ``update`` on the owner's ``finalizers`` where OwnerReferencesPermissionEnforcement is on.

    (kubernetes plugin/pkg/admission/gc/gc_admission.go: the admission checks ``update`` on ``<owner resource>/finalizers``.)
    """
    desired = want(mode, MID_CANARY)
    for obj in desired.objects:
        group = obj["apiVersion"].rpartition("/")[0]
        plural = KINDS[obj["kind"]].plural
        for verb in ("get", "create", "patch", "delete"):
            assert allowed(group, plural, verb), f"{verb} {group}/{plural}"
        for ref in obj["metadata"]["ownerReferences"]:
            if ref.get("blockOwnerDeletion"):
                owner_group = ref["apiVersion"].rpartition("/")[0]
                assert allowed(owner_group, f"{KINDS[ref['kind']].plural}/finalizers", "update"), obj["metadata"]["name"]
