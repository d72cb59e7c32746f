"""The rendered monitoring objects: rules (PrometheusRule and plain file) equal the canonical ones and pass
``promtool check rules`` and the canonical ``promtool test rules``; dashboards are ConfigMaps for Grafana's
sidecar; the predictors are scraped under the job name the alerts select."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.render import objects
from tests.support.k8s_tools import ROOT, run

MONITORING = ROOT / "manifests" / "monitoring"
CANONICAL_RULES = yaml.safe_load((MONITORING / "rules" / "churnops.rules.yaml").read_text())


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail("promtool is not installed (Debian: apt-get install prometheus)")
    return found


def rule_file(tmp_path: Path) -> Path:
    """The rules of the kind scenario's PrometheusRule, as a Prometheus rule file."""
    rule = objects("kind", "PrometheusRule")[0]
    path = tmp_path / "rules" / "churnops.rules.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}, sort_keys=False))
    return path


def test_prometheus_rule_equals_the_canonical_rules() -> None:
    assert objects("kind", "PrometheusRule")[0]["spec"]["groups"] == CANONICAL_RULES["groups"]
    assert objects("kind", "PrometheusRule")[0]["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_plain_rule_file_and_alertmanager_config_are_the_canonical_files() -> None:
    maps = {m["metadata"]["name"]: m for m in objects("kind", "ConfigMap")}
    assert maps["churnops-rule-files"]["data"]["churnops.rules.yaml"] == (MONITORING / "rules" / "churnops.rules.yaml").read_text()
    assert maps["churnops-alertmanager"]["data"]["alertmanager.yaml"] == (MONITORING / "alertmanager.yaml").read_text()


def test_promtool_checks_the_rendered_rules(tmp_path: Path) -> None:
    result = run([promtool(), "check", "rules", rule_file(tmp_path)])
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_rejects_a_broken_rule(tmp_path: Path) -> None:
    path = rule_file(tmp_path)
    path.write_text(
        path.read_text().replace("expr: sum by (model, version) (rate(churnops_requests_total[5m]))", "expr: sum by (model (", 1)
    )
    assert run([promtool(), "check", "rules", path]).returncode != 0


def test_canonical_rule_tests_pass_on_the_rendered_rules(tmp_path: Path) -> None:
    """manifests/monitoring/tests/*.test.yaml, run against the chart's rules instead of the canonical file."""
    rule_file(tmp_path)
    tests_dir = tmp_path / "tests"
    tests_dir.mkdir()
    for test in sorted((MONITORING / "tests").glob("*.test.yaml")):
        (tests_dir / test.name).write_text(test.read_text())
    result = run([promtool(), "test", "rules", *sorted(tests_dir.glob("*.test.yaml"))], cwd=tests_dir)
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_sidecar_config_maps() -> None:
    maps = [m for m in objects("kind", "ConfigMap") if "-dashboard-" in m["metadata"]["name"]]
    canonical = {p.name: p.read_text() for p in (MONITORING / "dashboards").glob("*.json")}
    assert {k for m in maps for k in m["data"]} == set(canonical)
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        assert m["metadata"]["namespace"] == "monitoring"
        for key, text in m["data"].items():
            assert text == canonical[key]
            assert json.loads(text)["uid"].startswith("churnops-")


def test_predictors_are_scraped_as_the_alerts_expect() -> None:
    monitor = objects("kind", "PodMonitor")[0]
    runtime = objects("kind", "ClusterServingRuntime")[0]["spec"]
    endpoint = monitor["spec"]["podMetricsEndpoints"][0]
    job = next(r["replacement"] for r in endpoint["relabelings"] if r.get("targetLabel") == "job")
    alert = next(r for g in CANONICAL_RULES["groups"] for r in g["rules"] if r.get("alert") == "ChurnOpsPredictorDown")
    pattern = re.search(r'job=~"([^"]+)"', alert["expr"])
    assert pattern and re.fullmatch(pattern.group(1), job), (pattern, job)
    assert monitor["spec"]["selector"]["matchLabels"].items() <= runtime["labels"].items()
    assert endpoint["port"] in {p["name"] for p in runtime["containers"][0]["ports"]}
    assert monitor["spec"]["namespaceSelector"]["matchNames"] == ["churn"]


def test_operator_metrics_are_scraped() -> None:
    monitor: dict[str, Any] = objects("kind", "ServiceMonitor")[0]
    service = next(s for s in objects("kind", "Service") if s["metadata"]["name"] == "churnops-operator")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
