"""The operator as a separate process against kmock, the fakes and a real MLflow server.

``Cluster`` bundles what a test talks to: the Kubernetes API (as an admin,
over HTTP), the operator process (started, killed with SIGKILL, restarted),
and helpers that wait for a condition with a deadline.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import kmock
import yaml

from churnops.processes import free_port, terminate, wait_for_http
from tests.operators.fakes import FakeKFP, FakePrometheus
from tests.operators.kubemock import ADMIN_TOKEN, KubeServer

ROOT = Path(__file__).resolve().parents[2]
CRD = ROOT / "manifests" / "crds" / "churnops.io_modeldeployments.yaml"
MD_PATH = "/apis/churnops.io/v1alpha1/namespaces/{ns}/modeldeployments"
ISVC_PATH = "/apis/serving.kserve.io/v1beta1/namespaces/{ns}/inferenceservices"
ROUTE_PATH = "/apis/gateway.networking.k8s.io/v1/namespaces/{ns}/httproutes"
EVENTS_PATH = "/api/v1/namespaces/{ns}/events"
NS = "churn"


def crd_defaults(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec`` with the CRD's defaults applied, as the API server would (the emulator does not)."""
    schema = yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    result: dict[str, Any] = _default(schema, spec)
    return result


def _default(schema: dict[str, Any], value: Any) -> Any:
    if schema.get("type") != "object" or not isinstance(value, dict):
        return value
    out = dict(value)
    for key, sub in (schema.get("properties") or {}).items():
        if key not in out and "default" in sub:
            out[key] = sub["default"]
        if key in out:
            out[key] = _default(sub, out[key])
    return out


@dataclass(frozen=True)
class Peering:
    """A replica under leader election, as the chart runs it: cluster-wide, its pod index as priority, POD_ID as identity."""

    name: str
    priority: int
    identity: str
    lifetime_s: int


class OperatorProcess:
    def __init__(
        self, kubeconfig: Path, prom: str, mlflow: str, kfp: str | None, log: Path, tick: float = 0.2, peering: Peering | None = None
    ) -> None:
        self.log_path = log
        self.health_port = free_port()
        self.args = [sys.executable, "-m", "churnops_operator", "--tick", str(tick), "--timeout", "2"]
        self.args += ["--prometheus-url", prom, "--mlflow-url", mlflow, "--metrics-port", "0", "--health-port", str(self.health_port)]
        self.args += ["--log-format", "full", *(["--verbose"] if os.environ.get("CHURNOPS_TEST_VERBOSE") else [])]
        self.env = {**os.environ, "KUBECONFIG": str(kubeconfig)}
        if peering is None:
            self.args += ["--standalone", "--namespace", NS]
        else:
            self.args += ["--peering", peering.name, "--priority", str(peering.priority), "--peering-lifetime", str(peering.lifetime_s)]
            self.env["POD_ID"] = peering.identity
        if kfp:
            self.args += ["--kfp-url", kfp]
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        assert self.proc is None
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.args, env=self.env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for_http(f"http://127.0.0.1:{self.health_port}/healthz", self.proc, 60)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no graceful shutdown; whatever was in flight is lost."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            terminate(self.proc)
            self.proc = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-6000:]


class FakeKServe:
    """KServe's controller as far as the operator can see it: each InferenceService reports Ready for its generation.

    KServe writes ``status.observedGeneration`` and a ``Ready`` condition (knative duck Status; kserve
    pkg/apis/serving/v1beta1/inference_service_status.go). ``ready`` False leaves new generations unreported
    (a predictor that never becomes ready).
    """

    def __init__(self, api: httpx.Client, period_s: float = 0.05) -> None:
        self.api = api
        self.ready = True
        self.period_s = period_s  # between two lists of every InferenceService (each costs the emulator a full listing)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.period_s):
            if not self.ready:
                continue
            try:
                items = self.api.get(ISVC_PATH.format(ns=NS)).json().get("items") or []
                for item in items:
                    meta, status = item["metadata"], item.get("status") or {}
                    if status.get("observedGeneration") == meta.get("generation"):
                        continue
                    body = {"status": {"observedGeneration": meta.get("generation"), "conditions": [{"type": "Ready", "status": "True"}]}}
                    self.api.patch(
                        f"{ISVC_PATH.format(ns=NS)}/{meta['name']}/status",
                        json=body,
                        headers={"Content-Type": "application/merge-patch+json"},
                    )
            except (httpx.HTTPError, ValueError, KeyError):
                continue


