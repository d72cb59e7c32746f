"""What the rendered chart does on a real cluster, beyond the shape of each object.

Upstream behaviour these tests design against (read at the tags given):
- knative/serving v1.19 ``pkg/reconciler/revision/resources/deploy.go``: the user container's port is renamed
  ``user-port`` (``UserPortName``) in every Knative pod, so a PodMonitor on ``http1`` finds nothing there;
- kubernetes-sigs/gateway-api v1.3.0 ``apis/v1/gateway_types.go``: ``GatewayInfrastructure`` (labels,
  annotations, parametersRef) is what an implementation copies onto the data plane it provisions (the
  load balancer Service of Envoy Gateway);
- helm/helm v4.1.4 ``pkg/action/install.go``: ``crds/`` is installed once (never by ``upgrade.go``), before the
  templates; a template CRD is created with the release's other objects;
- mlflow/mlflow v3 ``mlflow/server/auth/config.py``: the basic-auth app reads ``MLFLOW_AUTH_CONFIG_PATH`` and
  the admin from ``MLFLOW_AUTH_ADMIN_USERNAME`` / ``MLFLOW_AUTH_ADMIN_PASSWORD``; clients authenticate with
  ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD``;
- istio/istio 1.27 ``manifests/charts/istio-control/istio-discovery/files/injection-template.yaml``: only
  namespaces labelled ``istio-injection=enabled`` get sidecars; without one a STRICT PeerAuthentication has no
  proxy to enforce it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.render import CHART, CRD_CHART, NAMESPACE, SCENARIOS, crd_chart, documents, objects, pod_specs, rendered, template
from tests.support.k8s_tools import ROOT

KIND = CHART / "ci" / "kind-values.yaml"
EKS = CHART / "ci" / "eks-values.yaml"
MINIMAL = CHART / "ci" / "minimal-values.yaml"


def values(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def render_ok(*args: str | Path) -> list[dict[str, Any]]:
    code, out, err = template(*args)
    assert code == 0, err
    return documents(out)


def render_fails(*args: str | Path) -> str:
    code, _, err = template(*args)
    assert code != 0, "rendering should have failed"
    return err


def containers(obj: dict[str, Any]) -> list[dict[str, Any]]:
    if obj["kind"] == "ClusterServingRuntime":
        return list(obj["spec"]["containers"])
    return [c for pod in pod_specs(obj) for c in pod.get("initContainers", []) + pod["containers"]]


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


# --- PodMonitor: Standard pods expose http1, Knative pods user-port -------------------------------


@pytest.mark.parametrize("scenario", [s for s in SCENARIOS if objects(s, "PodMonitor")])
def test_pod_monitor_scrapes_standard_and_knative_ports_under_one_job(scenario: str) -> None:
    endpoints = objects(scenario, "PodMonitor")[0]["spec"]["podMetricsEndpoints"]
    assert sorted(e["port"] for e in endpoints) == ["http1", "user-port"]
    for e in endpoints:
        assert e["path"] == "/metrics"
        assert {"action": "replace", "targetLabel": "job", "replacement": "churnops-predictor"} in e["relabelings"]
    assert len({(e["interval"], e["path"]) for e in endpoints}) == 1


# --- Gateway: infrastructure, Envoy Gateway on kind -----------------------------------------------


def test_gateway_infrastructure_carries_the_load_balancer_annotations_on_eks() -> None:
    gw = objects("eks", "Gateway")[0]
    annotations = gw["spec"]["infrastructure"]["annotations"]
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-type"] == "external"
    assert annotations["service.beta.kubernetes.io/aws-load-balancer-nlb-target-type"] == "ip"


def test_gateway_infrastructure_parameters_ref_and_labels() -> None:
    docs = render_ok(
        "-f",
        KIND,
        "--set",
        "gateway.infrastructure.labels.team=ml",
        "--set",
        "gateway.infrastructure.parametersRef.group=gateway.envoyproxy.io",
        "--set",
        "gateway.infrastructure.parametersRef.kind=EnvoyProxy",
        "--set",
        "gateway.infrastructure.parametersRef.name=churnops-proxy",
    )
    infra = next(d for d in docs if d["kind"] == "Gateway")["spec"]["infrastructure"]
    assert infra == {
        "labels": {"team": "ml"},
        "parametersRef": {"group": "gateway.envoyproxy.io", "kind": "EnvoyProxy", "name": "churnops-proxy"},
    }


def test_kind_uses_envoy_gateway_and_kind_local_images() -> None:
    v = values(KIND)
    assert v["gateway"]["className"] == "eg"
    for image in ("operator", "predictor", "churnops"):
        assert v["images"][image]["repository"].startswith("kind.local/churnops/"), image
    assert {"kubernetes.io/metadata.name": "envoy-gateway-system"} in v["networkPolicy"]["ingressNamespaceSelectors"]


# --- Every namespaced object lands where it can be created -----------------------------------------

# Per scenario: the namespaces a feature it enables documents as a prerequisite (created beforehand).
PREREQUISITE_NAMESPACES = {
    "kind": {"monitoring", "kubeflow"},  # kube-prometheus-stack (dashboards), Kubeflow Pipelines (pipeline env)
    "eks": {"kubeflow"},  # Kubeflow Pipelines (pipeline env)
    "minimal": set(),
    "knative": {"monitoring", "kubeflow"},
}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_namespaced_object_goes_to_a_namespace_that_exists(scenario: str) -> None:
    assert set(PREREQUISITE_NAMESPACES) == set(SCENARIOS)
    created = {o["metadata"]["name"] for o in objects(scenario, "Namespace")}
    allowed = {NAMESPACE} | created | PREREQUISITE_NAMESPACES[scenario]
    misplaced = [
        f"{o['kind']}/{o['metadata']['name']} -> {o['metadata']['namespace']}"
        for o in rendered(scenario)
        if o["metadata"].get("namespace") and o["metadata"]["namespace"] not in allowed
    ]
    assert not misplaced, misplaced


def test_operator_only_install_renders_nothing_into_kubeflow() -> None:
    docs = render_ok("-f", MINIMAL, "--set", "bootstrap.pipelines.stepNamespace=kubeflow")
    assert not [d for d in docs if d["metadata"].get("namespace") == "kubeflow"]


# --- CRDs: templates of their own chart, so helm upgrade applies them -------------------------------


def crds_of(docs: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == "CustomResourceDefinition"}


def test_crd_chart_renders_the_current_schemas_as_templates() -> None:
    crds = crds_of(crd_chart())
    assert set(crds) == {"modeldeployments.churnops.io", "clusterkopfpeerings.kopf.dev"}
    canonical = yaml.safe_load((ROOT / "manifests" / "crds" / "churnops.io_modeldeployments.yaml").read_text())
    assert crds["modeldeployments.churnops.io"]["spec"] == canonical["spec"]
    assert all(c["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep" for c in crds.values())
    assert not (CRD_CHART / "crds").exists(), "crds/ is never upgraded by Helm: ship the CRDs as templates"
    for scenario in SCENARIOS:
        assert not crds_of(rendered(scenario)), f"{scenario}: the chart creates objects of its CRDs' kinds, so it cannot define them"


def test_crd_chart_can_leave_kopfs_crd_to_its_owner_and_not_keep() -> None:
    """Another kopf-based operator's release may own clusterkopfpeerings.kopf.dev (Helm refuses to adopt it)."""
    assert set(crds_of(crd_chart("--set", "kopfPeering.install=false"))) == {"modeldeployments.churnops.io"}
    crds = crds_of(crd_chart("--set", "keep=false")).values()
    assert crds and all("helm.sh/resource-policy" not in (d["metadata"].get("annotations") or {}) for d in crds)


