"""Compiled scoring equals the ensemble; reasons are exact TreeSHAP and add up to the margin."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import shap

from churnops.serving.explain import CompiledModel, ExplanationUnavailableError, _TreeMember, top_reasons
from churnops.training.dataset import feature_matrix
from churnops.training.ensemble import ChurnEnsemble, _logit, calibrate
from tests.support import groups
from tests.support.serving import fit_ensemble

pytestmark = groups.SERVING_MODELS


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
    model = CompiledModel(tree_stack, threads=2)
    rows = _rows(churn_table, model, 1_200)  # more than one block of the vectorised explainer
    for member in model.members[:2]:  # lightgbm, xgboost
        assert isinstance(member, _TreeMember)
        x = member.matrix(rows)
        booster = member.xgb if member.family == "xgboost" else member.lgb
        explainer = shap.TreeExplainer(booster)
        expected = np.asarray(explainer.shap_values(x))
        for vectorised in (False, True):
            _, contributions, bias = member.evaluate(x, len(model.features), contributions=True, vectorised=vectorised)
            assert contributions is not None and bias is not None
            assert contributions[:, member.columns] == pytest.approx(expected, abs=1e-6 if vectorised else 1e-5)
            assert bias == pytest.approx(np.full(len(x), float(np.ravel(explainer.expected_value)[-1])), abs=1e-6)
    assert all(isinstance(m, _TreeMember) and m.vectorised() is not None for m in model.members[:2])  # not the native fallback


def test_ensemble_contributions_equal_shap_on_the_same_model(tree_stack: ChurnEnsemble, churn_table: pd.DataFrame) -> None:
    """The whole stack (LightGBM, XGBoost, logistic regression) as batch scoring explains it, against shap on the
    same members through their own preprocessing: shap.TreeExplainer for the boosters, shap.LinearExplainer with
    a zero background for the logistic regression (its margin attributed from zero: coefficient x scaled input),
    the transformed columns summed back to their source features, combined with the stacker's weights."""
    frame = churn_table.tail(1_200).reset_index(drop=True)
    model = CompiledModel(tree_stack, threads=2)
    scored = model.explain(frame, vectorised=True)
    assert scored.contributions is not None and scored.base_value is not None
    x = feature_matrix(frame, tree_stack.feature_names, tree_stack.categorical)
    assert tree_stack.combiner.stacker is not None
    weights = tree_stack.combiner.stacker.coef_[0]
    expected = np.zeros((len(frame), len(model.features)))
    base = float(tree_stack.combiner.stacker.intercept_[0])
    for w, pipeline in zip(weights, tree_stack.members, strict=True):
        prep, estimator = pipeline.named_steps["prep"], pipeline.named_steps["model"]
        z = np.asarray(prep.transform(x), dtype=float)
        if hasattr(estimator, "coef_"):
            explainer = shap.LinearExplainer(estimator, np.zeros((1, z.shape[1])))
        else:
            explainer = shap.TreeExplainer(estimator)
        values = np.asarray(explainer.shap_values(z))
        for j, name in enumerate(prep.get_feature_names_out()):
            expected[:, model.features.index(_source(str(name), model.features))] += w * values[:, j]
        base += w * float(np.ravel(explainer.expected_value)[-1])
    assert scored.contributions == pytest.approx(expected, abs=1e-6)
    assert scored.base_value == pytest.approx(base, abs=1e-6)
    # base + sum is the ensemble's own margin: the stacker's decision function of its members' logits
    probas = np.column_stack([member.predict_proba(x)[:, 1] for member in tree_stack.members])
    margin = tree_stack.combiner.stacker.decision_function(_logit(probas))
    assert scored.base_value + scored.contributions.sum(axis=1) == pytest.approx(margin, abs=1e-5)


def _source(column: str, features: list[str]) -> str:
    """The feature a transformed column comes from: itself, its missing indicator or one of its one-hot levels."""
    return max((f for f in features if column in (f, f"missingindicator_{f}") or column.startswith(f + "_")), key=len)


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
