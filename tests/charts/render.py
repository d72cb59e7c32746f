"""Rendering the chart with the pinned helm, once per scenario (``ci/*-values.yaml``) and cached."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

from tests.support.k8s_tools import ROOT, binary, run

CHART = ROOT / "charts" / "churnops"
CRD_CHART = ROOT / "charts" / "churnops-crds"
NAMESPACE = "churnops-system"
RELEASE = "churnops"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))


def helm(*args: str | Path) -> tuple[int, str, str]:
    result = run([binary("helm"), *args])
    return result.returncode, result.stdout, result.stderr


def template(*values_args: str | Path) -> tuple[int, str, str]:
    """``helm template`` of the chart with extra arguments (``-f file``, ``--set k=v``)."""
    return helm("template", RELEASE, CHART, "--namespace", NAMESPACE, *values_args)


@functools.cache
def crd_chart(*values_args: str) -> tuple[dict[str, Any], ...]:
    """The CRD chart (charts/churnops-crds, installed before the chart) rendered with extra arguments."""
    code, out, err = helm("template", f"{RELEASE}-crds", CRD_CHART, "--namespace", NAMESPACE, *values_args)
    assert code == 0, f"helm template of charts/churnops-crds failed:\n{err}"
    return tuple(documents(out))


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


@functools.cache
def rendered(scenario: str) -> tuple[dict[str, Any], ...]:
    """Every object the chart renders for the scenario (its CRDs come from ``crd_chart``)."""
    code, out, err = template("-f", CHART / "ci" / f"{scenario}-values.yaml")
    assert code == 0, f"helm template with ci/{scenario}-values.yaml failed:\n{err}"
    return tuple(documents(out))


def objects(scenario: str, kind: str | None = None) -> list[dict[str, Any]]:
    return [o for o in rendered(scenario) if kind is None or o["kind"] == kind]


def all_objects() -> list[tuple[str, dict[str, Any]]]:
    return [(s, o) for s in SCENARIOS for o in rendered(s)]


def object_id(item: tuple[str, dict[str, Any]]) -> str:
    scenario, obj = item
    meta = obj.get("metadata") or {}
    return f"{scenario}:{obj['kind']}/{meta.get('namespace', '')}/{meta.get('name')}"


def pod_specs(obj: dict[str, Any]) -> list[dict[str, Any]]:
    """The pod spec(s) inside a workload object (none for other kinds)."""
    spec = obj.get("spec") or {}
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "Job", "ReplicaSet"}:
        return [spec["template"]["spec"]]
    if obj["kind"] == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    if obj["kind"] == "Pod":
        return [spec]
    if obj["kind"] == "DaskCluster":  # the Dask operator runs them as the scheduler's and the workers' pods
        return [spec["scheduler"]["spec"], spec["worker"]["spec"]]
    return []


def dask_pod_labels(cluster: dict[str, Any], role: str) -> dict[str, str]:
    """The labels the Dask operator puts on a DaskCluster's scheduler or worker pods: the cluster's own, updated by
    ``spec.<role>.metadata.labels``, plus its own two (dask/dask-kubernetes
    ``dask_kubernetes/operator/controller/controller.py``: ``daskcluster_create_components``,
    ``build_scheduler_deployment_spec``)."""
    labels = dict(cluster["metadata"].get("labels") or {})
    labels.update((cluster["spec"][role].get("metadata") or {}).get("labels") or {})
    return labels | {"dask.org/cluster-name": cluster["metadata"]["name"], "dask.org/component": role}


def dask_operator_crds() -> list[dict[str, Any]]:
    """DaskCluster, DaskAutoscaler, DaskJob and DaskWorkerGroup as the pinned dask-kubernetes package ships them."""
    import dask_kubernetes  # type: ignore[import-untyped]  # noqa: PLC0415 - a test dependency, loaded by the tests that validate Dask objects

    crds = Path(dask_kubernetes.__file__).parent / "operator" / "deployment" / "helm" / "dask-kubernetes-operator" / "crds"
    return [doc for path in sorted(crds.glob("*.yaml")) for doc in load_yaml(path)]


def load_yaml(path: Path) -> list[dict[str, Any]]:
    return documents(path.read_text())
