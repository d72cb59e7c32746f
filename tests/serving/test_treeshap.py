"""The vectorised TreeSHAP equals the boosters' own and shap's values, through every path it takes."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import shap
import xgboost as xgb

from churnops.serving import treeshap
from churnops.serving.explain import CompiledModel, _TreeMember
from churnops.serving.treeshap import TreeShap
from churnops.training.ensemble import ChurnEnsemble
from tests.support import groups

pytestmark = groups.SERVING_MODELS


@pytest.mark.parametrize(("table_bits", "pack_nodes"), [(2, 64), (3, 300)])
def test_tables_deep_leaves_and_packs_agree_with_shap(
    monkeypatch: pytest.MonkeyPatch, tree_stack: ChurnEnsemble, churn_table: pd.DataFrame, table_bits: int, pack_nodes: int
) -> None:
    """Few table bits send most leaves to the per-row integration; small packs split the trees many ways."""
    monkeypatch.setattr(treeshap, "TABLE_BITS", table_bits)
    monkeypatch.setattr(treeshap, "PACK_NODES", pack_nodes)
    model = CompiledModel(tree_stack)
    for member in model.members[:2]:
        assert isinstance(member, _TreeMember)
        x = member.matrix_from_frame(churn_table.tail(700), model.features)
        booster = member.xgb if member.family == "xgboost" else member.lgb
        explainer = TreeShap.of(booster, "xgboost" if member.family == "xgboost" else "lightgbm", x.shape[1])
        assert any(pack.deep for pack in explainer.packs) and len(explainer.packs) > 3
        values = explainer.shap_values(x, threads=2)
        assert values == pytest.approx(np.asarray(shap.TreeExplainer(booster).shap_values(x)), abs=1e-6)


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}], ids=["nan", "zero", "none"])
def test_lightgbm_missing_types_follow_the_booster(params: dict[str, bool]) -> None:
    """LightGBM sends NaN (and zeros, for missing type "Zero") its own ways; the values are its own pred_contrib."""
    rng = np.random.default_rng(3)
    x = rng.normal(size=(3_000, 6))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.2] = 0.0
    y = (np.nan_to_num(x[:, 0]) + np.isnan(x[:, 1]) + (x[:, 2] == 0) + rng.normal(size=len(x)) > 0.5).astype(int)
    booster = lgb.train({"objective": "binary", "num_leaves": 15, "verbose": -1, **params}, lgb.Dataset(x, y), num_boost_round=30)
    explainer = TreeShap.of(booster, "lightgbm", x.shape[1])
    native = np.asarray(booster.predict(x, pred_contrib=True))
    assert explainer.shap_values(x) == pytest.approx(native[:, :-1], abs=1e-9)
    assert explainer.base_value == pytest.approx(native[0, -1], abs=1e-9)


def test_xgboost_splits_in_float32() -> None:
    """XGBoost compares float32 inputs with its float32 thresholds: float64 values next to a threshold go its way."""
    rng = np.random.default_rng(4)
    x = rng.normal(size=(2_000, 4))
    x[rng.random(x.shape) < 0.1] = np.nan
    y = (np.nan_to_num(x[:, 0]) + rng.normal(size=len(x)) > 0).astype(int)
    booster = xgb.train({"objective": "binary:logistic", "max_depth": 4}, xgb.DMatrix(x, y), num_boost_round=20)
    explainer = TreeShap.of(booster, "xgboost", x.shape[1])
    trees, _ = treeshap.xgboost_trees(booster)
    edge = np.concatenate([t.threshold[(t.left >= 0) & (t.feature == 0)] for t in trees])
    probe = x[: len(edge)].copy()
    probe[:, 0] = np.nextafter(edge, -np.inf)  # float64 just below a float32 threshold: float32 rounds it onto it
    native = booster.predict(xgb.DMatrix(probe), pred_contribs=True)
    assert explainer.shap_values(probe) == pytest.approx(native[:, :-1], abs=1e-6)
    assert explainer.base_value + explainer.shap_values(probe).sum(axis=1) == pytest.approx(
        booster.predict(xgb.DMatrix(probe), output_margin=True), abs=1e-5
    )
