"""The model families AutoML searches: one table entry per family is where a family is added.

An entry says everything the rest of the code asks about a family: the prefix of
its parameters in the shared Optuna study, how its inputs are prepared, whether
the server can attribute its margin exactly, what a fit costs, its first
(default) trial, its search space and how its classifier is built. The search
(``automl``), the plan (``config``), the ensemble and the explainer read the
table; none of them names a family.

This module imports no ML library at import time (``config`` derives its
constants from it, and the CLI, the KFP pipeline and the rollout runner import
``config`` cheaply): the builders import their library when called.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from churnops.errors import InvalidInputError

if TYPE_CHECKING:
    from sklearn.base import ClassifierMixin

# How the server attributes a member's margin exactly: native TreeSHAP, or coefficients times inputs.
Attribution = Literal["tree", "linear"]
Builder = Callable[[Mapping[str, Any], int, int], "ClassifierMixin"]  # (parameters, seed, threads) -> classifier


@dataclass(frozen=True)
class Int:
    """An integer parameter; ``log`` samples its order of magnitude uniformly."""

    low: int
    high: int
    step: int = 1
    log: bool = False

    def contains(self, value: Any) -> bool:
        return isinstance(value, int) and self.low <= value <= self.high and (value - self.low) % self.step == 0


@dataclass(frozen=True)
class Float:
    low: float
    high: float
    log: bool = False

    def contains(self, value: Any) -> bool:
        return isinstance(value, int | float) and self.low <= value <= self.high


@dataclass(frozen=True)
class Choice:
    options: tuple[Any, ...]

    def contains(self, value: Any) -> bool:
        return value in self.options


Param = Int | Float | Choice


@dataclass(frozen=True)
class Family:
    """One model family. Its parameters, defaults and search space use the builder's own names."""

    name: str
    prefix: str  # the family's parameters are "<prefix>_<name>" in the study, whose space all families share
    tree: bool  # fitted on raw numbers (NaN kept) and ordinal categories; otherwise imputed, scaled, one-hot
    threaded: bool  # a second thread speeds its fit up (see config.THREAD_SPEEDUP)
    attribution: Attribution | None  # None: served without exact reasons
    # CPU seconds of one fit with the default parameters and one thread: (fixed, per million cells).
    # Measured on the reference machine (2 cores, Python 3.11) from 2,300 x 23 to 38,000 x 63; the
    # parameters the search suggests cost about the same on average.
    fit_cost_s: tuple[float, float]
    defaults: Mapping[str, Any]  # the first trial, enqueued so that no family is starved by an early leader
    space: Mapping[str, Param]  # what the search may suggest for each parameter
    build: Builder
    # the first trial on tables below config.SHALLOW_TREE_ROWS; None: ``defaults``
    shallow_defaults: Mapping[str, Any] | None = None

    def __post_init__(self) -> None:
        for label, params in (("defaults", self.defaults), ("shallow_defaults", self.shallow_defaults or self.defaults)):
            if set(params) != set(self.space):
                raise InvalidInputError(
                    f"family {self.name!r}: {label} {sorted(params)} differ from its search space {sorted(self.space)}", field=label
                )
            outside = sorted(k for k, v in params.items() if not self.space[k].contains(v))
            if outside:
                raise InvalidInputError(f"family {self.name!r}: {label} {outside} lie outside its search space", field=label)

    def first_trial(self, shallow: bool) -> dict[str, Any]:
        return dict(self.shallow_defaults if shallow and self.shallow_defaults is not None else self.defaults)

    def key(self, param: str) -> str:
        """The parameter's name in the study."""
        return f"{self.prefix}_{param}"


