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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from churnops_contract import metrics as m

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


# --- reading the answers ---------------------------------------------------------------------------------------


def samples(data: Mapping[str, Any], keys: Sequence[str] = ("le",)) -> dict[str, float]:
    """An instant query's ``data`` as values keyed by the first of ``keys`` each sample carries ("" when none)."""
    if data.get("resultType") == "scalar":
        return {"": float(data["result"][1])}
    out: dict[str, float] = {}
    for sample in data.get("result") or []:
        labels = sample.get("metric") or {}
        out[next((labels[k] for k in keys if k in labels), "")] = float(sample["value"][1])
    return out


def bucket_counts(cumulative: Mapping[str, float]) -> tuple[float, ...] | None:
    """Per-bucket counts in ``le`` order from a histogram's cumulative buckets; None when empty or not finite."""
    if not cumulative or not all(math.isfinite(v) for v in cumulative.values()):
        return None
    ordered = [v for _, v in sorted(cumulative.items(), key=lambda kv: math.inf if kv[0] == "+Inf" else float(kv[0]))]
    return tuple(max(b - a, 0.0) for a, b in zip([0.0, *ordered[:-1]], ordered, strict=True))
