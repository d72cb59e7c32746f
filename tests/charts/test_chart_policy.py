"""Policy checks on the rendered manifests: checkov, and the project's own rules in Python.

The Python rules cover what checkov does not see (containers inside KServe's ClusterServingRuntime)
and state the project's policy exactly: no wildcard RBAC, no Secret access, Pod Security "restricted"
on every pod, requests and limits on every container, no ``latest`` image, probes on every server,
every pod behind a NetworkPolicy of its own.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.render import SCENARIOS, dask_pod_labels, objects, pod_specs, rendered
from tests.support.k8s_tools import ROOT, run

ALLOWED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret"}
SERVERS = {"Deployment", "StatefulSet"}


def containers_of(obj: dict[str, Any]) -> list[tuple[dict[str, Any] | None, dict[str, Any]]]:
    """(pod spec, container) pairs of a workload, or of a ClusterServingRuntime (its pod spec is KServe's)."""
    if obj["kind"] == "ClusterServingRuntime":
        return [(None, c) for c in obj["spec"]["containers"]]
    return [(pod, c) for pod in pod_specs(obj) for c in pod.get("initContainers", []) + pod["containers"]]


def violations(obj: dict[str, Any]) -> list[str]:
    """Every way ``obj`` breaks the policy ("<rule>: <where>")."""
    found: list[str] = []
    name = f"{obj['kind']}/{obj['metadata']['name']}"
    if obj["kind"] in {"Role", "ClusterRole"}:
        for rule in obj.get("rules", []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames"):
                if "*" in rule.get(field, []):
                    found.append(f"wildcard RBAC {field}: {name}")
            if {"secrets", "*"} & set(rule.get("resources", [])) and not rule.get("resourceNames"):
                found.append(f"reads Secrets beyond named ones: {name}")
    for pod in pod_specs(obj):
        psc = pod.get("securityContext") or {}
        for flag in ("hostNetwork", "hostPID", "hostIPC"):
            if pod.get(flag):
                found.append(f"{flag}: {name}")
        if psc.get("runAsNonRoot") is not True:
            found.append(f"pod runAsNonRoot: {name}")
        if (psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            found.append(f"pod seccompProfile: {name}")
        for vol in pod.get("volumes", []):
            kind = next(k for k in vol if k != "name")
            if kind not in ALLOWED_VOLUMES:
                found.append(f"volume type {kind}: {name}")
    for owner, c in containers_of(obj):
        where = f"{name}/{c['name']}"
        sc = c.get("securityContext") or {}
        psc = (owner or {}).get("securityContext") or {}
        if sc.get("allowPrivilegeEscalation") is not False:
            found.append(f"allowPrivilegeEscalation: {where}")
        if sc.get("privileged"):
            found.append(f"privileged: {where}")
        if "ALL" not in (sc.get("capabilities") or {}).get("drop", []) or set((sc.get("capabilities") or {}).get("add", [])) - {
            "NET_BIND_SERVICE"
        }:
            found.append(f"capabilities: {where}")
        if sc.get("runAsNonRoot", psc.get("runAsNonRoot")) is not True or sc.get("runAsUser", psc.get("runAsUser", 1)) == 0:
            found.append(f"runAsNonRoot: {where}")
        if (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type") != "RuntimeDefault":
            found.append(f"seccompProfile: {where}")
        if sc.get("readOnlyRootFilesystem") is not True:
            found.append(f"readOnlyRootFilesystem: {where}")
        res = c.get("resources") or {}
        for part in ("requests", "limits"):
            for resource in ("cpu", "memory"):
                if resource not in (res.get(part) or {}):
                    found.append(f"{part}.{resource}: {where}")
        image = c.get("image", "")
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        if "@sha256:" not in image and (not tag or tag == "latest"):
            found.append(f"image without a pinned tag or digest: {where}")
        if obj["kind"] in SERVERS | {"ClusterServingRuntime"} and not (c.get("readinessProbe") and c.get("livenessProbe")):
            found.append(f"probes: {where}")
    return found


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_rendered_objects_follow_the_policy(scenario: str) -> None:
    found = [v for obj in rendered(scenario) for v in violations(obj)]
    assert not found, found


@pytest.mark.parametrize(
    ("break_it", "rule"),
    [
        (
            lambda o: o["spec"]["template"]["spec"]["containers"][0]["securityContext"].pop("allowPrivilegeEscalation"),
            "allowPrivilegeEscalation",
        ),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0]["resources"].pop("limits"), "limits.cpu"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].update(image="ghcr.io/churnops/operator:latest"), "image"),
        (lambda o: o["spec"]["template"]["spec"]["securityContext"].update(runAsNonRoot=False), "pod runAsNonRoot"),
        (lambda o: o["spec"]["template"]["spec"]["volumes"].append({"name": "h", "hostPath": {"path": "/"}}), "volume type hostPath"),
        (lambda o: o["spec"]["template"]["spec"]["containers"][0].pop("livenessProbe"), "probes"),
    ],
)
def test_policy_catches_a_broken_workload(break_it: Any, rule: str) -> None:
    sts = copy.deepcopy(objects("kind", "StatefulSet")[0])
    assert not violations(sts)
    break_it(sts)
    assert any(v.startswith(rule) for v in violations(sts)), violations(sts)


def test_policy_catches_wildcards_and_secret_reads() -> None:
    role = copy.deepcopy(objects("kind", "ClusterRole")[0])
    role["rules"].append({"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]})
    role["rules"].append({"apiGroups": ["*"], "resources": ["pods"], "verbs": ["*"]})
    found = violations(role)
    assert any(v.startswith("reads Secrets") for v in found) and any(v.startswith("wildcard RBAC verbs") for v in found), found


def selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items()) and not selector.get("matchExpressions")


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if any(o["kind"] == "NetworkPolicy" for o in rendered(s))])
def test_every_pod_is_denied_by_default_and_allowed_by_a_policy_of_its_own(scenario: str) -> None:
    policies = objects(scenario, "NetworkPolicy")
    namespaces = {p["metadata"]["namespace"] for p in policies}
    for ns in namespaces:
        deny = [
            p
            for p in policies
            if p["metadata"]["namespace"] == ns
            and p["spec"]["podSelector"] == {}
            and "ingress" not in p["spec"]
            and "egress" not in p["spec"]
        ]
        assert deny and set(deny[0]["spec"]["policyTypes"]) == {"Ingress", "Egress"}, ns
    for obj in rendered(scenario):
        dask_roles = iter(("scheduler", "worker"))  # a DaskCluster's pod specs, in pod_specs' order
        for pod in pod_specs(obj):
            if obj["kind"] == "DaskCluster":
                labels = dask_pod_labels(obj, next(dask_roles))
            else:
                template = obj["spec"]["jobTemplate"]["spec"]["template"] if obj["kind"] == "CronJob" else obj["spec"].get("template")
                labels = template["metadata"]["labels"] if obj["kind"] != "Pod" else obj["metadata"]["labels"]
            ns = obj["metadata"]["namespace"]
            own = [
                p
                for p in policies
                if p["metadata"]["namespace"] == ns and p["spec"]["podSelector"] and selects(p["spec"]["podSelector"], labels)
            ]
            assert own, f"{obj['kind']}/{obj['metadata']['name']} has no NetworkPolicy of its own"
            assert pod  # the pod spec exists
    runtime_labels = (
        next(o for o in objects(scenario, "ClusterServingRuntime"))["spec"]["labels"]
        if objects(scenario, "ClusterServingRuntime")
        else None
    )
    if runtime_labels:
        predictor = [p for p in policies if p["metadata"]["name"].endswith("-predictor")]
        assert predictor and all(selects(p["spec"]["podSelector"], runtime_labels) for p in predictor)


