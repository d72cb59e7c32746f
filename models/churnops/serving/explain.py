"""Fast scoring and exact SHAP reasons for a fitted ``ChurnEnsemble``.

The ensemble's own ``predict_proba`` goes through pandas and scikit-learn's
ColumnTransformer, which costs milliseconds per call. ``CompiledModel`` reads
the fitted pieces once and scores plain rows with the boosters' native APIs.

Explanations live in the margin (log-odds) space of the combined model:
- LightGBM / XGBoost members: exact TreeSHAP from the libraries' native
  ``pred_contrib`` / ``pred_contribs`` (the same algorithm as shap.TreeExplainer)
  for a few rows; for blocks of rows (``vectorised``, batch scoring) the same
  values from ``churnops.serving.treeshap``, several times faster, each row
  checked against the booster's own margin;
- logistic regression members: exact linear attributions on the scaled inputs,
  mapped back to source features;
- "single" and "stack" combiners are linear in the members' margins, so the
  members' attributions combine exactly: base value + sum of contributions is
  the model's margin. A "blend" averages probabilities, which is not additive
  in any margin, so it (and members of other families) scores without reasons.

The calibrator is monotone: reasons explain the ranking score, the response's
probability is the calibrated one.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import xgboost as xgb
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

from churnops.errors import NotImplementedInModelError
from churnops.serving.treeshap import TreeShap, UnsupportedTreeError
from churnops.training.ensemble import ChurnEnsemble, calibrate
from churnops.training.families import attribution


class ExplanationUnavailableError(NotImplementedInModelError):
    """The model scores, but its output is not additive in any margin we can attribute exactly."""


@dataclass(frozen=True)
class Reason:
    feature: str
    value: Any
    contribution: float


@dataclass(frozen=True)
class Scored:
    """Scores of n rows; contributions are (n, n_features) in the order of ``CompiledModel.features``."""

    probability: np.ndarray
    margin: np.ndarray | None = None
    base_value: float | None = None
    contributions: np.ndarray | None = None


# base + sum of contributions against the booster's margin, relative beyond 1: XGBoost adds its trees in float32
MARGIN_TOLERANCE = 1e-4


def _sigmoid(m: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-m)), dtype=float)


class _TreeMember:
    """A LightGBM or XGBoost pipeline read as: ordinal-encode categoricals, then the booster."""

    def __init__(self, pipeline: Any, family: str, features: list[str], threads: int) -> None:
        prep, model = pipeline.named_steps["prep"], pipeline.named_steps["model"]
        numeric, cats = list(prep.transformers_[0][2]), list(prep.transformers_[1][2])
        order = numeric + cats
        if sorted(order) != sorted(features):
            raise ExplanationUnavailableError(f"{family} member was fitted on other columns than the model's features")
        self.family = family
        self.threads = threads
        # position in the model's feature order of each booster column
        self.columns = np.array([features.index(c) for c in order])
        encoder = prep.named_transformers_["cat"] if cats else None
        self.categories: dict[int, dict[str, float]] = {}
        if encoder is not None:
            for name, values in zip(cats, encoder.categories_, strict=True):
                self.categories[features.index(name)] = {str(v): float(i) for i, v in enumerate(values)}
        if family == "xgboost":
            self.xgb: xgb.Booster = model.get_booster()
            self.xgb.set_param({"nthread": threads})
        else:
            self.lgb = model.booster_
        self._vectorised: TreeShap | None = None
        self._vectorised_unavailable = False
        self._building = threading.Lock()

    def vectorised(self) -> TreeShap | None:
        """The block explainer, built on first use (batch only: 300 trees of 31 leaves take 1.6 s and 150 MB of tables)."""
        with self._building:
            if self._vectorised is None and not self._vectorised_unavailable:
                booster = self.xgb if self.family == "xgboost" else self.lgb
                try:
                    self._vectorised = TreeShap.of(booster, "xgboost" if self.family == "xgboost" else "lightgbm", len(self.columns))
                except UnsupportedTreeError:
                    self._vectorised_unavailable = True  # native contributions cover every booster
            return self._vectorised

    def matrix(self, rows: np.ndarray) -> np.ndarray:
        """Booster input from an object array of raw values (None for missing)."""
        out = np.empty((rows.shape[0], len(self.columns)), dtype=np.float64)
        for j, src in enumerate(self.columns):
            col = rows[:, src]
            mapping = self.categories.get(int(src))
            if mapping is None:
                out[:, j] = [math.nan if v is None else float(v) for v in col]
            else:
                # unknown and missing categories were encoded as -1 at training time
                out[:, j] = [mapping.get(str(v), -1.0) if v is not None else -1.0 for v in col]
        return out

    def matrix_from_frame(self, frame: pd.DataFrame, features: list[str]) -> np.ndarray:
        """Booster input from a DataFrame (vectorised; for batch scoring)."""
        out = np.empty((len(frame), len(self.columns)), dtype=np.float64)
        for j, src in enumerate(self.columns):
            col = frame[features[src]]
            mapping = self.categories.get(int(src))
            if mapping is None:
                out[:, j] = pd.to_numeric(col, errors="raise").to_numpy(dtype=np.float64, na_value=np.nan)
            else:
                # the mapping's keys in its order: a value's code is its index, -1 for missing and unknown (as in training)
                out[:, j] = pd.Categorical(col.astype("object"), categories=list(mapping)).codes
        return out

    def evaluate(
        self, x: np.ndarray, n_features: int, contributions: bool, vectorised: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """Margins, and with ``contributions`` the per-feature attributions (model feature order) and bias."""
        if self.family == "xgboost":
            data = xgb.DMatrix(x, missing=np.nan, nthread=self.threads)  # one DMatrix for both calls
            margin = np.asarray(self.xgb.predict(data, output_margin=True), dtype=float).reshape(-1)
        else:
            margin = np.asarray(self.lgb.predict(x, raw_score=True, num_threads=self.threads), dtype=float).reshape(-1)
        if not contributions:
            return margin, None, None
        fast = self.vectorised() if vectorised else None
        if fast is not None:
            raw = fast.shap_values(x, self.threads)
            bias = np.full(len(x), fast.base_value)
            # the booster's own margin vouches for each row's path (XGBoost sums its margin in float32)
            off = np.abs(bias + raw.sum(axis=1) - margin) > MARGIN_TOLERANCE * np.maximum(1.0, np.abs(margin))
            if off.any():
                native = self._native_contributions(x[off])
                raw[off], bias[off] = native[:, :-1], native[:, -1]
        else:
            native = self._native_contributions(x)
            raw, bias = native[:, :-1], native[:, -1]
        out = np.zeros((x.shape[0], n_features))
        out[:, self.columns] = raw
        return margin, out, bias

    def _native_contributions(self, x: np.ndarray) -> np.ndarray:
        """The booster's own TreeSHAP: (n, columns + 1), the bias last."""
        if self.family == "xgboost":
            return np.asarray(self.xgb.predict(xgb.DMatrix(x, missing=np.nan, nthread=self.threads), pred_contribs=True), dtype=float)
        return np.asarray(self.lgb.predict(x, pred_contrib=True, num_threads=self.threads), dtype=float)


