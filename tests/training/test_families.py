"""The model family table: a family is one entry, and the search the table drives is the one before it.

The pinned trials, classifiers and plans below were computed with the code the table replaced (string
switches on the family name in automl.py and config.py): a seed must keep giving the same trials.
"""

from __future__ import annotations

import math
import subprocess
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np
import optuna
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.metrics import roc_auc_score

from churnops.errors import InvalidInputError
from churnops.training import automl, families
from churnops.training.config import (
    ATTRIBUTABLE_FAMILIES,
    FAMILIES,
    FIT_COST_S,
    TREE_FAMILIES,
    SearchBudget,
    SearchPlan,
    fit_seconds,
    plan_search,
)
from churnops.training.dataset import DatasetSpec, cv_folds
from churnops.training.families import FAMILY_TABLE, Family, Float, Int, family_of

# The trials after each family's enqueued defaults, for a fixed seed and the objective ``_score``.
PINNED_TRIALS_ALL_SEED_7 = [
    ("random_forest", {"n_estimators": 150, "max_depth": 19, "min_samples_leaf": 19, "max_features": 0.27888480144941385}),
    ("random_forest", {"n_estimators": 300, "max_depth": 10, "min_samples_leaf": 6, "max_features": 0.2155727427089011}),
    ("random_forest", {"n_estimators": 150, "max_depth": 16, "min_samples_leaf": 1, "max_features": 0.5621803294436728}),
    ("logistic_regression", {"C": 9.21649322290772}),
    ("logistic_regression", {"C": 4.3662478911738205}),
    ("logistic_regression", {"C": 0.0022303716301673823}),
    ("mlp", {"hidden": 128, "alpha": 1.3275454674991788e-05, "learning_rate_init": 0.00021305737544095413}),
    ("svm", {"C": 0.0027558257490547986}),
]
PINNED_TRIALS_ATTRIBUTABLE_SHALLOW_SEED_3 = [
    (
        "lightgbm",
        {
            "n_estimators": 200,
            "learning_rate": 0.038619733943035583,
            "num_leaves": 10,
            "min_child_samples": 17,
            "colsample_bytree": 0.7272830918566866,
            "reg_lambda": 0.15482754708089272,
        },
    ),
    (
        "lightgbm",
        {
            "n_estimators": 300,
            "learning_rate": 0.022578660065764075,
            "num_leaves": 8,
            "min_child_samples": 68,
            "colsample_bytree": 0.3904712331062591,
            "reg_lambda": 1.518751197120365,
        },
    ),
    (
        "lightgbm",
        {
            "n_estimators": 300,
            "learning_rate": 0.08845111682718697,
            "num_leaves": 106,
            "min_child_samples": 77,
            "colsample_bytree": 0.3393558840315773,
            "reg_lambda": 1.0322568003283066,
        },
    ),
    (
        "xgboost",
        {
            "n_estimators": 250,
            "learning_rate": 0.19528837469728982,
            "max_depth": 5,
            "min_child_weight": 13.328992560170724,
            "colsample_bytree": 0.8332199997535473,
            "reg_lambda": 0.0033598208698478104,
        },
    ),
    (
        "xgboost",
        {
            "n_estimators": 250,
            "learning_rate": 0.08342131510851344,
            "max_depth": 5,
            "min_child_weight": 6.282435805993941,
            "colsample_bytree": 0.7611576678353892,
            "reg_lambda": 0.0012070211309980624,
        },
    ),
]
_TREES = {"subsample": 0.8, "n_jobs": 2, "random_state": 5}
_LGB = {**_TREES, "subsample_freq": 1, "verbose": -1, "deterministic": True, "force_row_wise": True, "colsample_bytree": 0.5}
_XGB = {**_TREES, "tree_method": "hist", "eval_metric": "logloss", "colsample_bytree": 0.5, "n_estimators": 300, "reg_lambda": 1.0}
_RF = {"class_weight": "balanced_subsample", "max_depth": 14, "max_features": 0.3, "max_samples": 0.7, "min_samples_leaf": 10}
_SVM = {"cv": 3, "estimator": "LinearSVC", "estimator__C": 0.05}  # Platt ("sigmoid") is the calibrator's default
# The classifier each family's first trial builds (seed 5, two threads): class and the settings that differ from its class's defaults.
PINNED_FIRST_CLASSIFIERS: dict[tuple[str, bool], tuple[str, dict[str, Any]]] = {
    ("lightgbm", False): (
        "LGBMClassifier",
        {**_LGB, "learning_rate": 0.05, "min_child_samples": 40, "n_estimators": 300, "reg_lambda": 1.0},
    ),
    ("lightgbm", True): (
        "LGBMClassifier",
        {**_LGB, "learning_rate": 0.03, "min_child_samples": 40, "n_estimators": 200, "num_leaves": 7, "reg_lambda": 1.0},
    ),
    ("xgboost", False): ("XGBClassifier", {**_XGB, "learning_rate": 0.05, "max_depth": 5, "min_child_weight": 5.0}),
    ("xgboost", True): ("XGBClassifier", {**_XGB, "learning_rate": 0.03, "max_depth": 3, "min_child_weight": 10.0}),
    ("random_forest", False): ("RandomForestClassifier", {**_RF, "n_estimators": 200, "n_jobs": 2, "random_state": 5}),
    ("random_forest", True): ("RandomForestClassifier", {**_RF, "n_estimators": 200, "n_jobs": 2, "random_state": 5}),
    ("logistic_regression", False): ("LogisticRegression", {"C": 0.1, "class_weight": "balanced", "max_iter": 2000}),
    ("logistic_regression", True): ("LogisticRegression", {"C": 0.1, "class_weight": "balanced", "max_iter": 2000}),
    ("svm", False): ("CalibratedClassifierCV", {**_SVM, "estimator__class_weight": "balanced", "estimator__dual": False}),
    ("svm", True): ("CalibratedClassifierCV", {**_SVM, "estimator__class_weight": "balanced", "estimator__dual": False}),
    ("mlp", False): ("MLPClassifier", {"alpha": 0.001, "early_stopping": True, "hidden_layer_sizes": (64, 32), "random_state": 5}),
    ("mlp", True): ("MLPClassifier", {"alpha": 0.001, "early_stopping": True, "hidden_layer_sizes": (64, 32), "random_state": 5}),
}
PINNED_PLANS = [
    (
        (SearchBudget(), 3_500, 20),
        "AutoML plan for 3,500 training rows x 20 features: 24 trials over lightgbm, xgboost, logistic_regression, 3-fold CV, "
        "no early stop, 1 thread per model; expected about 14 s, capped at 10 min",
        13.924602799999999,
    ),
    (
        (SearchBudget(), 38_000, 63),
        "AutoML plan for 38,000 training rows x 63 features: 40 trials over lightgbm, xgboost, random_forest, logistic_regression, "
        "svm, mlp, 3-fold CV, stop after 13 trials without gain, 2 threads per model; expected about 10 min, capped at 10 min",
        600.5924900288891,
    ),
    (
        (SearchBudget(timeout_s=None), 50_000, 116),
        "AutoML plan for 50,000 training rows x 116 features: 40 trials over lightgbm, xgboost, random_forest, logistic_regression, "
        "svm, mlp, 3-fold CV, stop after 13 trials without gain, 2 threads per model; expected about 24 min",
        1425.226723368889,
    ),
    (
        (SearchBudget(n_trials=7, families=FAMILIES), 1_500, 10),
        "AutoML plan for 1,500 training rows x 10 features: 7 trials over lightgbm, xgboost, random_forest, logistic_regression, "
        "svm, mlp, 5-fold CV, no early stop, 1 thread per model; expected about 15 s, capped at 10 min",
        15.120173333333334,
    ),
]
SPEC = DatasetSpec("customer_id", "ts", "churned", numeric=("usage", "tickets"), categorical=("plan",))


