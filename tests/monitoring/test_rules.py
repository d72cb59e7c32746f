"""Alerting: the rules and the Alertmanager configuration pass their own tools, follow the conventions, and work end to end.

promtool checks and unit-tests the rules (expected firing series in
manifests/monitoring/tests), amtool checks the configuration and its routes,
a real Alertmanager shows its inhibitions, and a real Prometheus scraping a
predictor-like exporter raises the alerts and delivers them through the
checked-in routes when the exporter turns drifted, then erroring.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.monitoring.alerting_fixtures import (
    ALERTMANAGER_CONFIG,
    MONITORING,
    RULES,
    PredictorExporter,
    WebhookSink,
    alertmanager,
    contract_names,
    fast_rules,
    get_json,
    local_alertmanager_config,
    metric_names,
    poll,
    prometheus,
    recording_rules,
    run,
    serving_exporter,
    webhook_sink,
)

RUNBOOK = "https://github.com/churnops/churnops/blob/main/README.md#runbook-"
TESTS = sorted((MONITORING / "tests").glob("*.test.yaml"))


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(RULES.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


# --- the tools' own checks -------------------------------------------------------------------------------


def test_promtool_accepts_the_rules() -> None:
    out = run(["promtool", "check", "rules", str(RULES)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(alert_rules()) + len(recording_rules())} rules found" in out.stdout


def test_promtool_unit_tests_pass() -> None:
    assert len(TESTS) >= 5
    out = run(["promtool", "test", "rules", *map(str, TESTS)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.count("SUCCESS") == len(TESTS)


def test_amtool_accepts_the_alertmanager_configuration() -> None:
    out = run(["amtool", "check-config", str(ALERTMANAGER_CONFIG)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        ({"alertname": "ChurnOpsHighErrorRate", "severity": "critical", "team": "platform"}, "oncall"),
        ({"alertname": "ChurnOpsDriftDetected", "severity": "critical", "team": "ml"}, "oncall"),
        ({"alertname": "ChurnOpsHighLatency", "severity": "warning", "team": "platform"}, "platform"),
        ({"alertname": "ChurnOpsScoreDrift", "severity": "warning", "team": "ml"}, "ml"),
        ({"alertname": "ChurnOpsCampaignROINegative", "severity": "warning", "team": "business"}, "business"),
        ({"alertname": "Watchdog", "severity": "none"}, "null"),
    ],
)
def test_routes_send_each_severity_and_team_to_its_receiver(labels: dict[str, str], receiver: str) -> None:
    args = ["amtool", "config", "routes", "test", f"--config.file={ALERTMANAGER_CONFIG}", f"--verify.receivers={receiver}"]
    out = run([*args, *(f"{k}={v}" for k, v in labels.items())])
    assert out.returncode == 0, f"{labels} went to {out.stdout.strip()!r}, expected {receiver!r}: {out.stderr}"


# --- conventions -----------------------------------------------------------------------------------------


def test_every_alert_has_severity_team_wait_and_runbook() -> None:
    for rule in alert_rules():
        name = rule["alert"]
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["labels"]["team"] in {"platform", "ml", "business"}, name
        assert "for" in rule, f"{name} has no for: duration"
        assert rule["annotations"]["runbook_url"] == RUNBOOK + name.lower(), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name


def test_each_alert_has_a_firing_and_a_quiet_unit_test() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for path in TESTS:
        for test in yaml.safe_load(path.read_text())["tests"]:
            for case in test.get("alert_rule_test", []):
                (firing if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), "alerts without an expected firing series"
    assert names - quiet == set(), "alerts without a case where they must stay quiet"
    severities = {(r["alert"], r["labels"]["severity"]) for r in alert_rules()}
    expected = {
        (case["alertname"], alert["exp_labels"]["severity"])
        for path in TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        for alert in case.get("exp_alerts") or []
    }
    assert severities - expected == set(), "severity levels never seen firing in a unit test"


def test_rules_read_only_contract_metrics() -> None:
    allowed = contract_names() | recording_rules() | {"up"}
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            used = metric_names(rule["expr"])
            assert used, f"no metric found in {rule['expr']!r}"
            assert used <= allowed, (
                f"{rule.get('alert') or rule.get('record')}: {sorted(used - allowed)} are neither in the contract nor recorded"
            )


def test_metric_name_extraction_finds_names_and_skips_the_rest() -> None:
    expr = 'sum by (model) (rate(churnops_errors_total{code=~"5.."}[5m])) / on (model) group_left max(x:y:rate5m) > 1e3 and time() - up offset 5m'
    assert metric_names(expr) == {"churnops_errors_total", "x:y:rate5m", "up"}


# --- a real Alertmanager ----------------------------------------------------------------------------------


def post_alerts(url: str, alerts: list[dict[str, str]]) -> None:
    now = dt.datetime.now(dt.UTC)
    body = [
        {
            "labels": a,
            "annotations": {"summary": a["alertname"]},
            "startsAt": now.isoformat(),
            "endsAt": (now + dt.timedelta(hours=1)).isoformat(),
        }
        for a in alerts
    ]
    request = urllib.request.Request(f"{url}/api/v2/alerts", json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=5) as r:
        assert r.status == 200


def test_alertmanager_inhibits_and_routes_with_tokens_from_files(tmp_path: Path) -> None:
    alerts = {
        "errors-critical": {"alertname": "ChurnOpsHighErrorRate", "severity": "critical", "team": "platform", "model": "churn"},
        "errors-warning": {"alertname": "ChurnOpsHighErrorRate", "severity": "warning", "team": "platform", "model": "churn"},
        "down": {"alertname": "ChurnOpsPredictorDown", "severity": "critical", "team": "platform", "namespace": "prod"},
        "latency-prod": {"alertname": "ChurnOpsHighLatency", "severity": "warning", "team": "platform", "model": "m", "namespace": "prod"},
        "latency-staging": {
            "alertname": "ChurnOpsHighLatency",
            "severity": "warning",
            "team": "platform",
            "model": "m",
            "namespace": "staging",
        },
        "degraded": {"alertname": "ChurnOpsDegradedMode", "severity": "warning", "team": "platform", "model": "churn", "version": "7"},
        "missing": {"alertname": "ChurnOpsMissingFeatures", "severity": "warning", "team": "ml", "model": "churn", "version": "7"},
        "drift": {"alertname": "ChurnOpsDriftDetected", "severity": "warning", "team": "ml", "model": "churn", "version": "8"},
    }
    suppressed = {"errors-warning", "latency-prod", "missing"}
    with webhook_sink() as hook:
        tokens = local_alertmanager_config(tmp_path / "alertmanager.yml", hook.url, tmp_path / "secrets")
        with alertmanager(tmp_path / "am", tmp_path / "alertmanager.yml") as url:
            post_alerts(url, list(alerts.values()))

            def states() -> dict[str, str] | None:
                got = {json.dumps(a["labels"], sort_keys=True): a["status"]["state"] for a in get_json(f"{url}/api/v2/alerts")}
                named = {key: got.get(json.dumps(labels, sort_keys=True), "") for key, labels in alerts.items()}
                return named if all(named.values()) and {k for k, v in named.items() if v == "suppressed"} == suppressed else None

            # Alertmanager's inhibitor learns the source alerts from its own subscription to the alert store
            # (prometheus/alertmanager inhibit/inhibit.go, Inhibitor.Run), after the API has accepted them: the
            # first answers may still call a target "active". The deadline fails the test with the last answer.
            poll("the inhibited alerts (and only those) suppressed", states, deadline_s=30)
            delivered = poll(
                "notifications to every receiver",
                lambda: (
                    {r: hook.alerts(r) for r in ("oncall", "platform", "ml")}
                    if all(hook.alerts(r) for r in ("oncall", "platform", "ml"))
                    else None
                ),
            )
    names = {r: {(a["labels"]["alertname"], a["labels"].get("namespace", "")) for _, a in got} for r, got in delivered.items()}
    assert names["oncall"] == {("ChurnOpsHighErrorRate", ""), ("ChurnOpsPredictorDown", "prod")}
    assert ("ChurnOpsHighLatency", "staging") in names["platform"] and ("ChurnOpsHighLatency", "prod") not in names["platform"]
    assert ("ChurnOpsHighErrorRate", "") not in names["platform"]  # the warning while its critical fires
    assert ("ChurnOpsDriftDetected", "") in names["ml"] and ("ChurnOpsMissingFeatures", "") not in names["ml"]
    for receiver, got in delivered.items():
        assert {auth for auth, _ in got} == {f"Bearer {tokens[receiver]}"}, receiver  # the token came from its file


# --- a real Prometheus scraping a predictor-like exporter ---------------------------------------------------


def firing(prom: str) -> set[tuple[str, str]]:
    return {
        (a["labels"]["alertname"], a["labels"]["severity"])
        for a in get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
        if a["state"] == "firing"
    }


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = get_json(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")["data"]["result"]
    return result


def paged(hook: WebhookSink) -> set[str]:
    return {a["labels"]["alertname"] for _, a in hook.alerts("oncall")}


def evaluated_since(prom: str, since: dt.datetime) -> bool:
    groups = get_json(f"{prom}/api/v1/rules")["data"]["groups"]
    return bool(groups) and all(dt.datetime.fromisoformat(g["lastEvaluation"].replace("Z", "+00:00")) > since for g in groups)


def test_prometheus_raises_alerts_from_scraped_metrics_and_alertmanager_delivers_them(tmp_path: Path) -> None:
    exporter = PredictorExporter()
    with webhook_sink() as hook, serving_exporter(exporter) as target:
        tokens = local_alertmanager_config(tmp_path / "alertmanager.yml", hook.url, tmp_path / "secrets")
        with (
            alertmanager(tmp_path / "am", tmp_path / "alertmanager.yml") as am,
            prometheus(
                tmp_path / "prom", fast_rules(tmp_path / "rules.yaml"), {"churnops-predictor": [target]}, am.removeprefix("http://")
            ) as prom,
        ):
            # healthy traffic: the rules evaluate on real samples and nothing fires
            ratio = poll("a recorded 5xx share", lambda: query(prom, "model:churnops_error_ratio_5xx:rate5m"))
            assert float(ratio[0]["value"][1]) == 0.0
            since = dt.datetime.now(dt.UTC)
            poll("three more rule evaluations", lambda: evaluated_since(prom, since + dt.timedelta(seconds=3)))
            assert firing(prom) == set()

            exporter.mode = "drifted"
            drift = {("ChurnOpsDriftDetected", "critical"), ("ChurnOpsDriftDetected", "warning"), ("ChurnOpsScoreDrift", "critical")}
            now_firing = poll("drift alerts", lambda: (f := firing(prom)) >= drift and f)
            assert not any(name == "ChurnOpsHighErrorRate" for name, _ in now_firing)
            poll("a page for the drift", lambda: "ChurnOpsDriftDetected" in paged(hook))

            exporter.mode = "erroring"
            poll("the error-rate alert", lambda: ("ChurnOpsHighErrorRate", "critical") in firing(prom))
            poll("a page for the errors", lambda: "ChurnOpsHighErrorRate" in paged(hook))
    assert "ChurnOpsPredictorDown" not in paged(hook)
    assert {auth for auth, _ in hook.alerts("oncall")} == {f"Bearer {tokens['oncall']}"}
    labels = next(a["labels"] for _, a in hook.alerts("oncall") if a["labels"]["alertname"] == "ChurnOpsDriftDetected")
    assert (labels["model"], labels["version"], labels["team"]) == ("churn", "7", "ml")
