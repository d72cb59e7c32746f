"""The KFP drift window pipeline: golden spec, and a local run whose report is the CLI's report for the same window."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from kfp import local

from churnops.cli import main
from churnops.reports.drift import JSON_NAME, METRICS_NAME
from churnops_pipelines.monitoring import churn_drift_window, compile_pipeline
from tests.monitoring.monitor_fixtures import (
    Monitored,
    Traffic,
    monitored_fixture,  # noqa: F401 - fixtures used by name
    traffic_fixture,  # noqa: F401
    write_predictions,
)
from tests.support import groups

pytestmark = groups.MONITORED

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "churn_drift_window.yaml"
T = dt.datetime(2026, 5, 1, 12, 0, tzinfo=dt.UTC)
SINCE, UNTIL = "2026-05-01T11:00:00Z", "2026-05-01T13:00:00Z"


def test_compiled_pipeline_matches_golden_file(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(str(out))
    assert out.read_text() == GOLDEN.read_text(), "pipeline changed: run `make pipelines` and review the diff"
    assert "comp-drift-window:" in out.read_text()
    assert "pip install" not in out.read_text()


def outputs(root: Path, name: str) -> Path:
    (found,) = [p for p in root.rglob(name) if p.is_file()]
    return found


@pytest.mark.timeout(900)
def test_pipeline_judges_a_window_like_the_cli(monitored: Monitored, traffic: Traffic, tmp_path: Path) -> None:
    log_dir = tmp_path / "data" / "predictions"
    model = monitored.models[monitored.champion]
    write_predictions(log_dir, monitored.model_name, monitored.champion, model, traffic.drifted.head(600), T.timestamp())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    churn_drift_window(
        tracking_uri=monitored.cfg.tracking_uri,
        model_ref="champion",
        window="",
        since=SINCE,
        until=UNTIL,
        prediction_log=str(log_dir),
        evidently=False,
    )
    root = tmp_path / "kfp"
    report = json.loads(outputs(root, "report_json").read_text())
    assert (report["model_version"], report["window"]["rows"], report["drift_detected"]) == (monitored.champion, 600, True)
    assert "Drift report" in outputs(root, "report").read_text()
    assert "was not requested" in outputs(root, "evidently_report").read_text()
    prom = outputs(root, "prometheus").read_text()
    assert f'churnops_drift_detected{{model="{monitored.model_name}",version="{monitored.champion}"}} 1.0' in prom
    executor = json.loads(outputs(root, "executor_output.json").read_text())
    assert executor["parameterValues"]["Output"] == "drift"
    (summary,) = executor["artifacts"]["summary"]["artifacts"]
    assert summary["metadata"]["rows"] == 600 and summary["metadata"]["features_drifted"] == len(report["drifted_features"])
    assert summary["metadata"]["drifted_share"] == pytest.approx(report["drifted_share"])

    # the CLI on the same window writes the same report (up to when it was generated)
    cli_out = tmp_path / "cli"
    args = ["--data-dir", str(tmp_path / "data"), "monitor", "drift", "--since", SINCE, "--until", UNTIL, "--out", str(cli_out)]
    assert main([*args, "--no-evidently", "--tracking-uri", monitored.cfg.tracking_uri]) == 0
    cli = json.loads((cli_out / JSON_NAME).read_text())
    for doc in (report, cli):
        doc.pop("generated_at")
    assert report == cli
    assert (cli_out / METRICS_NAME).read_text() == prom