def _score(params: Mapping[str, Any]) -> float:
    """A fixed objective of the parameters alone, so the sampler's path depends on the seed and the space only."""
    return 0.5 + sum(math.log1p(abs(float(v))) for v in params.values()) % 0.4


def _first_trials(names: tuple[str, ...], seed: int, shallow: bool, n: int) -> list[tuple[str, dict[str, Any]]]:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = automl.new_study(names, seed, shallow)
    out = []
    for _ in range(n):
        trial = study.ask()
        family, params = automl.suggest_trial(trial, names)
        study.tell(trial, _score(params))
        out.append((family, params))
    return out


def _changed_settings(model: ClassifierMixin) -> tuple[str, dict[str, Any]]:
    """Class name and the parameters that differ from a fresh instance (nested estimators by class name)."""
    nested = {k: type(v)() for k, v in model.get_params(deep=False).items() if isinstance(v, BaseEstimator)}
    fresh = {k: repr(v.__class__.__name__ if isinstance(v, BaseEstimator) else v) for k, v in type(model)(**nested).get_params().items()}
    out = {}
    for key, value in model.get_params().items():
        shown = type(value).__name__ if isinstance(value, BaseEstimator) else value
        if key in nested or fresh.get(key) != repr(shown):
            out[key] = shown
    return type(model).__name__, out