class Cluster:
    def __init__(self, kube: KubeServer, prom: FakePrometheus, kfp: FakeKFP, mlflow: str, tmp: Path) -> None:
        self.kube, self.prom, self.kfp, self.mlflow_url = kube, prom, kfp, mlflow
        self.api = httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10)
        self.mlflow = httpx.Client(base_url=mlflow, timeout=10)
        self.operator = OperatorProcess(kube.kubeconfig(tmp / "kubeconfig"), prom.url, mlflow, kfp.url, tmp / "operator.log")
        self.kserve = FakeKServe(httpx.Client(base_url=kube.url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=10))

    # --- Kubernetes, as an admin ---
    def apply_md(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": "churnops.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS}}
        r = self.api.post(MD_PATH.format(ns=NS), json={**body, "spec": crd_defaults(spec)})
        r.raise_for_status()
        result: dict[str, Any] = r.json()
        return result

    def patch_md_spec(self, name: str, spec: dict[str, Any]) -> None:
        r = self.api.patch(f"{MD_PATH.format(ns=NS)}/{name}", json={"spec": spec}, headers={"Content-Type": "application/merge-patch+json"})
        r.raise_for_status()

    def md(self, name: str) -> dict[str, Any] | None:
        r = self.api.get(f"{MD_PATH.format(ns=NS)}/{name}")
        return r.json() if r.status_code == 200 else None

    def status(self, name: str) -> dict[str, Any]:
        return (self.md(name) or {}).get("status") or {}

    def isvc(self, name: str) -> dict[str, Any] | None:
        r = self.api.get(f"{ISVC_PATH.format(ns=NS)}/{name}")
        return r.json() if r.status_code == 200 else None

    def route(self, name: str) -> dict[str, Any] | None:
        r = self.api.get(f"{ROUTE_PATH.format(ns=NS)}/{name}")
        return r.json() if r.status_code == 200 else None

    def delete(self, path: str) -> None:
        self.api.delete(path).raise_for_status()

    def events(self) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = self.api.get(EVENTS_PATH.format(ns=NS)).json().get("items") or []
        return items

    def reasons(self) -> list[str]:
        return [str(e.get("reason")) for e in self.events()]

    # --- MLflow, through its REST API ---
    def register(self, model: str, versions: int) -> None:
        self.mlflow.post("/api/2.0/mlflow/registered-models/create", json={"name": model})
        for i in range(versions):
            r = self.mlflow.post(
                "/api/2.0/mlflow/model-versions/create", json={"name": model, "source": f"s3://churnops-models/{model}/{i + 1}"}
            )
            r.raise_for_status()

    def alias(self, model: str, alias: str) -> str | None:
        r = self.mlflow.get("/api/2.0/mlflow/registered-models/alias", params={"name": model, "alias": alias})
        return str(r.json()["model_version"]["version"]) if r.status_code == 200 else None

    def set_alias(self, model: str, alias: str, version: str) -> None:
        self.mlflow.post(
            "/api/2.0/mlflow/registered-models/alias", json={"name": model, "alias": alias, "version": version}
        ).raise_for_status()

    def version_tags(self, model: str, version: str) -> dict[str, str]:
        r = self.mlflow.get("/api/2.0/mlflow/model-versions/get", params={"name": model, "version": version})
        return {t["key"]: t["value"] for t in r.json()["model_version"].get("tags") or []}

    # --- waiting ---
    def wait(self, what: str, check: Callable[[], Any], timeout: float = 30.0, every: float = 0.1) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            value = check()
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; status: {self.all_statuses()}\noperator log:\n{self.operator.log()}")
            if self.operator.proc is not None and self.operator.proc.poll() is not None:
                raise AssertionError(f"operator exited while waiting for {what}:\n{self.operator.log()}")
            time.sleep(every)

    def all_statuses(self) -> dict[str, Any]:
        items = self.api.get(MD_PATH.format(ns=NS)).json().get("items") or []
        return {
            i["metadata"]["name"]: {
                k: (i.get("status") or {}).get(k)
                for k in ("phase", "stableVersion", "canaryVersion", "canaryWeight", "failedChecks", "message")
            }
            for i in items
        }

    def assert_rbac_clean(self) -> None:
        denied = self.kube.call(lambda: list(self.kube.k.denied))
        assert not denied, f"the operator made calls its RBAC refuses: {denied}"


def prepare(kube: KubeServer, api: httpx.Client) -> None:
    """What the cluster has before the operator starts: the CRD and the namespace."""
    api.post("/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=yaml.safe_load(CRD.read_text())).raise_for_status()
    # kmock cannot parse POST /api/v1/namespaces (it reads "namespaces" as the namespace prefix): store it directly.
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NS}}
    kube.call(lambda: kube.k.objects.__setitem__((kmock.resource("v1/namespaces"), None, NS), namespace))


@contextmanager
def cluster(mlflow: str, tmp: Path) -> Iterator[Cluster]:
    with KubeServer() as kube, FakePrometheus() as prom, FakeKFP() as kfp:
        c = Cluster(kube, prom, kfp, mlflow, tmp)
        prepare(kube, c.api)
        c.kserve.thread.start()
        try:
            yield c
        finally:
            c.kserve.stop.set()
            c.kserve.thread.join(5)
            c.operator.stop()
            c.api.close()
            c.mlflow.close()