class _LinearMember:
    """A logistic regression pipeline: margin = intercept + coef · transformed inputs."""

    def __init__(self, pipeline: Any, features: list[str]) -> None:
        self.pipeline = pipeline
        prep, model = pipeline.named_steps["prep"], pipeline.named_steps["model"]
        self.coef = np.asarray(model.coef_[0], dtype=float)
        self.intercept = float(model.intercept_[0])
        names = list(prep.get_feature_names_out())
        # every transformed column (scaled value, missing indicator, one-hot level) back to its source feature
        self.source = np.array([features.index(_source_feature(n, features)) for n in names])
        self.features = features

    def transformed(self, rows: np.ndarray, categorical: set[str]) -> np.ndarray:
        frame = rows_to_frame(rows, self.features, categorical)
        return np.asarray(self.pipeline.named_steps["prep"].transform(frame), dtype=float)

    def evaluate(
        self, z: np.ndarray, n_features: int, contributions: bool, vectorised: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        margin = np.asarray(z @ self.coef + self.intercept, dtype=float)
        if not contributions:
            return margin, None, None
        out = np.zeros((z.shape[0], n_features))
        np.add.at(out.T, self.source, (z * self.coef).T)
        return margin, out, np.full(z.shape[0], self.intercept)


def rows_to_frame(rows: np.ndarray, features: list[str], categorical: set[str]) -> pd.DataFrame:
    """The DataFrame scikit-learn pipelines were fitted on: numbers as float (NaN for missing), categories as str."""
    columns: dict[str, Any] = {}
    for j, name in enumerate(features):
        col = rows[:, j]
        if name in categorical:
            columns[name] = pd.Series([np.nan if v is None else str(v) for v in col], dtype="object")
        else:
            columns[name] = pd.Series([np.nan if v is None else float(v) for v in col], dtype="float64")
    return pd.DataFrame(columns)


def _source_feature(name: str, features: list[str]) -> str:
    if name in features:
        return name
    if name.startswith("missingindicator_") and name[len("missingindicator_") :] in features:
        return name[len("missingindicator_") :]
    # one-hot levels are "<feature>_<level>": the longest feature name that prefixes it
    candidates = [f for f in features if name.startswith(f + "_")]
    if not candidates:
        raise ExplanationUnavailableError(f"cannot map transformed column {name!r} to a feature")
    return max(candidates, key=len)


class CompiledModel:
    """Score rows (object arrays in ``features`` order) and attribute their margins."""

    def __init__(self, model: ChurnEnsemble, threads: int = 1) -> None:
        """``threads``: 1 for online serving (tail latency), all cores for batch scoring."""
        self.model = model
        self.features = list(model.feature_names)
        self.categorical = set(model.categorical)
        self.kind = model.combiner.kind
        self.members: list[_TreeMember | _LinearMember] = []
        self.unexplainable_reason: str | None = None
        for pipeline, family in zip(model.members, model.families, strict=True):
            if attribution(family) == "tree":
                self.members.append(_TreeMember(pipeline, family, self.features, threads))
            elif attribution(family) == "linear":
                self.members.append(_LinearMember(pipeline, self.features))
            else:
                self.unexplainable_reason = f"member family {family!r} has no exact attribution"
        if self.kind == "blend" and self.unexplainable_reason is None:
            self.unexplainable_reason = "a probability blend is not additive in a margin"
        # linear weights of member margins in the combined margin
        if self.kind == "stack":
            stacker = model.combiner.stacker
            assert stacker is not None
            self.weights = np.asarray(stacker.coef_[0], dtype=float)
            self.bias = float(stacker.intercept_[0])
        else:
            self.weights, self.bias = np.ones(1), 0.0

    @property
    def explainable(self) -> bool:
        return self.unexplainable_reason is None

    def _inputs(self, rows: np.ndarray | pd.DataFrame) -> list[np.ndarray]:
        if isinstance(rows, pd.DataFrame):
            return [
                m.matrix_from_frame(rows, self.features)
                if isinstance(m, _TreeMember)
                else np.asarray(m.pipeline.named_steps["prep"].transform(rows[self.features]), dtype=float)
                for m in self.members
            ]
        return [m.matrix(rows) if isinstance(m, _TreeMember) else m.transformed(rows, self.categorical) for m in self.members]

    def predict(self, rows: np.ndarray | pd.DataFrame) -> Scored:
        """Calibrated probabilities of object rows (``features`` order) or a DataFrame with those columns."""
        if len(self.members) != len(self.model.members):
            # a member family without a compiled path: the ensemble's own (slower) scoring
            frame = rows if isinstance(rows, pd.DataFrame) else rows_to_frame(rows, self.features, self.categorical)
            return Scored(self.model.predict_proba(frame))
        n = len(self.features)
        margins = [m.evaluate(x, n, contributions=False)[0] for m, x in zip(self.members, self._inputs(rows), strict=True)]
        return Scored(self._calibrated(margins))

    def _calibrated(self, margins: list[np.ndarray]) -> np.ndarray:
        # identical to ChurnEnsemble.predict_proba: members' probabilities -> combiner -> calibrator
        probas = np.column_stack([_sigmoid(m) for m in margins])
        raw = self.model.combiner.combine(probas)
        calibrator: IsotonicRegression | LogisticRegression = self.model.calibrator
        if isinstance(calibrator, IsotonicRegression):
            # what IsotonicRegression.predict computes with out_of_bounds="clip", without its ~0.1 ms of checks
            return np.asarray(np.interp(raw, calibrator.X_thresholds_, calibrator.y_thresholds_), dtype=float)
        return calibrate(calibrator, raw)

    def explain(self, rows: np.ndarray | pd.DataFrame, vectorised: bool = False, alone: bool = False) -> Scored:
        """Probabilities plus margin, base value and per-feature contributions (base + sum == margin).

        ``vectorised``: tree members explain the rows as blocks (batch scoring: faster from a few hundred
        rows on, after building per-model tables once); the values are the same exact TreeSHAP.
        ``alone``: each row's values are, to the bit, those of explaining that row alone (``explain_alone``).
        """
        if not self.explainable:
            raise ExplanationUnavailableError(self.unexplainable_reason or "no exact attribution")
        if alone and vectorised:
            raise ValueError("vectorised blocks do not round as rows explained alone")
        inputs = self._inputs(rows)
        n, n_rows = len(self.features), len(rows)
        margin = np.full(n_rows, self.bias)
        contrib = np.zeros((n_rows, n))
        base = np.full(n_rows, self.bias)
        margins = []
        for w, member, x in zip(self.weights, self.members, inputs, strict=True):
            m, c, b = member.evaluate(x, n, contributions=True, vectorised=vectorised)
            assert c is not None and b is not None
            if alone and isinstance(member, _LinearMember):  # a BLAS product's sums round with the batch's shape
                m = np.concatenate([member.evaluate(x[i : i + 1], n, contributions=False)[0] for i in range(n_rows)])
            margins.append(m)
            contrib += w * c
            base += w * b
            margin += w * m
        if alone:  # the stacker's product too
            probability = np.concatenate([self._calibrated([m[i : i + 1] for m in margins]) for i in range(n_rows)])
        else:
            probability = self._calibrated(margins)
        # the base value is the same for every row (the model's expected margin)
        return Scored(probability, margin, float(base[0]), contrib)

    def explain_alone(self, rows: np.ndarray | pd.DataFrame) -> Scored:
        """``explain`` of many rows with each row's values, to the bit, those of explaining that row alone.

        Precomputed reasons stand in for a request's own computation, so they must be its bytes. Inputs, tree
        margins and attributions are computed row by row even in a batch; the linear members' margins and the
        combination go through BLAS products whose sums round with the batch's shape: those run row by row.
        """
        return self.explain(rows, alone=True)


def top_reasons(model: CompiledModel, row: np.ndarray, contributions: np.ndarray, k: int) -> list[Reason]:
    """The k features with the largest absolute contribution, strongest first."""
    order = np.argsort(-np.abs(contributions), kind="stable")[:k]
    return [Reason(model.features[i], _plain(row[i]), round(float(contributions[i]), 6)) for i in order]


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def known_categories(model: ChurnEnsemble) -> dict[str, frozenset[str]]:
    """Each categorical feature's values seen in training by every member (others are scored as missing)."""
    known: dict[str, frozenset[str]] = {}
    for pipeline in model.members:
        prep = pipeline.named_steps["prep"]
        if "cat" not in prep.named_transformers_:
            continue
        encoder = prep.named_transformers_["cat"]
        if hasattr(encoder, "steps"):  # imputer + one-hot encoder
            encoder = encoder.steps[-1][1]
        columns = next(cols for name, _, cols in prep.transformers_ if name == "cat")
        for name, values in zip(columns, encoder.categories_, strict=True):
            seen = frozenset(str(v) for v in values if isinstance(v, str) and v != "missing")
            known[name] = known[name] & seen if name in known else seen
    return known