# --- PostgreSQL TLS: the CA bundle reaches every client -------------------------------------------


def postgres_clients(scenario: str) -> list[dict[str, Any]]:
    """Every container that connects to PostgreSQL (its password in the environment)."""
    return [
        c
        for o in rendered(scenario)
        for c in containers(o)
        if {"PGPASSWORD", "CHURNOPS_PG_PASSWORD"} & set(env_of(c)) and c["name"] != "postgresql"
    ]


def test_verify_full_mounts_the_ca_bundle_in_every_postgres_client() -> None:
    pg = values(EKS)["featureStore"]["postgresql"]
    assert pg["sslmode"] == "verify-full"
    path = "/etc/churnops/postgresql-ca/" + pg["caBundle"]["key"]
    clients = postgres_clients("eks")
    assert clients
    for c in clients:
        env = env_of(c)
        assert env["PGSSLROOTCERT"]["value"] == path, c["name"]
        assert any(m["mountPath"] == "/etc/churnops/postgresql-ca" for m in c["volumeMounts"]), c["name"]
    runtime = objects("eks", "ClusterServingRuntime")[0]
    assert all(f"sslrootcert={path}" in a for a in runtime["spec"]["containers"][0]["args"] if "-dsn=" in a)
    mlflow = named(list(rendered("eks")), "Deployment", "churnops-mlflow")
    uri = env_of(mlflow["spec"]["template"]["spec"]["containers"][0])["MLFLOW_BACKEND_STORE_URI"]["value"]
    assert f"sslrootcert={path}" in uri