def _lightgbm(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
    from lightgbm import LGBMClassifier  # noqa: PLC0415 - config imports this table; the library loads when a model is built

    return LGBMClassifier(
        **params, subsample=0.8, subsample_freq=1, random_state=seed, n_jobs=threads, verbose=-1, deterministic=True, force_row_wise=True
    )


def _xgboost(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
    from xgboost import XGBClassifier  # noqa: PLC0415

    return XGBClassifier(**params, subsample=0.8, tree_method="hist", random_state=seed, n_jobs=threads, eval_metric="logloss")


def _random_forest(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
    from sklearn.ensemble import RandomForestClassifier  # noqa: PLC0415

    return RandomForestClassifier(**params, class_weight="balanced_subsample", max_samples=0.7, random_state=seed, n_jobs=threads)


def _logistic_regression(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
    from sklearn.linear_model import LogisticRegression  # noqa: PLC0415

    # classes weighted for the imbalance; the ensemble is recalibrated after
    return LogisticRegression(C=params["C"], class_weight="balanced", max_iter=2000)


def _svm(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
    from sklearn.calibration import CalibratedClassifierCV  # noqa: PLC0415
    from sklearn.svm import LinearSVC  # noqa: PLC0415

    # A linear SVM scales to 10^5 rows; Platt scaling on internal folds turns margins into probabilities.
    return CalibratedClassifierCV(LinearSVC(C=params["C"], class_weight="balanced", dual=False), method="sigmoid", cv=3)


def _mlp(params: Mapping[str, Any], seed: int, threads: int) -> ClassifierMixin:
    from sklearn.neural_network import MLPClassifier  # noqa: PLC0415

    return MLPClassifier(
        hidden_layer_sizes=(params["hidden"], params["hidden"] // 2),
        alpha=params["alpha"],
        learning_rate_init=params["learning_rate_init"],
        early_stopping=True,
        max_iter=200,
        random_state=seed,
    )


FAMILY_TABLE: tuple[Family, ...] = (
    Family(
        name="lightgbm",
        prefix="lgb",
        tree=True,
        threaded=True,
        attribution="tree",
        fit_cost_s=(0.25, 1.6),
        defaults={
            "n_estimators": 300,
            "learning_rate": 0.05,
            "num_leaves": 31,
            "min_child_samples": 40,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        },
        # 31-leaf trees on 3,500 rows fit noise (grouped CV AUC 0.811 against 0.840 for 7 leaves)
        shallow_defaults={
            "n_estimators": 200,
            "learning_rate": 0.03,
            "num_leaves": 7,
            "min_child_samples": 40,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        },
        space={
            "n_estimators": Int(100, 600, step=50),
            "learning_rate": Float(0.01, 0.2, log=True),
            "num_leaves": Int(4, 128, log=True),
            "min_child_samples": Int(10, 200, log=True),
            "colsample_bytree": Float(0.2, 1.0),
            "reg_lambda": Float(1e-3, 10.0, log=True),
        },
        build=_lightgbm,
    ),
    Family(
        name="xgboost",
        prefix="xgb",
        tree=True,
        threaded=True,
        attribution="tree",
        fit_cost_s=(0.15, 1.5),
        defaults={
            "n_estimators": 300,
            "learning_rate": 0.05,
            "max_depth": 5,
            "min_child_weight": 5.0,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        },
        shallow_defaults={
            "n_estimators": 300,
            "learning_rate": 0.03,
            "max_depth": 3,
            "min_child_weight": 10.0,
            "colsample_bytree": 0.5,
            "reg_lambda": 1.0,
        },
        space={
            "n_estimators": Int(100, 600, step=50),
            "learning_rate": Float(0.01, 0.2, log=True),
            "max_depth": Int(2, 8),
            "min_child_weight": Float(1.0, 50.0, log=True),
            "colsample_bytree": Float(0.2, 1.0),
            "reg_lambda": Float(1e-3, 10.0, log=True),
        },
        build=_xgboost,
    ),
    Family(
        name="random_forest",
        prefix="rf",
        tree=True,
        threaded=True,
        attribution=None,
        fit_cost_s=(1.0, 24.0),
        defaults={"n_estimators": 200, "max_depth": 14, "min_samples_leaf": 10, "max_features": 0.3},
        space={
            "n_estimators": Int(100, 400, step=50),
            "max_depth": Int(4, 20),
            "min_samples_leaf": Int(1, 50, log=True),
            "max_features": Float(0.05, 0.6),
        },
        build=_random_forest,
    ),
    Family(
        name="logistic_regression",
        prefix="lr",
        tree=False,
        threaded=False,
        attribution="linear",
        fit_cost_s=(0.25, 1.8),
        defaults={"C": 0.1},
        space={"C": Float(1e-3, 10.0, log=True)},
        build=_logistic_regression,
    ),
    Family(
        name="svm",
        prefix="svm",
        tree=False,
        threaded=False,
        attribution=None,
        fit_cost_s=(0.2, 1.7),
        defaults={"C": 0.05},
        space={"C": Float(1e-3, 1.0, log=True)},
        build=_svm,
    ),
    Family(
        name="mlp",
        prefix="mlp",
        tree=False,
        threaded=False,
        attribution=None,
        fit_cost_s=(0.3, 8.0),
        defaults={"hidden": 64, "alpha": 1e-3, "learning_rate_init": 1e-3},
        space={
            "hidden": Choice((32, 64, 128)),  # the first layer; the second has half as many units
            "alpha": Float(1e-5, 1e-1, log=True),
            "learning_rate_init": Float(1e-4, 1e-2, log=True),
        },
        build=_mlp,
    ),
)
FAMILY_BY_NAME: dict[str, Family] = {f.name: f for f in FAMILY_TABLE}


def family_of(name: str) -> Family:
    try:
        return FAMILY_BY_NAME[name]
    except KeyError:
        raise InvalidInputError(f"unknown model family {name!r}; choose from {tuple(FAMILY_BY_NAME)}", field="family") from None


def attribution(name: str) -> Attribution | None:
    """How the server attributes a member of this family exactly; None for a family it cannot (or does not know)."""
    known = FAMILY_BY_NAME.get(name)
    return known.attribution if known is not None else None
