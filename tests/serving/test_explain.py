"""Compiled scoring equals the ensemble; reasons are exact TreeSHAP and add up to the margin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shap

from churnops.serving.explain import CompiledModel, ExplanationUnavailableError, _TreeMember, top_reasons
from churnops.training.dataset import feature_matrix
from churnops.training.ensemble import ChurnEnsemble, _logit, calibrate
from tests.support.serving import fit_ensemble


def _rows(table: pd.DataFrame, model: CompiledModel, n: int = 300) -> np.ndarray:
    part = table[model.features].tail(n)
    return part.astype(object).where(part.notna(), None).to_numpy()


@pytest.mark.parametrize("fixture", ["xgb_single", "tree_stack"])
def test_compiled_scores_equal_the_ensemble(request: pytest.FixtureRequest, churn_table: pd.DataFrame, fixture: str) -> None:
    ensemble: ChurnEnsemble = request.getfixturevalue(fixture)
    model = CompiledModel(ensemble)
    expected = ensemble.predict_proba(churn_table.tail(300))
    assert model.predict(_rows(churn_table, model)).probability == pytest.approx(expected, abs=1e-6)
    assert model.explain(_rows(churn_table, model)).probability == pytest.approx(expected, abs=1e-6)
    assert model.predict(churn_table.tail(300)).probability == pytest.approx(expected, abs=1e-6)  # DataFrame path


@pytest.mark.parametrize("fixture", ["xgb_single", "tree_stack"])
def test_reasons_and_base_value_sum_to_the_margin(request: pytest.FixtureRequest, churn_table: pd.DataFrame, fixture: str) -> None:
    model = CompiledModel(request.getfixturevalue(fixture))
    scored = model.explain(_rows(churn_table, model))
    assert scored.contributions is not None and scored.margin is not None and scored.base_value is not None
    total = scored.base_value + scored.contributions.sum(axis=1)
    assert total == pytest.approx(scored.margin, abs=1e-4)
    # the margin is the model's: its sigmoid is the members' combined score before calibration
    if model.kind == "single":
        member = request.getfixturevalue(fixture).members[0]
        raw = member.predict_proba(churn_table[model.features].tail(300))[:, 1]
        assert 1 / (1 + np.exp(-scored.margin)) == pytest.approx(raw, abs=1e-5)


@pytest.mark.parametrize("fixture", ["xgb_single", "tree_stack"])
def test_reasons_sum_to_the_ensembles_own_margin(request: pytest.FixtureRequest, churn_table: pd.DataFrame, fixture: str) -> None:
    """base + sum of contributions is the margin of the ensemble's own uncalibrated score, computed here through
    scikit-learn's member pipelines and combiner, not from the booster margins the attribution starts from."""
    ensemble: ChurnEnsemble = request.getfixturevalue(fixture)
    model = CompiledModel(ensemble)
    scored = model.explain(_rows(churn_table, model))
    assert scored.contributions is not None and scored.base_value is not None
    x = feature_matrix(churn_table.tail(300), ensemble.feature_names, ensemble.categorical)
    probas = np.column_stack([member.predict_proba(x)[:, 1] for member in ensemble.members])
    if ensemble.combiner.kind == "stack":
        assert ensemble.combiner.stacker is not None
        margin = ensemble.combiner.stacker.decision_function(_logit(probas))
    else:
        margin = _logit(ensemble.combiner.combine(probas))
    assert scored.base_value + scored.contributions.sum(axis=1) == pytest.approx(margin, abs=1e-4)
    # and the served probability is that margin's score through the calibrator
    assert scored.probability == pytest.approx(calibrate(ensemble.calibrator, 1 / (1 + np.exp(-margin))), abs=1e-5)


def test_tree_contributions_equal_shap_tree_explainer(tree_stack: ChurnEnsemble, churn_table: pd.DataFrame) -> None:
    model = CompiledModel(tree_stack)
    rows = _rows(churn_table, model, 100)
    for member in model.members[:2]:  # lightgbm, xgboost
        assert isinstance(member, _TreeMember)
        x = member.matrix(rows)
        booster = member.xgb if member.family == "xgboost" else member.lgb
        expected = np.asarray(shap.TreeExplainer(booster).shap_values(x))
        _, contributions, _ = member.evaluate(x, len(model.features), contributions=True)
        assert contributions is not None
        assert contributions[:, member.columns] == pytest.approx(expected, abs=1e-5)


def test_top_reasons_are_the_largest_absolute_contributions(xgb_single: ChurnEnsemble, churn_table: pd.DataFrame) -> None:
    model = CompiledModel(xgb_single)
    rows = _rows(churn_table, model, 5)
    scored = model.explain(rows)
    assert scored.contributions is not None
    reasons = top_reasons(model, rows[0], scored.contributions[0], 5)
    strongest = np.sort(np.abs(scored.contributions[0]))[::-1][:5]
    assert [abs(r.contribution) for r in reasons] == pytest.approx(strongest, abs=1e-6)
    names = model.features
    assert all(r.value == rows[0][names.index(r.feature)] for r in reasons)


def test_missing_values_and_unknown_categories_score(xgb_single: ChurnEnsemble) -> None:
    model = CompiledModel(xgb_single)
    rows = np.full((2, len(model.features)), None, dtype=object)
    plan = model.features.index(next(f for f in model.features if f in model.categorical))
    rows[1, plan] = "a plan nobody has"
    scored = model.explain(rows)
    assert np.isfinite(scored.probability).all()
    assert scored.probability[0] == pytest.approx(scored.probability[1])  # unknown == missing, as in training


@pytest.mark.parametrize(("families", "kind"), [(["xgboost", "lightgbm"], "blend"), (["random_forest"], "single")])
def test_models_without_exact_attribution_still_score(churn_table: pd.DataFrame, families: list[str], kind: str) -> None:
    ensemble = fit_ensemble(churn_table.tail(4000), families, kind)
    model = CompiledModel(ensemble)
    assert not model.explainable and model.unexplainable_reason
    expected = ensemble.predict_proba(churn_table.tail(50))
    assert model.predict(_rows(churn_table, model, 50)).probability == pytest.approx(expected, abs=1e-6)
    with pytest.raises(ExplanationUnavailableError):
        model.explain(_rows(churn_table, model, 5))
