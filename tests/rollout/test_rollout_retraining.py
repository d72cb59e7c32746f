"""Delayed labels show the stable model failing; the retraining policy starts the KFP training pipeline (kfp.local, in a
process of its own); its challenger is rolled out as a canary. Everything real: predictor, prediction log, MLflow, KFP."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.rollout.runner import Runner
from churnops.serving.routing_table import read_table
from churnops.training import registry
from churnops_contract import registry as names
from tests.rollout.conftest import STABLE, Setup
from tests.support import groups

pytestmark = groups.ROLLOUT_MODELS

SPEC: dict[str, Any] = {
    "model": {"version": STABLE},
    "featureService": "churn_v1",
    "rollout": {"interval": "1s", "minSamples": 20},
    "monitoring": {
        "evaluationInterval": "1s",
        "drift": {"consecutive": 2},
        "retraining": {
            "enabled": True,
            "cooldown": "1h",
            # a small search; the gates are the pipeline's own, loosened for 2,000 customers
            "parameters": {"n_trials": "3", "timeout_s": "0", "n_folds": "2", "min_auc": "0.55", "max_auc_regression": "1.0"},
        },
    },
}


def logged(setup: Setup, version: str) -> int:
    now = dt.datetime.now(dt.UTC)
    frame = ParquetStore(setup.data_dir / "predictions").read_window(now - dt.timedelta(hours=1), now, version=version, features=[])
    return len(frame)


def step_until(runner: Runner, reason: str, seconds: float, pause_s: float) -> list[dict[str, Any]]:
    """Step with the real clock until an event with ``reason``; the deadline only bounds a hung run."""
    deadline = time.monotonic() + seconds
    seen: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        report = runner.step()
        seen += report.events
        if any(e["reason"] == reason for e in report.events):
            return seen
        time.sleep(pause_s)
    raise AssertionError(f"no {reason} event within {seconds:g} s; events: {[e['reason'] for e in seen]}")


@pytest.mark.timeout(1800)
def test_late_labels_trigger_retraining_and_its_challenger_becomes_the_canary(setup: Setup) -> None:
    runner = setup.runner()
    assert runner.apply(SPEC).stable == STABLE
    deadline = time.monotonic() + 300
    while not setup.serves(STABLE):
        assert time.monotonic() < deadline, "the route never served version 1"
        time.sleep(0.2)
    scored: dict[int, float] = {}
    with setup.server.client() as c:
        for i in range(0, 300, 10):
            for p in setup.predict(c, setup.customers[i : i + 10]):
                scored[p["customer_id"]] = p["churn_probability"]
    deadline = time.monotonic() + 120
    while logged(setup, STABLE) < 300:  # the predictor flushes its log every second
        assert time.monotonic() < deadline, "the prediction log never held the 300 predictions"
        time.sleep(0.5)
    # The outcomes arrive a month later and contradict the model: the customers it ranked lowest churned.
    median = float(np.median(list(scored.values())))
    labels = pd.DataFrame(
        {
            "customer_id": list(scored),
            "event_timestamp": pd.Timestamp.now(tz="UTC") - pd.Timedelta(days=1),
            "churned_30d": [int(s <= median) for s in scored.values()],
        }
    )
    (setup.data_dir / "labels").mkdir()
    labels.to_parquet(setup.data_dir / "labels" / "outcomes.parquet", index=False)

    events = step_until(runner, "RetrainingTriggered", 120, 0.6)
    evaluations = [e for e in setup.store.timeline() if e["kind"] == "evaluation" and e["signals"]["measuredAUC"] is not None]
    assert len(evaluations) >= 2 and evaluations[-1]["triggered"]
    signals = evaluations[-1]["signals"]
    assert signals["labelled"] >= 200 and signals["measuredAUC"] < signals["referenceAUC"] - 0.05
    assert "measured AUC" in evaluations[-1]["reason"]
    status = setup.store.load().status
    uid = setup.store.load().uid[:8]  # run names are unique per deployment object
    assert status["phase"] == "Retraining" and status["retraining"]["runName"] == f"churn-{uid}-retrain-1"

    events = step_until(runner, "RetrainingFinished", 1500, 2.0)
    finished = next(e for e in events if e["reason"] == "RetrainingFinished")
    challenger = registry.alias_version(setup.registry, names.CHALLENGER)
    assert challenger == "4" and "challenger version 4" in finished["message"]
    # the same step rolls the new challenger out as a canary (autoPromote)
    assert any(e["reason"] == "CanaryStarted" and e["canary"] == "4" for e in events)
    table = read_table(setup.store.routing_path)
    assert (table.stable, table.canary, table.weight) == (STABLE, "4", 5)
    status = setup.store.load().status
    assert status["retraining"]["runState"] == "SUCCEEDED" and status["retraining"]["candidateVersion"] == "4"
    assert (setup.store.runs_dir / f"churn-{uid}-retrain-1" / "result.json").exists()