def _tiny_table(rows: int = 240, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    usage = rng.normal(size=rows)
    plan = rng.choice(["basic", "pro", "team"], size=rows)
    tickets = rng.poisson(2, size=rows).astype(float)
    tickets[rng.random(rows) < 0.1] = np.nan  # trees keep NaN, the others impute it
    margin = -1.5 * usage + 0.8 * (plan == "basic") - 0.5
    return pd.DataFrame(
        {
            "customer_id": np.arange(rows),
            "ts": pd.Timestamp("2024-01-01"),
            "usage": usage,
            "tickets": tickets,
            "plan": plan,
            "churned": (rng.random(rows) < 1 / (1 + np.exp(-margin))).astype(int),
        }
    )


def _same_trials(got: list[tuple[str, dict[str, Any]]], pinned: list[tuple[str, dict[str, Any]]]) -> bool:
    """Same families and parameters; floats may differ in the last bits (log-uniform draws go through the platform's libm)."""
    return len(got) == len(pinned) and all(
        family == want_family and params == pytest.approx(want_params, rel=1e-12)
        for (family, params), (want_family, want_params) in zip(got, pinned, strict=True)
    )


def test_a_seed_gives_the_trials_it_gave_before_the_table() -> None:
    every = _first_trials(FAMILIES, seed=7, shallow=False, n=14)
    assert every[:6] == [(f, automl.default_params(f)) for f in FAMILIES]  # the defaults first, in the table's order
    assert _same_trials(every[6:], PINNED_TRIALS_ALL_SEED_7), every[6:]
    small = _first_trials(ATTRIBUTABLE_FAMILIES, seed=3, shallow=True, n=8)
    assert small[:3] == [(f, automl.default_params(f, shallow=True)) for f in ATTRIBUTABLE_FAMILIES]
    assert _same_trials(small[3:], PINNED_TRIALS_ATTRIBUTABLE_SHALLOW_SEED_3), small[3:]


def test_each_first_trial_builds_the_classifier_it_built_before_the_table() -> None:
    for (name, shallow), pinned in PINNED_FIRST_CLASSIFIERS.items():
        built = automl.estimator(name, automl.default_params(name, shallow), seed=5, threads=2)
        assert _changed_settings(built) == pinned, (name, shallow)


def test_search_plans_read_as_they_did_before_the_table() -> None:
    for (budget, rows, features), text, seconds in PINNED_PLANS:
        plan = plan_search(budget, rows, features)
        assert plan.describe() == text
        assert plan.expected_s == pytest.approx(seconds, rel=1e-12)


def test_config_constants_are_the_tables() -> None:
    assert FAMILIES == ("lightgbm", "xgboost", "random_forest", "logistic_regression", "svm", "mlp") == tuple(families.FAMILY_BY_NAME)
    assert TREE_FAMILIES == tuple(f.name for f in FAMILY_TABLE if f.tree) == ("lightgbm", "xgboost", "random_forest")
    assert ATTRIBUTABLE_FAMILIES == ("lightgbm", "xgboost", "logistic_regression")
    assert FIT_COST_S == {
        "lightgbm": (0.25, 1.6),
        "xgboost": (0.15, 1.5),
        "random_forest": (1.0, 24.0),
        "logistic_regression": (0.25, 1.8),
        "svm": (0.2, 1.7),
        "mlp": (0.3, 8.0),
    }
    assert len({f.prefix for f in FAMILY_TABLE}) == len(FAMILY_TABLE)  # parameter names never collide in the shared study
    assert SearchBudget(families=FAMILIES).families == FAMILIES


@pytest.mark.parametrize("entry", FAMILY_TABLE, ids=lambda f: f.name)
def test_every_family_in_the_table_builds_fits_and_scores(entry: Family) -> None:
    """What a new entry must do to join the search: its first trials and a point of its space fit the table."""
    table = _tiny_table()
    x, y = table[list(SPEC.features)], table["churned"].to_numpy()
    random_point = automl.suggest_params(optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1)).ask(), entry.name)
    assert all(entry.space[k].contains(v) for k, v in random_point.items())
    for params in (entry.first_trial(shallow=False), entry.first_trial(shallow=True), random_point):
        model = automl.build_pipeline(SPEC, entry.name, params, seed=0, threads=1).fit(x, y)
        proba = automl.positive_proba(model, x)
        assert proba.shape == (len(table),) and ((proba >= 0) & (proba <= 1)).all()
        if params != random_point:  # a random point may learn nothing on 240 rows (an MLP at a tiny learning rate)
            assert roc_auc_score(y, proba) > 0.7, (entry.name, params)
    assert fit_seconds(entry.name, 10_000, 50, threads=2) > 0


