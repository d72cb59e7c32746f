"""The PromQL the platform's deciders ask: one definition for the operator and the embedded rollout runner.

Both judge a canary from the same series, so they must ask the same
questions: counts over the analysis window with ``increase`` (which handles
counter resets), server errors as the 5xx codes only (a client's mistake is
not the model's failure), and the latency bucket spelled the way the
Prometheus client writes it (``le="1.0"``, never ``le="1"``, which matches
nothing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from churnops_contract import metric_names as m

SERVER_ERRORS = f'{m.LABEL_CODE}=~"5.."'
INF = "+Inf"


def quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def selector(model: str, version: str, *matchers: str, **labels: str) -> str:
    """A label selector for one model version; ``matchers`` are raw ones such as ``method=~"psi|ks"``."""
    pairs = {m.LABEL_MODEL: model, m.LABEL_VERSION: version, **labels}
    return "{" + ",".join([*(f'{k}="{quote(v)}"' for k, v in pairs.items()), *matchers]) + "}"


def window(seconds: float) -> str:
    return f"{max(math.ceil(seconds), 1)}s"


def latency_le(limit_ms: float) -> str:
    """The ``le`` of the smallest latency bucket at or above the limit, spelled as the client exports it."""
    seconds = limit_ms / 1000.0
    for bound in m.LATENCY_BUCKETS:
        if bound >= seconds - 1e-12:
            return INF if math.isinf(bound) else repr(float(bound))
    return INF


@dataclass(frozen=True)
class VersionQueries:
    """One version's figures for the canary analysis over a window."""

    requests: str
    errors: str  # 5xx only; "or 0 * requests": a version that never failed has no error series but answered requests
    timed: str
    fast: str  # requests at or under the latency limit's bucket
    p95: str
    scores: str  # per ``le``
    auc: str
    coverage: str
    churn_rate: str


def version_queries(model: str, version: str, seconds: float, limit_ms: float) -> VersionQueries:
    sel = selector(model, version)
    errors = selector(model, version, SERVER_ERRORS)
    total = selector(model, version, **{m.LABEL_STAGE: "total"})
    fast = selector(model, version, **{m.LABEL_STAGE: "total", "le": latency_le(limit_ms)})
    measured = {m.LABEL_SEGMENT: m.ALL_SEGMENTS, m.LABEL_SOURCE: m.SOURCE_MEASURED}
    w = window(seconds)
    requests = f"sum(increase({m.total(m.REQUESTS)}{sel}[{w}]))"
    return VersionQueries(
        requests=requests,
        errors=f"sum(increase({m.total(m.ERRORS)}{errors}[{w}])) or 0 * {requests}",
        timed=f"sum(increase({m.LATENCY}_count{total}[{w}]))",
        fast=f"sum(increase({m.LATENCY}_bucket{fast}[{w}]))",
        p95=f"1000 * histogram_quantile(0.95, sum by (le) (increase({m.LATENCY}_bucket{total}[{w}])))",
        scores=f"sum by (le) (increase({m.SCORE}_bucket{sel}[{w}]))",
        auc=f"max({m.PERFORMANCE}{selector(model, version, **measured, **{m.LABEL_METRIC: 'auc'})})",
        coverage=f"max({m.LABEL_COVERAGE}{sel})",
        churn_rate=f"max({m.CHURN_RATE}{selector(model, version, **measured)})",
    )


def unattributed_errors(model: str, seconds: float) -> str:
    """Server errors of the model that no version label attributes: they make the error check unavailable."""
    return f"sum(increase({m.total(m.ERRORS)}{selector(model, '', SERVER_ERRORS)}[{window(seconds)}]))"


def drift_verdict(model: str, version: str) -> str:
    """The predictor's live drift verdict (1 drifted, 0 not; absent while the window is too small for one)."""
    return f"max({m.DRIFT_DETECTED}{selector(model, version)})"


def by_version(name: str, model: str) -> str:
    """A gauge of every version of the model, one sample per version."""
    return f'max by ({m.LABEL_VERSION}) ({name}{{{m.LABEL_MODEL}="{quote(model)}"}})'


# --- every query a decider asks, by name ------------------------------------------------------------------------

ROLES = ("canary", "stable")
VERSION_FIGURES = ("requests", "errors", "timed", "fast", "p95", "scores", "auc", "coverage", "churn_rate", "served")


def served(model: str, version: str) -> str:
    """1 while the predictor has the version loaded and ready (``churnops_model_info``); absent otherwise."""
    return f"max({m.MODEL_INFO}{selector(model, version)})"


def analysis_queries(model: str, canary: str, stable: str, since_s: float, step_s: float, limit_ms: float) -> dict[str, str]:
    """The canary analysis's questions: ``<role>.<figure>`` for both versions over the analysis window, and the step's requests."""
    out: dict[str, str] = {}
    for role, version in zip(ROLES, (canary, stable), strict=True):
        q = version_queries(model, version, since_s, limit_ms)
        figures = {**{f: getattr(q, f) for f in VERSION_FIGURES if f != "served"}, "served": served(model, version)}
        out.update({f"{role}.{name}": expr for name, expr in figures.items()})
    out["canary.step_requests"] = version_queries(model, canary, step_s, limit_ms).requests
    out["unattributed_errors"] = unattributed_errors(model, since_s)
    return out


def retraining_queries(model: str, version: str, drift_methods: Sequence[str]) -> dict[str, str]:
    """The retraining policy's questions about the serving (stable) version."""
    methods = f'{m.LABEL_METHOD}=~"{"|".join(drift_methods)}"'
    features = f'{m.LABEL_FEATURE}!="{m.SCORE_FEATURE}"'

    def performance(metric: str, source: str) -> str:
        labels = {m.LABEL_SEGMENT: m.ALL_SEGMENTS, m.LABEL_METRIC: metric, m.LABEL_SOURCE: source}
        return f"max({m.PERFORMANCE}{selector(model, version, **labels)})"

    return {
        "drift_verdict": drift_verdict(model, version),
        "drift_worst": f"max({m.DRIFT_SCORE}{selector(model, version, methods, features)})",
        "drifted_share": f"max({m.DRIFTED_FEATURES_SHARE}{selector(model, version)})",
        "auc_measured": performance("auc", m.SOURCE_MEASURED),
        "auc_estimated": performance("auc", m.SOURCE_ESTIMATED),
        "calibration_ratio": performance("calibration_ratio", m.SOURCE_MEASURED),
        "calibration_z": performance("calibration_z", m.SOURCE_MEASURED),
        "coverage": f"max({m.LABEL_COVERAGE}{selector(model, version)})",
        "predictions": f"sum(increase({m.total(m.PREDICTIONS)}{selector(model, version)}[1d]))",
    }
