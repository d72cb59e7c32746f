"""Calibration figures of churn probabilities against outcomes: observed over expected churners, slope, intercept.

The retraining policy's calibration alert compares the churners observed with the sum of the served
scores; the quality gate applies the same figure to the holdout (the latest rows: the population the model
will meet), so a model that would raise the alert against itself is refused before it is registered.
Logistic recalibration (Cox 1958) adds the shape: regressing the outcome on the logit of the score gives a
slope (1: the scores spread as far as the outcomes do; below 1: too extreme) and, with the slope held at
1, an intercept (calibration in the large: 0 when the base rate is right, negative when the model
over-predicts). Pure functions: arrays in, numbers out.
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq
from sklearn.linear_model import LogisticRegression

EPS = 1e-6
MAX_SHIFT = 30.0  # a logit shift beyond which every probability is 0 or 1 in float64


def observed_expected(y: np.ndarray, p: np.ndarray) -> float:
    """Churners observed over the sum of the scores (the churners the model expected); NaN without any expected."""
    expected = float(np.sum(p))
    return float(np.sum(y)) / expected if expected > 0 else math.nan


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, dtype=float), EPS, 1 - EPS)
    return np.asarray(np.log(q / (1 - q)), dtype=float)


def calibration_intercept(y: np.ndarray, p: np.ndarray) -> float:
    """Calibration in the large: the shift ``a`` of the logits that makes the expected churners equal the observed ones."""
    lp = _logit(p)
    churners = float(np.sum(y))
    if churners == 0 or churners == len(y):
        return math.nan  # no finite shift reaches a base rate of 0 or 1

    def gap(a: float) -> float:
        return float(np.sum(1.0 / (1.0 + np.exp(-(lp + a))))) - churners

    return float(brentq(gap, -MAX_SHIFT, MAX_SHIFT, xtol=1e-8))


def calibration_slope(y: np.ndarray, p: np.ndarray) -> float:
    """The slope of the logistic regression of the outcome on the logit of the score (unpenalised)."""
    if len(np.unique(y)) < 2:
        return math.nan
    fitted = LogisticRegression(C=np.inf, max_iter=1000).fit(_logit(p)[:, None], y)
    return float(fitted.coef_[0, 0])


def calibration_fit(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """Every figure at once, for the evaluation and the model card."""
    return {
        "observed_expected": observed_expected(y, p),
        "slope": calibration_slope(y, p),
        "intercept": calibration_intercept(y, p),
        "observed_rate": float(np.mean(y)),
        "expected_rate": float(np.mean(p)),
    }