# checkov findings accepted, each with its reason; anything else fails.
CHECKOV_ACCEPTED = {
    "CKV_K8S_15": "pull policy IfNotPresent with pinned tags or digests (Never on kind, where images are loaded into the nodes)",
    "CKV_K8S_35": "Feast's configuration and the PostgreSQL image read passwords from environment variables (from secretKeyRef, never literal)",
}
CHECKOV_ACCEPTED_FOR = {
    # check -> (resources it is accepted on, reason)
    "CKV_K8S_38": ({"StatefulSet.churnops-system.churnops-operator"}, "the operator calls the Kubernetes API"),
    "CKV_K8S_40": (
        {
            "Deployment.churnops-system.churnops-redis",
            "StatefulSet.churnops-system.churnops-postgresql",
            "CronJob.churnops-system.churnops-backup",
        },
        "the official Redis and PostgreSQL images own their data as uid 999 (the backup runs PostgreSQL's pg_dump)",
    ),
    "CKV_K8S_43": (
        {"Deployment.churnops-system.churnops-redis", "StatefulSet.churnops-system.churnops-postgresql"},
        "third-party images are pinned by tag here; set images.*.digest in production (the EKS scenario pins ChurnOps' own)",
    ),
}


def checkov(path: Path) -> list[dict[str, Any]]:
    result = run(
        [
            ROOT / ".venv" / "bin" / "checkov",
            "-f",
            path,
            "--framework",
            "kubernetes",
            "--skip-download",
            "--quiet",
            "--compact",
            "-o",
            "json",
        ],
        timeout=600,
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    report = json.loads(result.stdout)
    failed: list[dict[str, Any]] = (report[0] if isinstance(report, list) else report)["results"]["failed_checks"]
    return failed


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_checkov(scenario: str, tmp_path: Path) -> None:
    manifest = tmp_path / f"{scenario}.yaml"
    manifest.write_text(yaml.safe_dump_all([o for o in rendered(scenario) if o["kind"] != "CustomResourceDefinition"]))
    unexpected = []
    for f in checkov(manifest):
        check, resource = f["check_id"], f["resource"]
        if check in CHECKOV_ACCEPTED:
            continue
        if check in CHECKOV_ACCEPTED_FOR and (resource in CHECKOV_ACCEPTED_FOR[check][0] or (check == "CKV_K8S_43" and scenario != "eks")):
            continue
        if check == "CKV2_K8S_6" and not objects(scenario, "NetworkPolicy"):
            continue  # the scenario turns NetworkPolicies off (a cluster whose policies are managed elsewhere)
        unexpected.append(f"{check} {f['check_name']}: {resource}")
    assert not unexpected, unexpected


def test_checkov_finds_a_privileged_container(tmp_path: Path) -> None:
    sts = copy.deepcopy(objects("kind", "StatefulSet")[0])
    sts["spec"]["template"]["spec"]["containers"][0]["securityContext"] = {"privileged": True}
    manifest = tmp_path / "bad.yaml"
    manifest.write_text(json.dumps(sts))
    assert "CKV_K8S_16" in {f["check_id"] for f in checkov(manifest)}  # privileged container
