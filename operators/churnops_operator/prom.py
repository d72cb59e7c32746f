"""Prometheus I/O: the canary analysis and the retraining signals over the HTTP query API.

Queries use the metric names of ``churnops_contract.metrics``, select by the
``model`` (registered model) and ``version`` labels, and count over the
analysis window with ``increase`` (which handles counter resets). An empty
result, a NaN and a failed query all come back as None with a note: the
decisions treat None as "not available", never as success.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from churnops_contract import metrics as m
from churnops_contract import policy
from churnops_operator.decisions.analysis import Observation, VersionSample, latency_bucket
from churnops_operator.http import ExternalError, JsonClient


def selector(model: str, version: str, *matchers: str, **extra: str) -> str:
    """A label selector for one model version; ``matchers`` are extra raw matchers such as ``method=~"psi|ks"``."""
    labels = {m.LABEL_MODEL: model, m.LABEL_VERSION: version, **extra}
    return "{" + ",".join([*(f'{k}="{_escape(v)}"' for k, v in labels.items()), *matchers]) + "}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def window(seconds: float) -> str:
    return f"{max(math.ceil(seconds), 1)}s"


@dataclass(frozen=True)
class VersionQueries:
    requests: str
    errors: str
    timed: str
    fast: str  # requests at or under the latency limit's bucket
    p95: str
    scores: str  # by le
    auc: str
    coverage: str
    churn_rate: str


def version_queries(model: str, version: str, seconds: float, limit_ms: float) -> VersionQueries:
    sel = selector(model, version)
    total = selector(model, version, **{m.LABEL_STAGE: "total"})
    w = window(seconds)
    le = latency_bucket(limit_ms)
    fast_sel = selector(model, version, **{m.LABEL_STAGE: "total", "le": le})
    measured = {m.LABEL_SEGMENT: m.ALL_SEGMENTS, m.LABEL_SOURCE: m.SOURCE_MEASURED}
    return VersionQueries(
        requests=f"sum(increase({m.total(m.REQUESTS)}{sel}[{w}]))",
        # A version that never failed has no error series: zero errors, as long as it answered requests.
        errors=f"sum(increase({m.total(m.ERRORS)}{sel}[{w}])) or 0 * sum(increase({m.total(m.REQUESTS)}{sel}[{w}]))",
        timed=f"sum(increase({m.LATENCY}_count{total}[{w}]))",
        fast=f"sum(increase({m.LATENCY}_bucket{fast_sel}[{w}]))",
        p95=f"1000 * histogram_quantile(0.95, sum by (le) (increase({m.LATENCY}_bucket{total}[{w}])))",
        scores=f"sum by (le) (increase({m.SCORE}_bucket{sel}[{w}]))",
        auc=f"max({m.PERFORMANCE}{selector(model, version, **measured, **{m.LABEL_METRIC: 'auc'})})",
        coverage=f"max({m.LABEL_COVERAGE}{sel})",
        churn_rate=f"max({m.CHURN_RATE}{selector(model, version, **measured)})",
    )


class Prometheus:
    def __init__(self, base_url: str, timeout_s: float = 5.0) -> None:
        self.http = JsonClient("prometheus", base_url, timeout_s)

    async def vector(self, expr: str, at: float) -> dict[str, float]:
        """An instant query's samples keyed by their ``le`` label (or "" when unlabelled)."""
        answer = await self.http.request("GET", "/api/v1/query", params={"query": expr, "time": f"{at:.3f}"})
        if answer.get("status") != "success":
            raise ExternalError("prometheus", 200, f"{answer.get('errorType')}: {answer.get('error')}")
        data = answer.get("data") or {}
        if data.get("resultType") == "scalar":
            return {"": float(data["result"][1])}
        out: dict[str, float] = {}
        for sample in data.get("result") or []:
            out[(sample.get("metric") or {}).get("le", "")] = float(sample["value"][1])
        return out

    async def scalar(self, expr: str, at: float, notes: list[str]) -> float | None:
        """One number, or None (with a note) when empty, NaN, infinite or failing."""
        try:
            values = await self.vector(expr, at)
        except ExternalError as e:
            notes.append(f"query failed: {e.message[:160]}")
            return None
        value = values.get("")
        if value is None:
            return None
        if not math.isfinite(value):
            notes.append(f"{expr.split('(', maxsplit=1)[0]}... returned {value}")
            return None
        return value

    async def buckets(self, expr: str, at: float, notes: list[str]) -> tuple[float, ...] | None:
        """Per-bucket counts, in ``le`` order, from cumulative histogram buckets."""
        try:
            values = await self.vector(expr, at)
        except ExternalError as e:
            notes.append(f"query failed: {e.message[:160]}")
            return None
        if not values:
            return None
        ordered = sorted(values.items(), key=lambda kv: math.inf if kv[0] == "+Inf" else float(kv[0]))
        cumulative = [v for _, v in ordered]
        if not all(math.isfinite(v) for v in cumulative):
            notes.append("score histogram has NaN buckets")
            return None
        return tuple(max(b - a, 0.0) for a, b in zip([0.0, *cumulative[:-1]], cumulative, strict=True))

    async def sample(self, q: VersionQueries, at: float, notes: list[str]) -> VersionSample:
        requests = await self.scalar(q.requests, at, notes)
        errors = await self.scalar(q.errors, at, notes)
        timed = await self.scalar(q.timed, at, notes)
        fast = await self.scalar(q.fast, at, notes)
        coverage = await self.scalar(q.coverage, at, notes)
        return VersionSample(
            requests=requests,
            errors=errors,
            timed=timed,
            slow=None if timed is None or fast is None else max(timed - fast, 0.0),
            p95_ms=await self.scalar(q.p95, at, notes),
            score_buckets=await self.buckets(q.scores, at, notes),
            auc=await self.scalar(q.auc, at, notes),
            labelled=None if coverage is None or requests is None else coverage * requests,
            positive_rate=await self.scalar(q.churn_rate, at, notes),
        )

    async def observe(
        self, model: str, canary: str, stable: str, since: float, step_since: float, limit_ms: float, look: int, now: float
    ) -> Observation:
        """Counts for both versions since the analysis began, and the canary's since the step began."""
        notes: list[str] = []
        span = max(now - since, 1.0)
        c = await self.sample(version_queries(model, canary, span, limit_ms), now, notes)
        s = await self.sample(version_queries(model, stable, span, limit_ms), now, notes)
        step_q = version_queries(model, canary, max(now - step_since, 1.0), limit_ms)
        step = await self.scalar(step_q.requests, now, notes)
        return Observation(c, s, step, look, tuple(notes))

    async def retraining_signals(
        self, model: str, version: str, drift_methods: tuple[str, ...], threshold: float, reference_auc: float | None, now: float
    ) -> policy.Observation:
        """The retraining policy's observation for the serving (stable) version."""
        notes: list[str] = []
        methods = f'{m.LABEL_METHOD}=~"{"|".join(drift_methods)}"'
        features = f'{m.LABEL_FEATURE}!="{m.SCORE_FEATURE}"'
        worst = await self.scalar(f"max({m.DRIFT_SCORE}{selector(model, version, methods, features)})", now, notes)
        share = await self.scalar(f"max({m.DRIFTED_FEATURES_SHARE}{selector(model, version)})", now, notes)
        measured = {m.LABEL_SEGMENT: m.ALL_SEGMENTS, m.LABEL_METRIC: "auc"}
        auc_m = await self.scalar(f"max({m.PERFORMANCE}{selector(model, version, **measured, source=m.SOURCE_MEASURED)})", now, notes)
        auc_e = await self.scalar(f"max({m.PERFORMANCE}{selector(model, version, **measured, source=m.SOURCE_ESTIMATED)})", now, notes)
        coverage = await self.scalar(f"max({m.LABEL_COVERAGE}{selector(model, version)})", now, notes)
        served = await self.scalar(f"sum(increase({m.total(m.PREDICTIONS)}{selector(model, version)}[1d]))", now, notes)
        labelled = int(coverage * served) if coverage is not None and served is not None else 0
        return policy.Observation(
            time=now,
            drift_detected=None if worst is None else worst > threshold,
            drifted_share=share,
            measured_auc=auc_m,
            labelled=labelled,
            estimated_auc=auc_e,
            reference_auc=reference_auc,
        )

    async def aclose(self) -> None:
        await self.http.aclose()