def test_a_new_family_is_one_table_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry the code has never seen is searched, suggested, built and costed with nothing else changed."""

    def extra_trees(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
        from sklearn.ensemble import ExtraTreesClassifier  # noqa: PLC0415 - as a table entry's builder would

        return ExtraTreesClassifier(**params, random_state=seed, n_jobs=threads)

    entry = Family(
        name="extra_trees",
        prefix="et",
        tree=True,
        threaded=True,
        attribution=None,
        fit_cost_s=(0.8, 15.0),
        defaults={"n_estimators": 60, "min_samples_leaf": 5},
        space={"n_estimators": Int(40, 100, step=20), "min_samples_leaf": Int(1, 20, log=True)},
        build=extra_trees,
    )
    monkeypatch.setitem(families.FAMILY_BY_NAME, entry.name, entry)
    table = _tiny_table(rows=300)
    x, y = table[list(SPEC.features)], table["churned"].to_numpy()
    names = ("extra_trees", "logistic_regression")
    plan = SearchPlan(
        300, 3, n_trials=4, timeout_s=None, n_folds=2, families=names, patience=4, threads=1, shallow_trees=True, expected_s=0
    )
    result = automl.search(x, y, SPEC, cv_folds(table, SPEC, 2, seed=0), plan, seed=0)
    assert set(result.candidates) == set(names)
    assert all(entry.space[k].contains(v) for k, v in result.candidates["extra_trees"].params.items())
    assert result.candidates["extra_trees"].cv_auc > 0.6
    assert fit_seconds("extra_trees", 10_000, 50, threads=2) == pytest.approx((0.8 + 15.0 * 0.5) / 1.5)


def test_an_inconsistent_entry_or_an_unknown_family_is_refused() -> None:
    lr = family_of("logistic_regression")
    with pytest.raises(InvalidInputError, match="differ from its search space") as missing:
        Family("lr2", "lr2", False, False, "linear", (0.1, 1.0), defaults={}, space=lr.space, build=lr.build)
    assert missing.value.field == "defaults"
    with pytest.raises(InvalidInputError, match=r"\['C'\] lie outside its search space") as outside:
        Family("lr2", "lr2", False, False, "linear", (0.1, 1.0), defaults={"C": 0.1}, space={"C": Float(1.0, 2.0)}, build=lr.build)
    assert outside.value.field == "defaults"
    with pytest.raises(InvalidInputError, match="unknown model family 'catboost'") as unknown:
        automl.estimator("catboost", {}, seed=0)
    assert unknown.value.field == "family"
    assert families.attribution("catboost") is None  # served without reasons, as a family without an exact path


def test_the_training_config_loads_no_ml_library() -> None:
    """The CLI, the KFP pipeline and the rollout runner import config, and through it the table, cheaply."""
    code = (
        "import sys, churnops.training.config\n"
        "heavy = {'numpy', 'pandas', 'sklearn', 'scipy', 'lightgbm', 'xgboost', 'optuna'}\n"
        "print(','.join(sorted({m.split('.')[0] for m in sys.modules} & heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
