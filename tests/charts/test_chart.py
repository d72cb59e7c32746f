"""helm lint --strict and helm template for every scenario; failures that must name their cause."""

from __future__ import annotations

import pytest

from tests.charts.render import CHART, CRD_CHART, SCENARIOS, documents, helm, objects, rendered, template


def test_scenarios_exist() -> None:
    assert {"kind", "eks", "minimal"} <= set(SCENARIOS)


def test_lint_strict_with_defaults() -> None:
    code, out, err = helm("lint", "--strict", CHART)
    assert code == 0, out + err


@pytest.mark.parametrize("values", [[], ["--set", "kopfPeering.install=false", "--set", "keep=false"]])
def test_crd_chart_lints_strict(values: list[str]) -> None:
    code, out, err = helm("lint", "--strict", CRD_CHART, *values)
    assert code == 0, out + err


def test_crd_chart_refuses_unknown_values() -> None:
    code, _, err = helm("template", "x", CRD_CHART, "--set", "install=false")
    assert code != 0 and "install" in err


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_lint_strict(scenario: str) -> None:
    code, out, err = helm("lint", "--strict", CHART, "-f", CHART / "ci" / f"{scenario}-values.yaml")
    assert code == 0, out + err


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_template_renders(scenario: str) -> None:
    kinds = {o["kind"] for o in rendered(scenario)}
    assert {"StatefulSet", "ClusterRole", "ServiceAccount"} <= kinds, kinds
    assert "CustomResourceDefinition" not in kinds, "the CRDs are charts/churnops-crds' (installed first)"


def test_defaults_need_the_endpoints() -> None:
    """Without an MLflow, Redis or PostgreSQL (given or bundled) the chart refuses to render, naming the value."""
    code, _, err = template()
    assert code != 0
    assert "endpoints.mlflow is required unless mlflow.bundled.enabled is true" in err


def test_selectors_never_carry_the_chart_version() -> None:
    for scenario in SCENARIOS:
        for obj in rendered(scenario):
            spec = obj.get("spec") or {}
            selector = spec.get("selector")
            if isinstance(selector, dict):
                labels = selector.get("matchLabels", selector)
                assert "helm.sh/chart" not in labels, (scenario, obj["kind"], obj["metadata"]["name"])
                assert "app.kubernetes.io/version" not in labels


def test_operator_leader_election_and_priorities() -> None:
    """Replicas peer through the chart's ClusterKopfPeering, each with a distinct priority (its pod index)."""
    sts = objects("kind", "StatefulSet")
    op = next(s for s in sts if s["metadata"]["name"] == "churnops-operator")
    container = op["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["CHURNOPS_OPERATOR_PRIORITY"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.labels['apps.kubernetes.io/pod-index']"
    peering = objects("kind", "ClusterKopfPeering")
    assert [p["metadata"]["name"] for p in peering] == [env["CHURNOPS_OPERATOR_PEERING"]["value"]]
    assert "--standalone" not in container.get("args", [])
    assert op["spec"]["replicas"] == 2
    assert objects("kind", "PodDisruptionBudget")[0]["spec"]["maxUnavailable"] == 1
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"


def test_standalone_operator_has_no_peering() -> None:
    container = objects("minimal", "StatefulSet")[0]["spec"]["template"]["spec"]["containers"][0]
    assert "--standalone" in container["args"]
    assert not objects("minimal", "ClusterKopfPeering")


def test_standalone_with_two_replicas_is_refused() -> None:
    code, _, err = template(
        "-f", CHART / "ci" / "kind-values.yaml", "--set", "operator.leaderElection.enabled=false", "--set", "operator.replicas=2"
    )
    assert code != 0 and "replicas" in err, err


def test_optional_services_are_off_by_default() -> None:
    code, out, err = template(
        "--set", "endpoints.mlflow=http://mlflow:5000", "--set", "featureStore.redis.host=r", "--set", "featureStore.postgresql.host=p"
    )
    assert code == 0, err
    names = {d["metadata"]["name"] for d in documents(out)}
    assert not any(n.endswith(("-redis", "-postgresql", "-mlflow")) for n in names), names


def test_notes_render() -> None:
    code, out, err = helm(
        "install", "churnops", CHART, "--dry-run=client", "--namespace", "churnops-system", "-f", CHART / "ci" / "kind-values.yaml"
    )
    assert code == 0, err
    assert "ModelDeployment" in out and "churnops-credentials" in out


def test_no_secret_values_in_rendered_objects() -> None:
    """Passwords only ever come from secretKeyRef: the chart renders no Secret and no literal password variable."""
    for scenario in SCENARIOS:
        assert not objects(scenario, "Secret"), scenario
        for obj in rendered(scenario):
            text = str(obj)
            assert "password=" not in text.replace("password=$(CHURNOPS_REDIS_PASSWORD)", ""), (scenario, obj["metadata"]["name"])
