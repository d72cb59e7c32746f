"""Prometheus I/O: the canary analysis and the retraining signals over the HTTP query API.

Queries use the metric names of ``churnops_contract.metrics``, select by the
``model`` (registered model) and ``version`` labels, and count over the
analysis window with ``increase`` (which handles counter resets). An empty
result, a NaN and a failed query all come back as None with a note: the
decisions treat None as "not available", never as success.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import replace

from churnops_contract import metrics as m
from churnops_contract import policy
from churnops_contract.queries import (
    VersionQueries,
    bucket_counts,
    drift_verdict,
    samples,
    selector,
    unattributed_errors,
    version_queries,
)
from churnops_operator.decisions.analysis import Observation, VersionSample
from churnops_operator.http import ExternalError, JsonClient


class Prometheus:
    def __init__(self, base_url: str, timeout_s: float = 5.0, concurrency: int = 8) -> None:
        self.http = JsonClient("prometheus", base_url, timeout_s)
        self.slots = asyncio.Semaphore(concurrency)  # many resources checking at once must not flood Prometheus

    async def vector(self, expr: str, at: float) -> dict[str, float]:
        """An instant query's samples keyed by their ``le`` label (or "" when unlabelled)."""
        async with self.slots:
            answer = await self.http.request("GET", "/api/v1/query", params={"query": expr, "time": f"{at:.3f}"})
        if answer.get("status") != "success":
            raise ExternalError("prometheus", 200, f"{answer.get('errorType')}: {answer.get('error')}")
        return samples(answer.get("data") or {})

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
        counts = bucket_counts(values)
        if counts is None and values:
            notes.append("score histogram has NaN buckets")
        return counts

    async def sample(self, q: VersionQueries, at: float, notes: list[str]) -> VersionSample:
        """All of one version's figures, queried concurrently (a hanging Prometheus costs one timeout, not ten)."""
        scalars = (q.requests, q.errors, q.timed, q.fast, q.coverage, q.p95, q.auc, q.churn_rate)
        values, buckets = await asyncio.gather(
            asyncio.gather(*(self.scalar(expr, at, notes) for expr in scalars)), self.buckets(q.scores, at, notes)
        )
        requests, errors, timed, fast, coverage, p95, auc, churn_rate = values
        return VersionSample(
            requests=requests,
            errors=errors,
            timed=timed,
            slow=None if timed is None or fast is None else max(timed - fast, 0.0),
            p95_ms=p95,
            score_buckets=buckets,
            auc=auc,
            labelled=None if coverage is None or requests is None else coverage * requests,
            positive_rate=churn_rate,
        )

    async def observe(
        self, model: str, canary: str, stable: str, since: float, step_since: float, limit_ms: float, look: int, now: float
    ) -> Observation:
        """Counts for both versions since the analysis began, and the canary's since the step began."""
        notes: list[str] = []
        span = max(now - since, 1.0)
        step_q = version_queries(model, canary, max(now - step_since, 1.0), limit_ms)
        # Errors without a version label cannot be told apart: the error check must not read them as zero.
        blind = unattributed_errors(model, span)
        c, s, step, unattributed = await asyncio.gather(
            self.sample(version_queries(model, canary, span, limit_ms), now, notes),
            self.sample(version_queries(model, stable, span, limit_ms), now, notes),
            self.scalar(step_q.requests, now, notes),
            self.scalar(blind, now, notes),
        )
        if unattributed:
            notes.append(f"{unattributed:.0f} errors of {model} carry no version label: the error rate cannot be judged")
            c, s = replace(c, errors=None), replace(s, errors=None)
        return Observation(c, s, step, look, tuple(notes))

    async def retraining_signals(
        self, model: str, version: str, drift_methods: tuple[str, ...], threshold: float, reference_auc: float | None, now: float
    ) -> policy.Observation:
        """The retraining policy's observation for the serving (stable) version."""
        notes: list[str] = []
        methods = f'{m.LABEL_METHOD}=~"{"|".join(drift_methods)}"'
        features = f'{m.LABEL_FEATURE}!="{m.SCORE_FEATURE}"'
        measured = {m.LABEL_SEGMENT: m.ALL_SEGMENTS, m.LABEL_METRIC: "auc"}
        exprs = (
            drift_verdict(model, version),
            f"max({m.DRIFT_SCORE}{selector(model, version, methods, features)})",
            f"max({m.DRIFTED_FEATURES_SHARE}{selector(model, version)})",
            f"max({m.PERFORMANCE}{selector(model, version, **measured, source=m.SOURCE_MEASURED)})",
            f"max({m.PERFORMANCE}{selector(model, version, **measured, source=m.SOURCE_ESTIMATED)})",
            f"max({m.LABEL_COVERAGE}{selector(model, version)})",
            f"sum(increase({m.total(m.PREDICTIONS)}{selector(model, version)}[1d]))",
        )
        verdict, worst, share, auc_m, auc_e, coverage, served = await asyncio.gather(*(self.scalar(e, now, notes) for e in exprs))
        labelled = int(coverage * served) if coverage is not None and served is not None else 0
        return policy.Observation(
            time=now,
            drift_detected=drifted(verdict, worst, threshold),
            drifted_share=share,
            measured_auc=auc_m,
            labelled=labelled,
            estimated_auc=auc_e,
            reference_auc=reference_auc,
        )

    async def aclose(self) -> None:
        await self.http.aclose()


def drifted(verdict: float | None, worst: float | None, threshold: float) -> bool | None:
    """The predictor's verdict (after multiple-testing control, as the embedded runner reads it) when it gives one;
    a predictor that exports scores but no verdict is judged by its worst score against the spec's threshold."""
    if verdict is not None:
        return verdict >= 1.0
    return None if worst is None else worst > threshold