@pytest.mark.parametrize("mode", ["verify-ca", "verify-full"])
def test_verifying_sslmode_without_a_ca_bundle_is_refused(mode: str) -> None:
    err = render_fails(
        "-f", EKS, "--set", f"featureStore.postgresql.sslmode={mode}", "--set", "featureStore.postgresql.caBundle.configMap="
    )
    assert "featureStore.postgresql.caBundle" in err


# --- MLflow: internal by default, authenticated when exposed --------------------------------------


def test_eks_keeps_mlflow_internal() -> None:
    assert not values(EKS)["gateway"].get("mlflowHost")
    assert not [o for o in rendered("eks") if o["kind"] == "HTTPRoute"]


def test_exposing_mlflow_without_authentication_is_refused() -> None:
    err = render_fails("-f", EKS, "--set", "gateway.mlflowHost=mlflow.example.com", "--set", "mlflow.bundled.auth.enabled=false")
    assert "mlflow.bundled.auth" in err


def test_exposed_mlflow_runs_the_basic_auth_app_with_secret_credentials() -> None:
    docs = render_ok("-f", EKS, "--set", "gateway.mlflowHost=mlflow.example.com")
    mlflow = named(docs, "Deployment", "churnops-mlflow")["spec"]["template"]["spec"]["containers"][0]
    assert "--app-name=basic-auth" in mlflow["args"]
    env = env_of(mlflow)
    for name in ("MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"):
        assert "secretKeyRef" in env[name]["valueFrom"], name
    assert env["MLFLOW_AUTH_CONFIG_PATH"]["value"].endswith(".ini")
    route = next(d for d in docs if d["kind"] == "HTTPRoute")
    assert route["spec"]["hostnames"] == ["mlflow.example.com"]


@pytest.mark.parametrize(
    "scenario",
    [s for s in SCENARIOS if values(CHART / "ci" / f"{s}-values.yaml").get("mlflow", {}).get("bundled", {}).get("auth", {}).get("enabled")],
)
def test_every_mlflow_client_authenticates_with_its_own_user(scenario: str) -> None:
    docs = list(rendered(scenario))
    users = {}
    operator = named(docs, "StatefulSet", "churnops-operator")["spec"]["template"]["spec"]["containers"][0]
    users["operator"] = env_of(operator)
    users["predictor"] = env_of(objects(scenario, "ClusterServingRuntime")[0]["spec"]["containers"][0])
    for job in (o for o in docs if o["kind"] == "Job" and o["metadata"]["name"].endswith("bootstrap-features")):
        users["pipeline"] = env_of(job["spec"]["template"]["spec"]["containers"][0])
    for who, env in users.items():
        assert "secretKeyRef" in env["MLFLOW_TRACKING_PASSWORD"]["valueFrom"], who
        assert env["MLFLOW_TRACKING_USERNAME"]["value"], who
    assert len({e["MLFLOW_TRACKING_USERNAME"]["value"] for e in users.values()}) == len(users)
    pipeline_env = next(o for o in docs if o["kind"] == "ConfigMap" and o["metadata"]["name"] == "churnops-pipeline-env")
    assert (
        pipeline_env["data"]["MLFLOW_TRACKING_USERNAME"]
        == values(CHART / "ci" / f"{scenario}-values.yaml")["mlflow"]["bundled"]["auth"]["users"]["pipeline"]
    )
    grants = next(o for o in docs if o["kind"] == "Job" and o["metadata"]["name"].endswith("mlflow-users"))
    script = " ".join(grants["spec"]["template"]["spec"]["containers"][0]["args"])
    assert "EDIT" in script and "grant_user_permission" in script


# --- Low: samples, Istio, Redis -------------------------------------------------------------------


