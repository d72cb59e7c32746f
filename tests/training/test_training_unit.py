"""Pure parts of training: split, selection, search plan, calibration, evaluation, thresholds, gates, model card."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import brier_score_loss

from churnops.errors import InvalidInputError
from churnops.monitoring.performance import expected_calibration_error
from churnops.training.automl import Candidate, Patience
from churnops.training.config import ATTRIBUTABLE_FAMILIES, FAMILIES, BusinessConfig, GateConfig, SearchBudget, plan_search
from churnops.training.dataset import churn_spec, cv_folds, time_holdout, xy
from churnops.training.ensemble import calibrate, choose, fit_calibrator
from churnops.training.evaluation import Comparison, bootstrap_auc_delta, campaign_value, choose_threshold, evaluate
from churnops.training.gates import QualityGateError, check_gates, enforce
from churnops.training.model_card import CardInputs, plot_evaluation, render_html, render_markdown
from churnops.training.selection import select


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
    with pytest.raises(InvalidInputError, match="both classes"):
        evaluate(np.zeros(10, dtype=int), np.zeros(10), 0.5)


def test_bootstrap_delta_detects_a_better_model() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    good = y * 0.5 + rng.random(3000) * 0.5
    weak = y * 0.1 + rng.random(3000) * 0.9
    cmp_ = bootstrap_auc_delta(y, good, weak, "3", resamples=200)
    assert cmp_.delta_auc > 0 and cmp_.ci_low > 0 and cmp_.p_worse == 0.0


def test_fairness_and_regression_gates_fail_with_reasons() -> None:
    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 4_000)
    seg = np.where(np.arange(4_000) % 2 == 0, "a", "b")
    # churners of segment b score like everyone else: the model misses them
    p = np.where((seg == "a") & (y == 1), 0.9, rng.random(4_000) * 0.6)
    ev = evaluate(y, p, 0.5, segments=seg)
    results = {r.name: r for r in check_gates(ev, GateConfig(min_auc=0.5, max_brier=0.5))}
    assert not results["fairness_gap"].passed and results["auc"].passed
    assert "largest segment recall gap" in results["fairness_gap"].reason
    worse = Comparison("3", delta_auc=-0.03, ci_low=-0.05, ci_high=-0.01, p_worse=1.0, resamples=1000)
    results = {r.name: r for r in check_gates(ev, GateConfig(min_auc=0.5, max_brier=0.5, max_fairness_gap=1.0), worse)}
    assert [n for n, r in results.items() if not r.passed] == ["no_regression"]
    assert "AUC change vs champion v3" in results["no_regression"].reason
    with pytest.raises(QualityGateError, match=r"no_regression: AUC change vs champion v3 .* -0.0300 < -0.0100"):
        enforce(list(results.values()))


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


def test_model_card_says_when_no_contact_is_profitable(tmp_path: Path) -> None:
    y, p = _scored_customers(3_000, seed=8)
    tens = np.full(y.size, 20.0)
    choice = choose_threshold(y, p, tens, BusinessConfig())
    ev = evaluate(y, p, choice, mrr=tens)
    card = CardInputs("churn-classifier", "2", ev, check_gates(ev, GateConfig()), None, {}, {}, {})
    text = render_markdown(card)
    assert "## Decision threshold" in text
    assert "No contact is profitable with the stated campaign economics" in text
    assert "No threshold is profitable: contacting a churner pays off only when its monthly revenue exceeds 667" in text
    assert "<strong>No contact is profitable" in render_html(text, {})


def test_threshold_respects_contact_capacity() -> None:
    rng = np.random.default_rng(3)
    y = rng.integers(0, 2, 4000)
    p = np.clip(y * 0.3 + rng.random(4000) * 0.7, 0, 1)
    mrr = np.full(4000, 10_000.0)  # contacting is so profitable that only capacity limits it
    cfg = BusinessConfig(max_contact_share=0.2)
    choice = choose_threshold(y, p, mrr, cfg)
    t = choice.threshold
    assert (choice.rule, choice.profitable) == ("net_savings", True)
    assert (p >= t).mean() <= 0.2
    assert (p >= t - 0.01).mean() > 0.2 - 0.02  # the bound is what stops it, not the economics


def _scored_customers(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from known probabilities, and those probabilities as a calibrated model's scores."""
    rng = np.random.default_rng(seed)
    p = 1 / (1 + np.exp(-rng.normal(-2.2, 1.6, n)))
    return (rng.random(n) < p).astype(np.int64), p


def test_no_profitable_threshold_falls_back_to_best_f1_within_capacity() -> None:
    """Revenue in tens with a contact cost of 1,000: no contact pays off; the threshold must still flag churners."""
    y, p = _scored_customers(5_000, seed=4)
    tens = np.random.default_rng(5).lognormal(3.0, 1.0, y.size)  # monthly revenue around 20
    cfg = BusinessConfig()
    assert max(campaign_value(y, p, tens, t, cfg)["net_savings"] for t in np.linspace(0.01, 0.95, 95)) < 0  # the premise
    choice = choose_threshold(y, p, tens, cfg)
    assert (choice.rule, choice.profitable) == ("f1_within_capacity", False)
    assert choice.note.startswith("No threshold is profitable")
    assert "667" in choice.note  # break-even monthly revenue: 1,000 / (0.25 x 6)
    flagged = p >= choice.threshold
    assert 0.05 < flagged.mean() <= cfg.max_contact_share  # flags customers, within the team's capacity
    assert flagged[y == 1].mean() > 0.4  # and finds churners (the old rule flagged ~no one: recall 0.002)
    thresholds = [t for t in np.linspace(0.01, 0.95, 95) if (p >= t).mean() <= cfg.max_contact_share]
    best_f1 = max(2 * (y & (p >= t)).sum() / ((p >= t).sum() + y.sum()) for t in thresholds)
    assert 2 * (y & flagged).sum() / (flagged.sum() + y.sum()) == pytest.approx(best_f1)
    ev = evaluate(y, p, choice, mrr=tens, business=cfg)
    assert ev.threshold_rule["profitable"] is False and ev.threshold == choice.threshold


