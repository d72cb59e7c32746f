"""AutoML: an Optuna (TPE + median pruning) search over up to six model families.

One study searches a conditional space (family, then that family's
hyper-parameters). Every family is tried once with sensible defaults first
(enqueued trials), so none is starved by an early leader. A trial is scored by
ROC-AUC over grouped stratified folds and reports after each fold, so poor
trials are pruned early; the study stops early once the best score has not
moved for the plan's ``patience`` trials. Out-of-fold predictions of each
family's best trial feed the ensemble step. What the search spends (trials,
folds, families, threads) comes from a ``SearchPlan`` scaled to the table.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.base import ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler
from sklearn.svm import LinearSVC
from xgboost import XGBClassifier

from churnops.errors import CheckFailedError, InvalidInputError
from churnops.training.config import MAX_THREADS, TREE_FAMILIES, SearchPlan
from churnops.training.dataset import DatasetSpec

log = logging.getLogger(__name__)

MIN_GAIN = 0.0005  # a rise in the best CV AUC smaller than this is noise at these sample sizes


@dataclass
class Candidate:
    """The best trial of one family."""

    family: str
    params: dict[str, Any]
    cv_auc: float
    oof: np.ndarray  # out-of-fold probabilities, aligned with the training rows
    trial_number: int


@dataclass
class SearchResult:
    candidates: dict[str, Candidate]
    trials_completed: int
    trials_pruned: int
    trials_failed: int
    seconds: float
    history: list[dict[str, Any]] = field(default_factory=list)
    stopped_early: bool = False  # the study ran out of patience before the trial budget

    def ranked(self) -> list[Candidate]:
        return sorted(self.candidates.values(), key=lambda c: c.cv_auc, reverse=True)


def preprocessor(spec: DatasetSpec, family: str) -> ColumnTransformer:
    """Trees take raw numbers (NaN kept) and ordinal categories; the others imputed, scaled, one-hot."""
    num, cat = list(spec.numeric), list(spec.categorical)
    if family in TREE_FAMILIES:
        cats = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
        return ColumnTransformer([("num", "passthrough", num), ("cat", cats, cat)], verbose_feature_names_out=False)
    numeric = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True), StandardScaler())
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    )
    return ColumnTransformer([("num", numeric, num), ("cat", categorical, cat)], verbose_feature_names_out=False)


def default_params(family: str, shallow: bool = False) -> dict[str, Any]:
    """The first trial of each family; ``shallow`` trees for small tables (see SHALLOW_TREE_ROWS)."""
    if shallow and family == "lightgbm":
        return {
            "n_estimators": 200,
            "learning_rate": 0.03,
            "num_leaves": 7,
            "min_child_samples": 40,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        }
    if shallow and family == "xgboost":
        return {
            "n_estimators": 300,
            "learning_rate": 0.03,
            "max_depth": 3,
            "min_child_weight": 10.0,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        }
    return {
        "lightgbm": {
            "n_estimators": 300,
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_child_samples": 40,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        },
        "xgboost": {
            "n_estimators": 300,
            "learning_rate": 0.05,
            "max_depth": 5,
            "min_child_weight": 5.0,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        },
        "random_forest": {"n_estimators": 200, "max_depth": 14, "min_samples_leaf": 10, "max_features": 0.3},
        "logistic_regression": {"C": 0.1},
        "svm": {"C": 0.05},
        "mlp": {"hidden": 64, "alpha": 1e-3, "learning_rate_init": 1e-3},
    }[family]


def suggest_params(trial: optuna.trial.BaseTrial, family: str) -> dict[str, Any]:
    if family == "lightgbm":
        return {
            "n_estimators": trial.suggest_int("lgb_n_estimators", 100, 600, step=50),
            "learning_rate": trial.suggest_float("lgb_learning_rate", 0.01, 0.2, log=True),
            "num_leaves": trial.suggest_int("lgb_num_leaves", 4, 128, log=True),
            "min_child_samples": trial.suggest_int("lgb_min_child_samples", 10, 200, log=True),
            "colsample_bytree": trial.suggest_float("lgb_colsample_bytree", 0.2, 1.0),
            "reg_lambda": trial.suggest_float("lgb_reg_lambda", 1e-3, 10.0, log=True),
        }
    if family == "xgboost":
        return {
            "n_estimators": trial.suggest_int("xgb_n_estimators", 100, 600, step=50),
            "learning_rate": trial.suggest_float("xgb_learning_rate", 0.01, 0.2, log=True),
            "max_depth": trial.suggest_int("xgb_max_depth", 2, 8),
            "min_child_weight": trial.suggest_float("xgb_min_child_weight", 1.0, 50.0, log=True),
            "colsample_bytree": trial.suggest_float("xgb_colsample_bytree", 0.2, 1.0),
            "reg_lambda": trial.suggest_float("xgb_reg_lambda", 1e-3, 10.0, log=True),
        }
    if family == "random_forest":
        return {
            "n_estimators": trial.suggest_int("rf_n_estimators", 100, 400, step=50),
            "max_depth": trial.suggest_int("rf_max_depth", 4, 20),
            "min_samples_leaf": trial.suggest_int("rf_min_samples_leaf", 1, 50, log=True),
            "max_features": trial.suggest_float("rf_max_features", 0.05, 0.6),
        }
    if family == "logistic_regression":
        return {"C": trial.suggest_float("lr_C", 1e-3, 10.0, log=True)}
    if family == "svm":
        return {"C": trial.suggest_float("svm_C", 1e-3, 1.0, log=True)}
    if family == "mlp":
        return {
            "hidden": trial.suggest_categorical("mlp_hidden", [32, 64, 128]),
            "alpha": trial.suggest_float("mlp_alpha", 1e-5, 1e-1, log=True),
            "learning_rate_init": trial.suggest_float("mlp_learning_rate_init", 1e-4, 1e-2, log=True),
        }
    raise InvalidInputError(f"unknown family {family!r}")


def estimator(family: str, params: dict[str, Any], seed: int, threads: int = MAX_THREADS) -> ClassifierMixin:
    """The classifier of a family. Linear models weight classes (imbalance); the ensemble is recalibrated after."""
    if family == "lightgbm":
        return LGBMClassifier(
            **params,
            subsample=0.8,
            subsample_freq=1,
            random_state=seed,
            n_jobs=threads,
            verbose=-1,
            deterministic=True,
            force_row_wise=True,
        )
    if family == "xgboost":
        return XGBClassifier(**params, subsample=0.8, tree_method="hist", random_state=seed, n_jobs=threads, eval_metric="logloss")
    if family == "random_forest":
        return RandomForestClassifier(**params, class_weight="balanced_subsample", max_samples=0.7, random_state=seed, n_jobs=threads)
    if family == "logistic_regression":
        return LogisticRegression(C=params["C"], class_weight="balanced", max_iter=2000)
    if family == "svm":
        # A linear SVM scales to 10^5 rows; Platt scaling on internal folds turns margins into probabilities.
        return CalibratedClassifierCV(LinearSVC(C=params["C"], class_weight="balanced", dual=False), method="sigmoid", cv=3)
    if family == "mlp":
        return MLPClassifier(
            hidden_layer_sizes=(params["hidden"], params["hidden"] // 2),
            alpha=params["alpha"],
            learning_rate_init=params["learning_rate_init"],
            early_stopping=True,
            max_iter=200,
            random_state=seed,
        )
    raise InvalidInputError(f"unknown family {family!r}")


def build_pipeline(spec: DatasetSpec, family: str, params: dict[str, Any], seed: int, threads: int = MAX_THREADS) -> Pipeline:
    return Pipeline([("prep", preprocessor(spec, family)), ("model", estimator(family, params, seed, threads))])


def positive_proba(model: Any, x: pd.DataFrame) -> np.ndarray:
    return np.asarray(model.predict_proba(x)[:, 1], dtype=float)


def cross_val_oof(
    pipeline: Pipeline,
    x: pd.DataFrame,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    on_fold: Callable[[int, float], None] | None = None,
) -> tuple[np.ndarray, float]:
    """Out-of-fold probabilities and their mean fold AUC; ``on_fold`` may raise to stop early."""
    oof = np.full(len(y), np.nan)
    aucs = []
    for i, (tr, va) in enumerate(folds):
        model = clone(pipeline).fit(x.iloc[tr], y[tr])
        oof[va] = positive_proba(model, x.iloc[va])
        aucs.append(roc_auc_score(y[va], oof[va]))
        if on_fold is not None:
            on_fold(i, float(np.mean(aucs)))
    return oof, float(np.mean(aucs))


class Patience:
    """Stops a study once ``patience`` trials in a row have not raised the best CV AUC by ``MIN_GAIN``.

    The enqueued default trials (``warmup``) always run, so every family is tried.
    """

    def __init__(self, patience: int, warmup: int) -> None:
        self.patience, self.warmup = patience, warmup
        self.best = -np.inf
        self.without_gain = 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        value = trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None
        if value is not None and value >= self.best + MIN_GAIN:
            self.best, self.without_gain = value, 0
        else:
            self.without_gain += 1
        if trial.number + 1 >= self.warmup and self.without_gain >= self.patience:
            self.stopped = True
            study.stop()


def search(
    x: pd.DataFrame,
    y: np.ndarray,
    spec: DatasetSpec,
    folds: list[tuple[np.ndarray, np.ndarray]],
    plan: SearchPlan,
    seed: int,
    progress: Callable[[int, float], None] | None = None,
) -> SearchResult:
    """Run the study; returns the best candidate of each family that completed a trial."""
    families = plan.families
    with warnings.catch_warnings():  # grouped multivariate TPE is "experimental" but fits a conditional space
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=len(families))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=len(families), n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for family in families:
        defaults = default_params(family, plan.shallow_trees)
        study.enqueue_trial({"family": family, **{_param_key(family, k): v for k, v in defaults.items()}})
    oofs: dict[int, np.ndarray] = {}

    def objective(trial: optuna.Trial) -> float:
        family = trial.suggest_categorical("family", list(families))
        params = suggest_params(trial, family)
        trial.set_user_attr("params", params)

        def on_fold(step: int, auc: float) -> None:
            trial.report(auc, step)
            if trial.should_prune():
                raise optuna.TrialPruned()

        oof, auc = cross_val_oof(build_pipeline(spec, family, params, seed, plan.threads), x, y, folds, on_fold)
        oofs[trial.number] = oof
        return auc

    started = time.perf_counter()

    def report(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if progress is not None:
            progress(trial.number, study.best_value if study.best_trials else float("nan"))

    patience = Patience(plan.patience, warmup=len(families))
    study.optimize(
        objective, n_trials=plan.n_trials, timeout=plan.timeout_s, callbacks=[report, patience], catch=(ValueError, np.linalg.LinAlgError)
    )
    seconds = time.perf_counter() - started
    candidates: dict[str, Candidate] = {}
    history = []
    for t in study.trials:
        family = str(t.params.get("family"))
        history.append({"number": t.number, "family": family, "state": t.state.name, "value": t.value})
        if t.state != optuna.trial.TrialState.COMPLETE or t.value is None:
            continue
        best = candidates.get(family)
        if best is None or t.value > best.cv_auc:
            candidates[family] = Candidate(family, t.user_attrs["params"], float(t.value), oofs[t.number], t.number)
    if not candidates:
        raise CheckFailedError("no AutoML trial completed; raise the time budget")
    states = [t.state for t in study.trials]
    return SearchResult(
        candidates=candidates,
        trials_completed=states.count(optuna.trial.TrialState.COMPLETE),
        trials_pruned=states.count(optuna.trial.TrialState.PRUNED),
        trials_failed=states.count(optuna.trial.TrialState.FAIL),
        seconds=seconds,
        history=history,
        stopped_early=patience.stopped,
    )


_PREFIX = {"lightgbm": "lgb", "xgboost": "xgb", "random_forest": "rf", "logistic_regression": "lr", "svm": "svm", "mlp": "mlp"}


def _param_key(family: str, name: str) -> str:
    return f"{_PREFIX[family]}_{name}"
