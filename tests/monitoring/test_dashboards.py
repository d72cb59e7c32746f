"""Dashboards as code: the checked-in JSON is the generator's output, and every query is valid, known and answers.

Golden files (as for the compiled pipelines): regenerate with
``python -m churnops.monitoring.dashboards manifests/monitoring/dashboards``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import yaml
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.cog.plugins import register_default_plugins
from grafana_foundation_sdk.models.dashboard import Dashboard

from churnops.monitoring import dashboards
from tests.monitoring.alerting_fixtures import (
    MONITORING,
    PredictorExporter,
    contract_names,
    fast_rules,
    get_json,
    metric_names,
    poll,
    prometheus,
    recording_rules,
    run,
    serving_exporter,
)

CHECKED_IN = MONITORING / "dashboards"
NAMES = list(dashboards.DASHBOARDS)
# What Grafana substitutes before sending a query, so that promtool and Prometheus see plain PromQL.
VARIABLES = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "1h",
    "$model": "churn",
    "$version": "7",
    "$method": "psi",
    "$segment": "all",
}
LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.*),\s*\w+\)$")


def load(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((CHECKED_IN / f"{name}.json").read_text())
    return board


def promql(expr: str) -> str:
    """A dashboard query as Prometheus receives it: variables substituted, ``label_values(sel, l)`` reduced to ``sel``."""
    for var, value in VARIABLES.items():
        expr = expr.replace(var, value)
    m = LABEL_VALUES.match(expr)
    return m.group("selector") if m else expr


def test_checked_in_json_is_the_generated_json() -> None:
    assert sorted(p.name for p in CHECKED_IN.iterdir()) == sorted(f"{n}.json" for n in NAMES)
    for name in NAMES:
        assert (CHECKED_IN / f"{name}.json").read_text() == dashboards.render(name), (
            f"{name}.json is stale: run python -m churnops.monitoring.dashboards manifests/monitoring/dashboards"
        )


def test_the_entry_point_writes_the_same_files(tmp_path: Path) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "churnops.monitoring.dashboards", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(tmp_path / f"{n}.json") for n in NAMES]
    for name in NAMES:
        assert (tmp_path / f"{name}.json").read_text() == (CHECKED_IN / f"{name}.json").read_text()
    usage = subprocess.run([sys.executable, "-m", "churnops.monitoring.dashboards"], capture_output=True, text=True, check=False)
    assert usage.returncode == 2 and "usage:" in usage.stderr


def _without_empty_custom(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _without_empty_custom(v) for k, v in node.items() if not (k == "custom" and v == {})}
    if isinstance(node, list):
        return [_without_empty_custom(v) for v in node]
    return node


@pytest.mark.parametrize("name", NAMES)
def test_grafanas_own_model_reads_each_dashboard_back(name: str) -> None:
    register_default_plugins()
    board = load(name)
    again = json.loads(JSONEncoder(sort_keys=True).encode(Dashboard.from_json(board)))
    assert _without_empty_custom(again) == board  # decoding only adds empty per-panel "custom" blocks


@pytest.mark.parametrize("name", NAMES)
def test_structure_variables_and_datasource(name: str) -> None:
    board = load(name)
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for key in ("model", "version"):
        assert variables[key]["type"] == "query" and variables[key]["multi"] and variables[key]["includeAll"]
    panels = [p for p in board["panels"] if p["type"] != "row"]
    assert panels, "no panels"
    assert len({p["id"] for p in board["panels"]}) == len(board["panels"]), "panel ids repeat"
    for panel in panels:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"] and all(t["expr"] for t in panel["targets"]), panel["title"]
        assert all('model=~"$model"' in t["expr"] or "prediction_log" in t["expr"] for t in panel["targets"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]
    assert board["uid"] == f"churnops-{name}"


def test_dashboard_uids_are_unique() -> None:
    uids = [load(n)["uid"] for n in NAMES]
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize("name", NAMES)
def test_queries_use_only_contract_metrics_or_recording_rules(name: str) -> None:
    allowed = contract_names() | recording_rules()
    for expr in dashboards.queries(load(name)):
        used = metric_names(promql(expr))
        assert used, f"no metric in {expr!r}"
        assert used <= allowed, f"{name}: {sorted(used - allowed)} in {expr!r} are neither in the contract nor recorded"


def test_every_query_parses(tmp_path: Path) -> None:
    exprs = sorted({promql(e) for n in NAMES for e in dashboards.queries(load(n))})
    rules = {
        "groups": [{"name": "dashboard-queries", "rules": [{"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]
    }
    path = tmp_path / "queries.rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    out = run(["promtool", "check", "rules", str(path)])
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in out.stdout


def test_serving_panels_show_data_from_a_scraped_predictor(tmp_path: Path) -> None:
    """The serving dashboard's queries, run by a real Prometheus against a predictor-like exporter, return data."""
    exporter = PredictorExporter()
    with (
        serving_exporter(exporter) as target,
        prometheus(tmp_path / "prom", fast_rules(tmp_path / "rules.yaml"), {"churnops-predictor": [target]}) as prom,
    ):
        empty: list[str] = []

        def all_answer() -> bool:
            empty.clear()
            for expr in dashboards.queries(load("serving")):
                body = get_json(f"{prom}/api/v1/query?query={urllib.parse.quote(promql(expr))}")
                assert body["status"] == "success", (expr, body)
                if not body["data"]["result"]:
                    empty.append(expr)
            return not empty

        poll("data in every serving panel", all_answer)  # on failure, `empty` names the silent queries
    assert empty == []
