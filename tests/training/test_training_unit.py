"""Pure parts of training: split, selection, evaluation, gates, model card."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops_models.automl import Candidate
from churnops_models.dataset import churn_spec, cv_folds, time_holdout, xy
from churnops_models.ensemble import choose
from churnops_models.evaluation import BusinessConfig, bootstrap_auc_delta, campaign_value, choose_threshold, evaluate
from churnops_models.gates import GateConfig, QualityGateError, check_gates, enforce
from churnops_models.model_card import CardInputs, plot_evaluation, render_html, render_markdown
from churnops_models.selection import select


def test_time_holdout_keeps_a_label_gap(churn_table: pd.DataFrame) -> None:
    spec = churn_spec()
    split = time_holdout(churn_table, spec)
    assert split.holdout[spec.time_column].min() == split.cutoff == churn_table[spec.time_column].max()
    assert (split.train[spec.time_column] <= split.cutoff - pd.Timedelta(days=spec.horizon_days)).all()
    assert len(split.train) + len(split.holdout) + split.dropped_for_gap == len(churn_table)


def test_folds_never_split_a_customer(churn_table: pd.DataFrame) -> None:
    spec = churn_spec()
    train = time_holdout(churn_table, spec).train
    for tr, va in cv_folds(train, spec, 3, seed=0):
        assert not set(train[spec.id_column].iloc[tr]) & set(train[spec.id_column].iloc[va])
        assert 0.05 < train[spec.target_column].iloc[va].mean() < 0.3  # stratified


def test_selection_uses_two_methods_and_drops_duplicates(churn_table: pd.DataFrame) -> None:
    spec = churn_spec()
    frame = churn_table.assign(seat_utilization_30d_copy=churn_table["seat_utilization_30d"] * 2)
    spec = type(spec)(**{**spec.__dict__, "numeric": (*spec.numeric, "seat_utilization_30d_copy")})
    x, y = xy(frame, spec)
    sel = select(x, y, spec, seed=0, max_features=40)
    assert set(sel.importance) == set(sel.mutual_information) == set(spec.features)
    assert len(sel.selected) == 40
    pair = {"seat_utilization_30d", "seat_utilization_30d_copy"}
    assert len(pair & set(sel.selected)) <= 1
    assert any(k in pair and v in pair for k, v in sel.dropped_correlated.items())


def test_campaign_value_by_hand() -> None:
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.8, 0.2, 0.1])
    mrr = np.array([1000.0, 500.0, 2000.0, 100.0])
    v = campaign_value(y, p, mrr, 0.5, BusinessConfig(contact_cost=100, save_rate=0.5, months_saved=12))
    assert v["contacted"] == 2 and v["cost"] == 200
    assert v["saved_revenue"] == pytest.approx(0.5 * 12 * 1000)
    assert v["net_savings"] == pytest.approx(6000 - 200)


def test_evaluation_and_fairness() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    p = np.clip(y * 0.6 + rng.random(2000) * 0.4, 0, 1)
    seg = np.where(np.arange(2000) % 2 == 0, "a", "b")
    ev = evaluate(y, p, 0.5, mrr=np.full(2000, 100.0), segments=seg)
    assert ev.roc_auc > 0.9 and 0 <= ev.brier <= 1
    assert set(ev.fairness["segments"]) == {"a", "b"}
    assert ev.fairness["recall_gap"] < 0.1
    assert len(ev.business["curve"]) == 19
    with pytest.raises(ValueError, match="both classes"):
        evaluate(np.zeros(10, dtype=int), np.zeros(10), 0.5)


def test_bootstrap_delta_detects_a_better_model() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    good = y * 0.5 + rng.random(3000) * 0.5
    weak = y * 0.1 + rng.random(3000) * 0.9
    cmp_ = bootstrap_auc_delta(y, good, weak, "3", resamples=200)
    assert cmp_.delta_auc > 0 and cmp_.ci_low > 0 and cmp_.p_worse == 0.0


def test_gates_fail_with_reasons_and_on_nan() -> None:
    y = np.array([0, 1] * 50)
    ev = evaluate(y, np.full(100, 0.5), 0.5)
    results = check_gates(ev, GateConfig(min_auc=0.8))
    assert [r.name for r in results if not r.passed] == ["auc", "brier"]
    with pytest.raises(QualityGateError, match=r"auc: holdout ROC-AUC 0.5000 < 0.8000"):
        enforce(results)
    ev.roc_auc = math.nan
    assert not check_gates(ev, GateConfig(min_auc=0.0))[0].passed


def test_model_card_has_every_section(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 500)
    p = np.clip(y * 0.5 + rng.random(500) * 0.5, 0, 1)
    ev = evaluate(y, p, 0.5, mrr=np.full(500, 50.0), segments=np.where(y == 1, "x", "y"))
    plots = plot_evaluation(ev, {"f1": 0.7, "f2": 0.3}, tmp_path)
    card = CardInputs(
        "churn-classifier", "4", ev, check_gates(ev, GateConfig()), None, {"feature_service": "churn_v1"}, {"rows": 500}, plots
    )
    text = render_markdown(card)
    for section in (
        "Intended use",
        "## Data",
        "## Training",
        "## Metrics",
        "Business impact",
        "Fairness",
        "Quality gates",
        "Limitations",
        "feature_service: churn_v1",
    ):
        assert section in text
    page = render_html(text, plots)
    assert page.count("data:image/png;base64,") == len(plots) == 4


def test_threshold_respects_contact_capacity() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 4000)
    p = np.clip(y * 0.3 + rng.random(4000) * 0.7, 0, 1)
    mrr = np.full(4000, 10_000.0)  # contacting is so profitable that only capacity limits it
    cfg = BusinessConfig(max_contact_share=0.2)
    t = choose_threshold(y, p, mrr, cfg)
    assert (p >= t).mean() <= 0.2
    assert (p >= t - 0.01).mean() > 0.2 - 0.02  # the bound is what stops it, not the economics


def test_ensemble_choice_stays_exactly_attributable() -> None:
    """A random forest that wins on OOF AUC is left out by default: served models must give exact reasons."""
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 2_000)
    signal = y + rng.normal(0, 1.0, y.size)

    def candidate(family: str, noise: float) -> Candidate:
        oof = 1 / (1 + np.exp(-(signal + rng.normal(0, noise, y.size))))
        return Candidate(family, {}, 0.0, oof, 0)

    ranked = [candidate("random_forest", 0.1), candidate("xgboost", 0.8), candidate("logistic_regression", 0.9)]
    folds = [(np.arange(1_000, 2_000), np.arange(1_000)), (np.arange(1_000), np.arange(1_000, 2_000))]
    choice = choose(ranked, y, folds)
    assert choice.members[0].family == "xgboost"
    assert "random_forest" not in [c.family for c in choice.members] and "blend" not in choice.oof_scores
    assert choice.combiner.kind in ("single", "stack")
    free = choose(ranked, y, folds, attributable=False)
    assert free.members[0].family == "random_forest" and "blend" in free.oof_scores
