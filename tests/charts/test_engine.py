"""The engine on the cluster: the chart's DaskCluster as the Dask Kubernetes operator will run it.

What the operator does with the object is read from its source (dask/dask-kubernetes,
``dask_kubernetes/operator/controller/controller.py``): ``daskcluster_create_components`` labels the scheduler
and worker pods with the DaskCluster's own labels, updated by ``spec.<role>.metadata.labels``, plus
``dask.org/cluster-name`` and ``dask.org/component`` (``build_scheduler_deployment_spec``); it creates the
Service ``SCHEDULER_NAME_TEMPLATE`` (``<name>-scheduler``) from ``spec.scheduler.service``
(``build_scheduler_service_spec``); it gives worker containers ``DASK_SCHEDULER_ADDRESS`` =
``tcp://<name>-scheduler.<namespace>.svc.cluster.local:8786`` (``build_worker_deployment_spec``). The API
server prunes fields a structural CRD schema does not declare, so every field we set must be declared.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from dask_kubernetes.constants import SCHEDULER_NAME_TEMPLATE  # type: ignore[import-untyped]

from churnops.data.config import GeneratorConfig
from churnops.data.generator import write_raw
from churnops.parallel.choice import EngineConfig
from churnops.parallel.runner import DaskEngine, open_engine
from churnops.processes import free_port
from tests.charts.render import NAMESPACE, dask_operator_crds, dask_pod_labels, objects, rendered, template

CRD_SCHEMAS = {
    crd["spec"]["names"]["kind"]: next(v for v in crd["spec"]["versions"] if v["name"] == "v1")["schema"]["openAPIV3Schema"]
    for crd in dask_operator_crds()
}


def dask_cluster(scenario: str = "eks") -> dict[str, Any]:
    (cluster,) = objects(scenario, "DaskCluster")
    return cluster


def pruned(schema: dict[str, Any], value: Any, path: str = "") -> list[str]:
    """Fields of ``value`` that the API server would drop: not declared by the structural schema."""
    if schema.get("x-kubernetes-preserve-unknown-fields") or schema.get("x-kubernetes-int-or-string"):
        return []
    if isinstance(value, dict):
        props, extra = schema.get("properties") or {}, schema.get("additionalProperties")
        found = []
        for key, item in value.items():
            if key in props:
                found += pruned(props[key], item, f"{path}/{key}")
            elif isinstance(extra, dict):
                found += pruned(extra, item, f"{path}/{key}")
            elif extra is not True:
                found.append(f"{path}/{key}")
        return found
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in pruned(schema.get("items") or {}, v, f"{path}/{i}")]
    return []


def test_the_engine_is_off_by_default_and_on_in_the_eks_values() -> None:
    for scenario in ("kind", "minimal"):
        assert not objects(scenario, "DaskCluster") and not objects(scenario, "DaskAutoscaler")
    assert dask_cluster()["metadata"]["namespace"] == NAMESPACE
    (scaler,) = objects("eks", "DaskAutoscaler")
    assert scaler["spec"] == {"cluster": dask_cluster()["metadata"]["name"], "minimum": 0, "maximum": 16}


@pytest.mark.parametrize("kind", ["DaskCluster", "DaskAutoscaler"])
def test_no_field_we_set_is_pruned_by_the_operators_crd(kind: str) -> None:
    for obj in objects("eks", kind):
        assert pruned(CRD_SCHEMAS[kind], {"spec": obj["spec"]}) == []  # apiVersion, kind, metadata: the API server's own


def test_the_pruning_check_finds_a_misspelt_field() -> None:
    cluster = copy.deepcopy(dask_cluster())
    cluster["spec"]["worker"]["replica"] = 3  # a typo the API server would drop without a word
    cluster["spec"]["scheduler"]["spec"]["containers"][0]["argz"] = ["dask"]
    assert pruned(CRD_SCHEMAS["DaskCluster"], {"spec": cluster["spec"]}) == [
        "/spec/scheduler/spec/containers/0/argz",
        "/spec/worker/replica",
    ]


def test_pipeline_steps_reach_the_scheduler_service_the_operator_creates() -> None:
    cluster = dask_cluster()
    name = cluster["metadata"]["name"]
    (env,) = [o for o in objects("eks", "ConfigMap") if o["metadata"]["name"] == "churnops-pipeline-env"]
    service = SCHEDULER_NAME_TEMPLATE.format(cluster_name=name)
    assert env["data"]["DASK_SCHEDULER_ADDRESS"] == f"tcp://{service}.{NAMESPACE}.svc.cluster.local:8786"
    svc = cluster["spec"]["scheduler"]["service"]
    labels = dask_pod_labels(cluster, "scheduler")
    assert svc["selector"].items() <= labels.items()  # the Service selects the scheduler pod, not the workers
    assert not svc["selector"].items() <= dask_pod_labels(cluster, "worker").items()
    (container,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert {p["port"]: named[p["targetPort"]] for p in svc["ports"]}[8786] == 8786


def test_workers_take_the_operators_scheduler_address_and_their_name() -> None:
    (worker,) = dask_cluster()["spec"]["worker"]["spec"]["containers"]
    assert "$(DASK_WORKER_NAME)" in worker["args"]  # set by the operator on every worker container
    assert not {e["name"] for e in worker["env"]} & {"DASK_SCHEDULER_ADDRESS", "DASK_WORKER_NAME"}  # would win over the operator's
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    assert mounts["shared"] == "/data"
    claims = [
        v["persistentVolumeClaim"]["claimName"] for v in dask_cluster()["spec"]["worker"]["spec"]["volumes"] if "persistentVolumeClaim" in v
    ]
    assert claims == ["churnops-efs"]


def test_the_network_policy_selects_the_pods_the_operator_labels() -> None:
    cluster = dask_cluster()
    (policy,) = [o for o in objects("eks", "NetworkPolicy") if o["metadata"]["name"].endswith("-engine")]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert (
        selector.items() <= dask_pod_labels(cluster, "scheduler").items() and selector.items() <= dask_pod_labels(cluster, "worker").items()
    )


def test_engine_values_are_checked() -> None:
    code, _, err = template("--set", "engine.enabled=true", "--set", "engine.workers.maximum=0", "--set", "mlflow.bundled.enabled=true")
    assert code != 0 and "maximum" in err


@pytest.fixture
def started_from_chart_args() -> Iterator[str]:
    """The scheduler and one worker started here with the chart's own arguments (ports moved to free ones),
    the way the pods start them: the image's ``dask`` command line, ``$(DASK_WORKER_NAME)`` and the address
    as the operator sets them."""
    cluster = dask_cluster()
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    ports = {str(p): str(free_port()) for p in (8786, 8787, 8788, 8789)}
    dask_cli = str(Path(sys.executable).parent / "dask")

    def args(container: dict[str, Any]) -> list[str]:
        moved = [ports.get(a, ":" + ports[a[1:]] if a.startswith(":") and a[1:] in ports else a) for a in container["args"]]
        assert moved[0] == "dask"
        return [dask_cli, *[a.replace("$(DASK_WORKER_NAME)", "worker-0") for a in moved[1:]]]

    address = f"tcp://127.0.0.1:{ports['8786']}"
    env = os.environ | {e["name"]: e["value"] for e in worker["env"] if e["name"] != "HOME"} | {"DASK_SCHEDULER_ADDRESS": address}
    procs = [subprocess.Popen(args(scheduler), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        time.sleep(1.0)
        procs.append(subprocess.Popen([*args(worker), address], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        yield address
    finally:
        for p in reversed(procs):
            p.terminate()
            p.wait(timeout=30)


def test_the_chart_arguments_start_a_cluster_the_engine_runs_tasks_on(started_from_chart_args: str, tmp_path: Path) -> None:
    """A real task (generation blocks) from the installed package, on the scheduler and worker as the chart runs them."""
    cfg = GeneratorConfig(n_customers=240, block_size=100, seed=3)
    with open_engine(EngineConfig("auto", address=started_from_chart_args, connect_timeout_s=30.0), 0) as engine:
        assert isinstance(engine, DaskEngine)
        deadline = time.monotonic() + 60
        while not engine.client.scheduler_info()["workers"]:
            assert time.monotonic() < deadline, "the worker never joined"
            time.sleep(0.2)
        (info,) = engine.client.scheduler_info()["workers"].values()
        assert info["nthreads"] == 1 and info["name"] == "worker-0"
        there = write_raw(cfg, tmp_path / "there", engine=engine)
    assert there == write_raw(cfg, tmp_path / "here")
    for name in ("part-00000.parquet", "part-00002.parquet"):
        assert pq.read_table(tmp_path / "there" / "customers" / name).equals(pq.read_table(tmp_path / "here" / "customers" / name))


def test_every_scenario_renders() -> None:
    for scenario in ("kind", "eks", "minimal", "knative"):
        assert rendered(scenario)
