"""AutoML: an Optuna (TPE + median pruning) search over the model families of ``families.FAMILY_TABLE``.

One study searches a conditional space (family, then that family's
hyper-parameters, as its table entry declares them). Every family is tried once with sensible defaults first
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
from sklearn.base import ClassifierMixin, clone
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder, StandardScaler

from churnops.errors import CheckFailedError
from churnops.training.config import MAX_THREADS, SearchPlan
from churnops.training.dataset import DatasetSpec
from churnops.training.families import Float, Int, Param, family_of

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
    if family_of(family).tree:
        cats = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1, encoded_missing_value=-1)
        return ColumnTransformer([("num", "passthrough", num), ("cat", cats, cat)], verbose_feature_names_out=False)
    numeric = make_pipeline(SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True), StandardScaler())
    categorical = make_pipeline(
        SimpleImputer(strategy="constant", fill_value="missing"), OneHotEncoder(handle_unknown="ignore", sparse_output=False)
    )
    return ColumnTransformer([("num", numeric, num), ("cat", categorical, cat)], verbose_feature_names_out=False)


def default_params(family: str, shallow: bool = False) -> dict[str, Any]:
    """The first trial of each family; ``shallow`` trees for small tables (see SHALLOW_TREE_ROWS)."""
    return family_of(family).first_trial(shallow)


def suggest(trial: optuna.trial.BaseTrial, key: str, param: Param) -> Any:
    """One parameter from the study, under its family-prefixed ``key``."""
    if isinstance(param, Int):
        return trial.suggest_int(key, param.low, param.high, step=param.step, log=param.log)
    if isinstance(param, Float):
        return trial.suggest_float(key, param.low, param.high, log=param.log)
    return trial.suggest_categorical(key, list(param.options))


def suggest_params(trial: optuna.trial.BaseTrial, family: str) -> dict[str, Any]:
    """A point of the family's search space, its parameters named as the family's builder takes them."""
    entry = family_of(family)
    return {name: suggest(trial, entry.key(name), param) for name, param in entry.space.items()}


def estimator(family: str, params: dict[str, Any], seed: int, threads: int = MAX_THREADS) -> ClassifierMixin:
    """The classifier of a family, built by its table entry."""
    return family_of(family).build(params, seed, threads)


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


def new_study(families: tuple[str, ...], seed: int, shallow_trees: bool) -> optuna.Study:
    """A study over the families' conditional space, each family's first trial (its defaults) enqueued."""
    with warnings.catch_warnings():  # grouped multivariate TPE is "experimental" but fits a conditional space
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, n_startup_trials=len(families))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=len(families), n_warmup_steps=0)
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    for entry in map(family_of, families):
        study.enqueue_trial({"family": entry.name, **{entry.key(k): v for k, v in entry.first_trial(shallow_trees).items()}})
    return study


def suggest_trial(trial: optuna.trial.BaseTrial, families: tuple[str, ...]) -> tuple[str, dict[str, Any]]:
    """The family, then that family's parameters: the conditional space a trial samples."""
    family = str(trial.suggest_categorical("family", list(families)))
    return family, suggest_params(trial, family)


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
    study = new_study(families, seed, plan.shallow_trees)
    oofs: dict[int, np.ndarray] = {}

    def objective(trial: optuna.Trial) -> float:
        family, params = suggest_trial(trial, families)
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