def test_standard_sample_host_matches_the_kind_listener() -> None:
    sample = yaml.safe_load((ROOT / "manifests" / "samples" / "churnops.io_v1alpha1_modeldeployment_standard.yaml").read_text())
    assert sample["spec"]["serving"]["hostnames"] == [values(KIND)["gateway"]["servingHost"]]
    gw = values(KIND)["gateway"]
    assert sample["spec"]["serving"]["gateway"] == {"name": gw["name"], "namespace": NAMESPACE}


def test_strict_mtls_only_where_sidecars_are_injected() -> None:
    for scenario in SCENARIOS:
        injected = {
            n["metadata"]["name"] for n in objects(scenario, "Namespace") if n["metadata"]["labels"].get("istio-injection") == "enabled"
        }
        strict = {p["metadata"]["namespace"] for p in objects(scenario, "PeerAuthentication")}
        assert strict <= injected, (scenario, strict - injected)
    docs = render_ok("-f", KIND, "--set", "istio.enabled=true")
    namespaces = {n["metadata"]["name"]: n for n in docs if n["kind"] == "Namespace"}
    strict = {p["metadata"]["namespace"] for p in docs if p["kind"] == "PeerAuthentication"}
    assert strict and strict == {n for n, o in namespaces.items() if o["metadata"]["labels"].get("istio-injection") == "enabled"}


def test_no_container_has_a_secret_on_its_command_line() -> None:
    """Kubernetes expands $(VAR) in command and args: a secret there is readable in every process listing."""
    renders = {s: list(rendered(s)) for s in SCENARIOS}
    renders["kind+redis-password"] = render_ok("-f", KIND, "--set", "credentials.redisPasswordKey=redis-password")
    for scenario, docs in renders.items():
        for obj in docs:
            for c in containers(obj):
                secret_vars = {e["name"] for e in c.get("env", []) if "secretKeyRef" in (e.get("valueFrom") or {})}
                derived = {e["name"] for e in c.get("env", []) if any(f"$({s})" in str(e.get("value", "")) for s in secret_vars)}
                argv = " ".join(map(str, c.get("command", []) + c.get("args", [])))
                leaked = [v for v in secret_vars | derived if f"$({v})" in argv]
                assert not leaked, (scenario, obj["metadata"]["name"], c["name"], leaked)


# --- Backups of the bundled PostgreSQL ------------------------------------------------------------


def test_kind_backs_up_every_churnops_database_every_15_minutes() -> None:
    job = objects("kind", "CronJob")[0]
    assert job["spec"]["schedule"] == "*/15 * * * *"
    script = " ".join(str(a) for c in containers(job) for a in c.get("command", []) + c.get("args", []))
    v = values(KIND)
    for db in (v["featureStore"]["postgresql"]["database"], v["mlflow"]["bundled"]["database"]):
        assert "pg_dump" in script and db in script, db
    assert job["spec"]["concurrencyPolicy"] == "Forbid"


def test_backups_to_s3_upload_with_the_churnops_image() -> None:
    docs = render_ok("-f", KIND, "--set", "backup.destination=s3://churnops-backups/pg")
    job = next(d for d in docs if d["kind"] == "CronJob")
    images = {c["image"].rsplit(":", 1)[0] for c in containers(job)}
    assert {"docker.io/library/postgres", "kind.local/churnops/churnops"} <= images
    assert "s3://churnops-backups/pg" in str(job)


def test_backups_are_off_by_default_and_on_eks() -> None:
    assert not objects("eks", "CronJob") and not objects("minimal", "CronJob")


