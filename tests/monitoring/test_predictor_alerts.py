"""A real Prometheus scrapes a running predictor, evaluates the rules, and the drift alert fires when drifted traffic is sent.

The predictor is ``churnops serve`` with a registered model whose reference
profile was logged at registration; Prometheus loads the checked-in rules
(with every ``for:`` at 0 s and a one-second evaluation interval, as in
``test_rules``). Traffic is full feature records: first customers drawn from
the training process (the live window is judged and the alert stays
inactive), then the same kind of customers under the generator's covariate
drift preset (the alert fires). Everything is read back through
Prometheus' HTTP API.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

from churnops_contract import metric_names as c
from tests.monitoring.alerting_fixtures import fast_rules, get_json, prometheus
from tests.monitoring.monitor_fixtures import (
    Predictor,
    Traffic,
    monitored_fixture,  # noqa: F401 - fixtures used by name
    predictor_fixture,  # noqa: F401
    send,
    served_data_fixture,  # noqa: F401
    traffic_fixture,  # noqa: F401
)
from tests.support import groups
from tests.support.waiting import poll

pytestmark = groups.MONITORED

ALERT = "ChurnOpsDriftDetected"
NORMAL_ROWS = 600  # above the drift policy's 200-prediction minimum for a verdict
DRIFTED_ROWS = 3_000  # most of the live window (10 sub-windows of 1,000) once sent


@pytest.fixture(name="prom")
def prom_fixture(predictor: Predictor, tmp_path: Path) -> Iterator[str]:
    rules = fast_rules(tmp_path / "rules.yaml")
    with prometheus(tmp_path / "prometheus", rules, {c.PREDICTOR_JOB: [predictor.host_port]}) as url:
        yield url


def query(prom: str, expr: str) -> list[dict[str, Any]]:
    doc = get_json(f"{prom}/api/v1/query?query={urllib.parse.quote(expr)}")
    assert doc["status"] == "success", doc
    result: list[dict[str, Any]] = doc["data"]["result"]
    return result


def value(prom: str, expr: str) -> float | None:
    result = query(prom, expr)
    return float(result[0]["value"][1]) if result else None


def alert_rules(prom: str) -> list[dict[str, Any]]:
    groups = get_json(f"{prom}/api/v1/rules?type=alert")["data"]["groups"]
    return [r for g in groups for r in g["rules"] if r["name"] == ALERT]


def last_evaluation(prom: str, group: str) -> str:
    groups = get_json(f"{prom}/api/v1/rules")["data"]["groups"]
    (g,) = [g for g in groups if g["name"] == group]
    stamp: str = g["lastEvaluation"]
    return stamp


def evaluated_since_now(prom: str, group: str) -> None:
    """Wait for two new evaluations of ``group``: the second began after this call, on the data scraped before it."""
    for _ in range(2):
        poll(f"a new evaluation of {group}", partial(changed, prom, group, last_evaluation(prom, group)))


def changed(prom: str, group: str, before: str) -> bool:
    return last_evaluation(prom, group) != before


def firing(prom: str, version: str) -> list[dict[str, Any]]:
    alerts = get_json(f"{prom}/api/v1/alerts")["data"]["alerts"]
    return [a for a in alerts if a["labels"]["alertname"] == ALERT and a["labels"].get("version") == version and a["state"] == "firing"]


def test_the_drift_alert_fires_on_drifted_traffic_and_not_before(predictor: Predictor, traffic: Traffic, prom: str) -> None:
    labels = f'model="{predictor.model_name}",version="{predictor.version}"'
    poll("Prometheus to scrape the predictor", lambda: value(prom, f'up{{job="{c.PREDICTOR_JOB}"}}') == 1.0)

    # normal traffic: the window is judged (enough predictions) and not drifted, and the rule has looked at it
    send(predictor, traffic.normal.head(NORMAL_ROWS))
    poll(
        "a verdict on the normal window",
        lambda: (
            (value(prom, f"{c.DRIFT_WINDOW_SIZE}{{{labels}}}") or 0) >= NORMAL_ROWS
            and value(prom, f"{c.DRIFT_DETECTED}{{{labels}}}") == 0.0
        ),
    )
    evaluated_since_now(prom, "churnops.drift")
    assert value(prom, f"{c.DRIFT_DETECTED}{{{labels}}}") == 0.0
    rules = alert_rules(prom)
    assert len(rules) == 2 and all(r["state"] == "inactive" for r in rules), rules
    assert firing(prom, predictor.version) == []

    # drifted traffic: usage down, tickets and prices up, sent as full feature records
    send(predictor, traffic.drifted.head(DRIFTED_ROWS))
    alerts = poll("ChurnOpsDriftDetected to fire", lambda: firing(prom, predictor.version), deadline_s=180)
    assert {a["labels"]["model"] for a in alerts} == {predictor.model_name}
    assert value(prom, f"{c.DRIFT_DETECTED}{{{labels}}}") == 1.0
    share = value(prom, f"{c.DRIFTED_FEATURES_SHARE}{{{labels}}}")  # the verdict also counts score drift, so no floor here
    assert share is not None and share > 0
    severities = {a["labels"]["severity"] for a in alerts}
    assert "warning" in severities  # the critical rule needs half of the features drifted as well
    assert ("critical" in severities) == (share >= 0.5)
    assert alerts[0]["annotations"]["runbook_url"].endswith("#runbook-churnopsdriftdetected")