def test_threshold_without_revenue_is_best_f1_within_capacity() -> None:
    y, p = _scored_customers(4_000, seed=6)
    choice = choose_threshold(y, p, None, BusinessConfig(max_contact_share=0.1))
    assert (choice.rule, choice.profitable) == ("f1_within_capacity", None)
    assert (p >= choice.threshold).mean() <= 0.1


def test_search_budget_scales_with_the_table() -> None:
    small = plan_search(SearchBudget(), rows=3_500, features=20)
    assert small.families == ATTRIBUTABLE_FAMILIES  # the families the served ensemble can use
    assert (small.threads, small.n_folds, small.n_trials, small.patience, small.shallow_trees) == (1, 3, 24, 24, True)
    assert 0 < small.expected_s < 60
    assert "expected about" in small.describe() and "1 thread per model" in small.describe()
    large = plan_search(SearchBudget(), rows=38_000, features=60)
    assert large.families == FAMILIES and (large.threads, large.n_trials, large.patience, large.shallow_trees) == (2, 40, 13, False)
    assert large.expected_s > 10 * small.expected_s
    assert plan_search(SearchBudget(), rows=1_500, features=20).n_folds == 5  # few rows: more, smaller folds
    # whatever the user sets is kept
    mine = plan_search(SearchBudget(n_trials=7, n_folds=2, families=FAMILIES, patience=3), rows=3_500, features=20)
    assert (mine.n_trials, mine.n_folds, mine.families, mine.patience) == (7, 2, FAMILIES, 3)
    with pytest.raises(InvalidInputError, match="n_trials: 2 trials cannot try each of the 3 families"):
        plan_search(SearchBudget(n_trials=2), rows=3_500, features=20)


def test_search_stops_when_patience_runs_out() -> None:
    """Trials that never beat the first stop the study after the warm-up and ``patience`` more trials."""
    study = optuna.create_study(direction="maximize")
    patience = Patience(patience=4, warmup=3)
    study.optimize(lambda trial: 0.8 - trial.number * 1e-3, n_trials=50, callbacks=[patience])
    assert patience.stopped and len(study.trials) == 5  # trial 0 sets the best; trials 1-4 do not beat it
    rising = Patience(patience=4, warmup=3)
    study = optuna.create_study(direction="maximize")
    study.optimize(lambda trial: 0.5 + trial.number * 1e-2, n_trials=12, callbacks=[rising])
    assert not rising.stopped and len(study.trials) == 12


@pytest.mark.parametrize(
    ("rows", "distort", "calibrator"),
    [
        (20_000, lambda p: p**3, "IsotonicRegression"),  # any monotone distortion: isotonic
        (4_500, lambda p: 1 / (1 + np.exp(-(0.5 * np.log(p / (1 - p)) + 1.0))), "LogisticRegression"),  # logit-linear: Platt
    ],
)
def test_calibration_recovers_known_probabilities(rows: int, distort: object, calibrator: str) -> None:
    """Scores that rank right but are badly calibrated come back to the true churn probabilities."""
    assert callable(distort)
    y, p = _scored_customers(rows, seed=1)
    y_new, p_new = _scored_customers(100_000, seed=2)
    cal = fit_calibrator(distort(p), y)
    assert type(cal).__name__ == calibrator
    q = calibrate(cal, distort(p_new))
    assert expected_calibration_error(y_new, distort(p_new)) > 0.1  # the premise: uncalibrated scores
    assert expected_calibration_error(y_new, q) < 0.02
    assert np.abs(q - p_new).mean() < 0.02  # close to the truth, not only to the labels
    assert ((q > 0) & (q < 1)).all()


def test_isotonic_calibration_never_reaches_zero_or_one() -> None:
    """Plain isotonic regression maps its top bin to 1 and its bottom bin to 0; the smoothed one stays inside."""
    y, p = _scored_customers(20_000, seed=3)
    plain = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    assert plain.y_thresholds_.min() == 0 and plain.y_thresholds_.max() == 1  # the premise
    cal = fit_calibrator(p, y)
    q = calibrate(cal, np.array([0.0, 1e-12, *p, 1 - 1e-12, 1.0]))
    assert q.min() > 0 and q.max() < 1
    assert np.all(np.diff(calibrate(cal, np.sort(p))) >= 0)  # still monotone
    y_new, p_new = _scored_customers(100_000, seed=9)
    # honest: no worse than plain isotonic on new customers
    assert brier_score_loss(y_new, calibrate(cal, p_new)) <= brier_score_loss(y_new, plain.predict(p_new)) + 2e-4


def test_platt_calibration_never_reaches_zero_or_one() -> None:
    """Training scores squeezed near 0.5 give Platt a steep slope; a new row scored far out saturates its sigmoid at exactly 1."""
    rng = np.random.default_rng(0)
    raw = np.r_[rng.uniform(0.45, 0.49, 500), rng.uniform(0.51, 0.55, 500)]
    cal = fit_calibrator(raw, np.r_[np.zeros(500, dtype=np.int64), np.ones(500, dtype=np.int64)])
    q = calibrate(cal, np.array([0.0, 1e-6, 0.5, 1 - 1e-6, 1.0]))
    assert q.min() > 0 and q.max() < 1


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