def test_knative_values_fit_what_make_knative_installs() -> None:
    """`make knative` installs Knative Serving with Kourier and no Istio: no PeerAuthentication (a kind that would
    not exist, and STRICT mTLS would refuse the sidecar-less activator and Kourier gateway), and the predictors
    admit the activator (knative-serving) and Kourier (kourier-system)."""
    knative = values(CHART / "ci" / "knative-values.yaml")
    assert not knative["istio"]["enabled"]
    assert not objects("knative", "PeerAuthentication")
    selectors = knative["networkPolicy"]["ingressNamespaceSelectors"]
    for namespace in ("knative-serving", "kourier-system"):
        assert {"kubernetes.io/metadata.name": namespace} in selectors, namespace
    makefile = (ROOT / "Makefile").read_text()
    knative_recipe = makefile.split("\nknative:", 1)[1].split("\n\n", 1)[0]
    assert "kourier" in knative_recipe and "istio" not in knative_recipe.lower()


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_claim_binds_during_the_install(scenario: str) -> None:
    """`helm --wait` waits until every PersistentVolumeClaim of the release is Bound (helm/helm v4.1.4
    pkg/kube/statuswait.go ``Wait`` with kstatus' PVC rule; pkg/kube/ready.go ``volumeReady`` for the legacy
    waiter). kind's StorageClass ``standard`` (rancher local-path) binds WaitForFirstConsumer: only once a pod
    using the claim is scheduled. A claim only a CronJob mounts would hold the install until its first run, so
    each one is mounted by a pod that starts with the release (a Deployment or StatefulSet)."""
    started = {"Deployment", "StatefulSet", "DaemonSet"}
    mounted = {
        v["persistentVolumeClaim"]["claimName"]
        for o in rendered(scenario)
        if o["kind"] in started
        for pod in pod_specs(o)
        for v in pod.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    claims = {o["metadata"]["name"] for o in objects(scenario, "PersistentVolumeClaim")}
    assert claims <= mounted, f"{scenario}: {sorted(claims - mounted)} bound only by a later consumer"


@pytest.mark.parametrize("port", ["", ":443", ":8443"])
def test_mlflow_accepts_the_host_header_the_gateway_forwards(port: str) -> None:
    """Envoy forwards the client's Host header, `host:port` when the URL names a port (kind: :8443). MLflow
    compares each allowed host exactly unless it holds a `*` (mlflow/mlflow v3.17.2
    mlflow/server/security_utils.py ``is_allowed_host_header``; the list from ``get_allowed_hosts_from_env``,
    comma-separated MLFLOW_SERVER_ALLOWED_HOSTS). Checked with MLflow's own function."""
    from mlflow.server.security_utils import is_allowed_host_header  # noqa: PLC0415  # slow import, this test only

    host = values(CHART / "ci" / "knative-values.yaml")["gateway"]["mlflowHost"]
    mlflow = named(list(rendered("knative")), "Deployment", "churnops-mlflow")["spec"]["template"]["spec"]["containers"][0]
    allowed = [h.strip() for h in env_of(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"]["value"].split(",")]
    assert is_allowed_host_header(allowed, f"{host}{port}"), (host + port, allowed)
    assert is_allowed_host_header(allowed, "churnops-mlflow.churnops-system.svc:5000")
    assert not is_allowed_host_header(allowed, f"evil.example{port or ':80'}")


def test_bundled_redis_runs_as_pid_1_with_its_password_in_a_file() -> None:
    """`printf … | exec redis-server -` runs redis-server in a pipeline's subshell: sh stays PID 1, ignores the
    kubelet's SIGTERM (no handler for PID 1) and Redis is killed after the grace period. The shell must write
    the configuration to a file and then replace itself (`exec`, outside any pipeline)."""
    docs = render_ok("-f", KIND, "--set", "credentials.redisPasswordKey=redis-password")
    pod = named(docs, "Deployment", "churnops-redis")["spec"]["template"]["spec"]
    [redis] = pod["containers"]
    script = " ".join(map(str, redis.get("command", []) + redis.get("args", [])))
    assert "|" not in script, script
    started = re.search(r"(?:^|[;&\n])\s*exec redis-server (/\S+)", "\n".join(map(str, redis.get("args", []))))
    assert started, script
    conf = Path(started.group(1))
    mounts = {m["mountPath"]: m["name"] for m in redis["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(conf.parent)])
    assert volume.get("emptyDir", {}).get("medium") == "Memory", "the password file stays off the node's disk"
    assert "REDIS_PASSWORD" in str(redis["args"]) and "requirepass" in str(redis["args"])


def test_a_gateway_without_http_says_how_its_certificate_is_issued() -> None:
    """cert-manager's ACME HTTP-01 solver answers on port 80 through the Gateway; the EKS Gateway has HTTPS
    listeners only, so its issuer must solve DNS-01 (or the certificate be given): the values and the chart's
    README say so."""
    gateway = objects("eks", "Gateway")[0]
    assert {listener["protocol"] for listener in gateway["spec"]["listeners"]} == {"HTTPS"}
    assert values(EKS)["certManager"]["enabled"]
    assert "DNS-01" in EKS.read_text()
    assert "DNS-01" in (ROOT / "charts" / "README.md").read_text().split("TLS certificates on EKS", 1)[1].split("\n- **", 1)[0]
