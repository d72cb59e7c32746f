"""Retraining after a population shift: the recency window, calibration on the latest rows, the calibration gate.

Issue 19: after the generator's 'both' drift (from day 120 of 180 history days) the retrained model learned the
old base rate (most training rows are pre-shift, and its calibrator was fitted on all of them), passed the
Brier gate, and raised the calibration alert against itself once served.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from churnops.data.config import GeneratorConfig, with_drift
from churnops.data.generator import generate_blocks
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features.catalog import DOMAINS
from churnops.features.engine import compute_block_features
from churnops.training.calibration import calibration_fit
from churnops.training.config import GateConfig, SearchBudget, TrainingConfig
from churnops.training.dataset import churn_spec, recency_weights, time_holdout, training_window
from churnops.training.evaluation import evaluate
from churnops.training.gates import check_gates
from churnops.training.train import assess, fit, summarize
from churnops_contract.policy import RetrainingPolicy, TrainingWindow, window_for

SHIFTED = with_drift(GeneratorConfig(n_customers=3_000, block_size=3_000, seed=21), "both", start_day=120)


@pytest.fixture(scope="module")
def shifted_table() -> pd.DataFrame:
    """Labelled snapshots at days 90 (pre-shift), 120 (post-shift outcomes) and 150 (post-shift: the holdout)."""
    block = next(generate_blocks(SHIFTED))
    feats = compute_block_features(SHIFTED.calendar, block.tables, SHIFTED.calendar.labelled_snapshot_days())
    frame = block.labels[[ENTITY, TIMESTAMP, "churned_30d"]]
    for domain in DOMAINS:
        frame = frame.merge(feats[domain], on=[ENTITY, TIMESTAMP], validate="one_to_one")
    return frame


def policy_window() -> TrainingWindow:
    """The window the retraining policy starts a run with after a calibration breach (its first attempt)."""
    return window_for(RetrainingPolicy(), 1, "calibration: observed/expected churners 0.62")


def challenger(frame: pd.DataFrame, window: TrainingWindow) -> tuple[dict[str, float], list[str], dict[str, Any]]:
    cfg = TrainingConfig(seed=3, budget=SearchBudget(n_trials=2, families=("lightgbm",), timeout_s=60), window=window)
    fitted = fit(frame, churn_spec(), cfg)
    ev, _, gates = assess(fitted, cfg, None, None)
    return ev.calibration_fit, [g.name for g in gates if not g.passed], summarize(fitted, ev)["training_window"]


def test_the_recency_window_passes_the_calibration_gate_where_the_whole_history_fails(shifted_table: pd.DataFrame) -> None:
    spec = churn_spec()
    rates = shifted_table.groupby(spec.time_column)[spec.target_column].mean().to_numpy()
    assert rates[0] > 0.12 and rates[1] < 0.07 and rates[2] < 0.09  # the shift lowered the churn rate

    whole, whole_failed, whole_window = challenger(shifted_table, TrainingWindow())
    assert "calibration" in whole_failed
    assert whole["observed_expected"] < 0.75 and whole["intercept"] < 0  # it expects the old, higher churn rate
    assert whole_window["calibration_rows"] == whole_window["rows"] and whole_window["reason"] == "every training row, equal weights"

    recent, recent_failed, recent_window = challenger(shifted_table, policy_window())
    assert "calibration" not in recent_failed
    assert abs(recent["observed_expected"] - 1) < 0.25 < abs(whole["observed_expected"] - 1)
    # the window is recorded: its rows, dates, half-life, the calibration rows (the latest snapshot before the gap), and why
    assert recent_window["recency_half_life_days"] == 30 and recent_window["calibration_days"] == 30
    assert recent_window["calibration_from"] == recent_window["until"] == "2026-05-01 00:00:00+00:00"
    assert 0 < recent_window["calibration_rows"] < recent_window["rows"] and recent_window["oldest_row_weight"] == 0.5
    assert "observed/expected churners 0.62" in str(recent_window["reason"])


def test_window_keeps_the_holdout_and_its_gap_and_calibrates_on_the_latest_rows(shifted_table: pd.DataFrame) -> None:
    spec = churn_spec()
    split = time_holdout(shifted_table, spec)
    windowed = training_window(split.train, spec, TrainingWindow(recency_half_life_days=30, window_days=45, calibration_days=30))
    times = windowed.train[spec.time_column]
    assert times.max() <= split.cutoff - pd.Timedelta(days=spec.horizon_days)  # never a holdout or gap row
    assert times.min() > times.max() - pd.Timedelta(days=45) and windowed.dropped_old == (split.train[spec.time_column] < times.min()).sum()
    assert windowed.calibration is not None and (times[windowed.calibration] == times.max()).all()
    assert windowed.weights is not None and windowed.weights.mean() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="calibration_days must be a positive number of days"):
        TrainingWindow(calibration_days=math.nan)


def test_recency_weights_halve_every_half_life() -> None:
    times = pd.Series(pd.to_datetime(["2026-01-01", "2026-01-31", "2026-03-02"], utc=True))
    w = recency_weights(times, 30.0)
    assert w[1] / w[2] == pytest.approx(0.5) and w[0] / w[2] == pytest.approx(0.25) and w.mean() == pytest.approx(1.0)


def test_calibration_figures_and_gate_on_known_scores() -> None:
    rng = np.random.default_rng(5)
    truth = rng.uniform(0.02, 0.5, 20_000)
    y = (rng.random(truth.size) < truth).astype(np.int64)
    calibrated = calibration_fit(y, truth)
    assert abs(calibrated["observed_expected"] - 1) < 0.03 and abs(calibrated["slope"] - 1) < 0.08 and abs(calibrated["intercept"]) < 0.05
    doubled = np.clip(truth * 2, 0, 0.99)  # the old, higher base rate
    off = calibration_fit(y, doubled)
    assert off["observed_expected"] < 0.6 and off["intercept"] < -0.5
    gates = GateConfig(min_auc=0.5, max_calibration_slope_drift=0.2)
    ok = {g.name: g for g in check_gates(evaluate(y, truth, 0.3), gates)}
    bad = {g.name: g for g in check_gates(evaluate(y, doubled, 0.3), gates)}
    assert ok["calibration"].passed and ok["calibration_slope"].passed
    assert not bad["calibration"].passed and "at or past ±25%" in bad["calibration"].reason
    unmeasured = evaluate(y, truth, 0.3)
    unmeasured.calibration_fit = {}  # an evaluation recorded before the figures existed is not a calibrated one
    assert not {g.name: g for g in check_gates(unmeasured, gates)}["calibration"].passed
