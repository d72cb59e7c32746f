"""The canary analysis's counts from a local Prometheus, with the operator's queries.

Where a Prometheus scrapes the predictor (``--prometheus-url``), the runner
asks it what the operator asks it in a cluster (``churnops_operator.prom``):
``increase`` over the analysis window per model version, the score histogram
by bucket, and the served versions and drift verdicts as instant values. A
failed, empty or NaN answer is None with a note, which the decisions read as
missing, never as success. Server errors are the 5xx codes of
``churnops_errors_total``; errors of the model without a version label make
the error check unavailable, as in the operator. A version the predictor
serves but that has not answered yet has no series: its counts are zero (as
with the runner's own scrapes), while a version not served has none at all.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import replace

from churnops.errors import UnavailableError
from churnops.rollout import metrics as rm
from churnops_contract import metrics as m
from churnops_contract.queries import bucket_counts, by_version, samples, unattributed_errors, version_queries
from churnops_operator.decisions.analysis import Observation, VersionSample


class PrometheusMetrics:
    """A Prometheus HTTP API; ``counts_itself`` is False: windows are Prometheus' ``increase``, not the runner's snapshots."""

    counts_itself = False

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def vector(self, expr: str, at: float) -> dict[str, float]:
        """An instant query's samples keyed by their ``le`` (or ``version``) label, "" when unlabelled."""
        query = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=self.timeout_s) as r:
                answer = json.loads(r.read())
        except (OSError, urllib.error.URLError, json.JSONDecodeError) as e:
            raise UnavailableError(f"Prometheus at {self.url}: {e}", field="--prometheus-url") from None
        if answer.get("status") != "success":
            raise UnavailableError(f"Prometheus refused {expr!r}: {answer.get('error')}", field="--prometheus-url")
        return samples(answer.get("data") or {}, ("le", m.LABEL_VERSION))

    def scalar(self, expr: str, at: float, notes: list[str], empty: float | None = None) -> float | None:
        """One number; ``empty`` when the answer has no sample; None (with a note) when the query fails or gives NaN."""
        try:
            values = self.vector(expr, at)
        except UnavailableError as e:
            notes.append(str(e))
            return None
        value = values.get("")
        if value is None:
            return empty
        if not math.isfinite(value):
            notes.append(f"{expr.split('(', 1)[0]} is {value}")
            return None
        return value

    def buckets(self, expr: str, at: float, notes: list[str]) -> tuple[float, ...] | None:
        """Per-bucket counts in ``le`` order from cumulative buckets."""
        try:
            values = self.vector(expr, at)
        except UnavailableError as e:
            notes.append(str(e))
            return None
        return bucket_counts(values)

    def scrape(self, model: str, now: float) -> rm.Scrape:
        """The served versions and the drift verdicts (no counters: the windows are queried)."""
        served = self.vector(f"{by_version(m.MODEL_INFO, model)} == 1", now)
        gauges = {}
        for name, kind in ((m.DRIFT_DETECTED, "drift_detected"), (m.DRIFTED_FEATURES_SHARE, "drifted_share")):
            for version, value in self.vector(by_version(name, model), now).items():
                if math.isfinite(value):
                    gauges[rm.key(kind, version)] = value
        return rm.Scrape(now, {}, gauges, frozenset(served))

    def sample(self, model: str, version: str, seconds: float, limit_ms: float, now: float, notes: list[str]) -> VersionSample:
        """A served version's counts over the window; a series it has not created yet (no request so far) counts zero."""
        q = version_queries(model, version, seconds, limit_ms)
        requests, errors, timed, fast = (self.scalar(e, now, notes, empty=0.0) for e in (q.requests, q.errors, q.timed, q.fast))
        buckets = self.buckets(q.scores, now, notes)
        return VersionSample(
            requests=requests,
            errors=errors,
            timed=timed,
            slow=None if timed is None or fast is None else max(timed - fast, 0.0),
            p95_ms=self.scalar(q.p95, now, notes),
            score_buckets=buckets if buckets is not None else tuple(0.0 for _ in range(len(m.SCORE_BUCKETS) + 1)),
        )

    def observe(
        self,
        model: str,
        canary: str,
        stable: str,
        since: float,
        step_since: float,
        limit_ms: float,
        look: int,
        now: float,
        outcomes: Mapping[str, rm.Outcomes],
        served: frozenset[str],
        problems: tuple[str, ...] = (),
    ) -> Observation:
        """The Observation of the operator, over [since, now] (the canary's requests also over [step_since, now])."""
        notes = list(problems)
        span = max(now - since, 1.0)
        samples = {}
        for version in (canary, stable):
            if version not in served:
                notes.append(f"version {version} is not served by the predictor")
                samples[version] = VersionSample()
                continue
            figures = outcomes.get(version, rm.Outcomes())
            sample = self.sample(model, version, span, limit_ms, now, notes)
            samples[version] = replace(sample, auc=figures.auc, labelled=figures.labelled, positive_rate=figures.positive_rate)
        c, s = samples[canary], samples[stable]
        unattributed = self.scalar(unattributed_errors(model, span), now, notes)
        if unattributed:
            notes.append(f"{unattributed:.0f} server errors carry no version label: the error rate cannot be judged")
            c, s = replace(c, errors=None), replace(s, errors=None)
        step = None
        if canary in served:
            step_q = version_queries(model, canary, max(now - step_since, 1.0), limit_ms)
            step = self.scalar(step_q.requests, now, notes, empty=0.0)
        return Observation(c, s, step, look, tuple(notes))
