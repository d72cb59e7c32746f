"""The canary analysis's counts from the predictor's own ``/metrics``, as the operator gets them from Prometheus.

Without Prometheus the runner is the scraper. Each step reads the
predictor's exposition text (``parse``) and folds its counters into running
totals (``advance``) the way Prometheus' ``increase`` treats counters: a value
lower than the last one means the process restarted, and the new value is
all new. Snapshots of the totals are kept at the times an analysis window
can start (the canary's first traffic, the current step's start), so the
count over a window is the total now minus the total at the window's start
(``increase``). They are plain data, persisted between runs of the runner,
so a restarted runner counts from the same starts.

The figures are the operator's (``churnops_operator.prom``): requests, server
errors (5xx), requests slower than the latency limit's bucket of the ``total``
stage, and score-histogram buckets, per model version. A version that the
predictor does not serve (``churnops_model_info`` not 1) has no figures, not
zeros: the decisions read missing figures as failures, never as success. A
served version with no series yet has answered nothing: zero. Server errors
without a version label of the model (a version that could not load) make the
error check unavailable, as in the operator.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from churnops_contract import metrics as m
from churnops_contract.queries import latency_le
from churnops_operator.decisions.analysis import Observation, VersionSample

INF = "+Inf"
UNATTRIBUTED = ""  # the version label of errors the server could not attribute to a loaded version


def le_key(value: str) -> str:
    """One spelling per bucket bound: the exposition writes ``1.0`` where the analysis says ``1``."""
    bound = float(value)
    return INF if math.isinf(bound) else f"{bound:g}"


def key(kind: str, version: str, le: str | None = None) -> str:
    return f"{kind}|{version}" if le is None else f"{kind}|{version}|{le}"


@dataclass(frozen=True)
class Scrape:
    """One model's series in one ``/metrics`` answer."""

    time: float
    counters: dict[str, float]  # cumulative values: requests, 5xx errors, latency (stage total) and score buckets
    gauges: dict[str, float]  # drift verdicts of the versions with a reference profile
    served: frozenset[str]  # versions loaded and ready


def _labels_match(labels: Mapping[str, str], model: str) -> bool:
    return labels.get(m.LABEL_MODEL) == model


def parse(text: str, model: str, now: float) -> Scrape:
    """The series of ``model`` in an exposition text (ValueError if the text is not the Prometheus format)."""
    counters: dict[str, float] = {}
    gauges: dict[str, float] = {}
    served: set[str] = set()

    def add(k: str, value: float) -> None:
        counters[k] = counters.get(k, 0.0) + value

    for family in text_string_to_metric_families(text):
        for s in family.samples:
            labels, value = s.labels, float(s.value)
            if not _labels_match(labels, model) or not math.isfinite(value):
                continue
            version = labels.get(m.LABEL_VERSION, "")
            if s.name == m.total(m.REQUESTS):
                add(key("requests", version), value)
            elif s.name == m.total(m.ERRORS) and labels.get(m.LABEL_CODE, "").startswith("5"):
                add(key("errors", version), value)
            elif s.name == f"{m.LATENCY}_count" and labels.get(m.LABEL_STAGE) == "total":
                add(key("timed", version), value)
            elif s.name == f"{m.LATENCY}_bucket" and labels.get(m.LABEL_STAGE) == "total":
                add(key("latency", version, le_key(labels["le"])), value)
            elif s.name == f"{m.SCORE}_bucket":
                add(key("score", version, le_key(labels["le"])), value)
            elif s.name == m.MODEL_INFO and value == 1.0:
                served.add(version)
            elif s.name == m.DRIFT_DETECTED:
                gauges[key("drift_detected", version)] = value
            elif s.name == m.DRIFTED_FEATURES_SHARE:
                gauges[key("drifted_share", version)] = value
    return Scrape(now, counters, gauges, frozenset(served))


@dataclass(frozen=True)
class Snapshot:
    time: float
    totals: dict[str, float]


@dataclass(frozen=True)
class Counters:
    """Reset-aware running totals of the counters, with snapshots where windows start."""

    raw: dict[str, float] = field(default_factory=dict)  # the last value seen of each series
    totals: dict[str, float] = field(default_factory=dict)
    snapshots: tuple[Snapshot, ...] = ()

    def to_doc(self) -> dict[str, Any]:
        return {"raw": self.raw, "totals": self.totals, "snapshots": [{"time": s.time, "totals": s.totals} for s in self.snapshots]}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> Counters:
        """Counters persisted by an earlier run; anything unreadable starts afresh (a window then starts at the next scrape)."""
        if doc is None:
            return cls()
        try:
            snaps = tuple(Snapshot(float(s["time"]), {str(k): float(v) for k, v in s["totals"].items()}) for s in doc["snapshots"])
            raw = {str(k): float(v) for k, v in doc["raw"].items()}
            totals = {str(k): float(v) for k, v in doc["totals"].items()}
        except (KeyError, TypeError, ValueError, AttributeError):
            return cls()
        return cls(raw, totals, snaps)


def _version_of(series: str) -> str:
    return series.split("|")[1]


def advance(counters: Counters, scrape: Scrape, keep: Iterable[float], versions: Iterable[str]) -> Counters:
    """Fold a scrape into the totals and snapshot them; keep the snapshots that windows starting at ``keep`` need.

    Only the series of ``versions`` (and unattributed errors) are kept: the stable and the canary.
    """
    wanted = {*versions, UNATTRIBUTED}
    raw: dict[str, float] = {}
    totals: dict[str, float] = {}
    for series in {*scrape.counters, *counters.totals}:
        if _version_of(series) not in wanted:
            continue
        before = counters.totals.get(series, 0.0)
        value = scrape.counters.get(series)
        if value is None:  # not in this answer (the predictor restarted): the next value it shows is all new
            raw[series], totals[series] = 0.0, before
            continue
        last = counters.raw.get(series)
        raw[series] = value
        totals[series] = before + (value - last if last is not None and value >= last else value)
    snapshot = Snapshot(scrape.time, totals)
    history = (*counters.snapshots, snapshot)
    needed = {id(snapshot)}
    for start in keep:
        needed.add(id(_baseline(history, start)))
    return Counters(raw, totals, tuple(s for s in history if id(s) in needed))


def _baseline(snapshots: tuple[Snapshot, ...], start: float) -> Snapshot:
    """The last snapshot at or before ``start``; the first one when none is that old (the window then counts less)."""
    times = [s.time for s in snapshots]
    i = bisect.bisect_right(times, start)
    return snapshots[i - 1] if i else snapshots[0]


def increase(counters: Counters, series: str, start: float) -> float:
    """How much a series grew since ``start`` (0 for a series never seen)."""
    if not counters.snapshots:
        return 0.0
    base = _baseline(counters.snapshots, start)
    return max(counters.totals.get(series, 0.0) - base.totals.get(series, 0.0), 0.0)


def _bounds(counters: Counters, kind: str, version: str) -> list[str]:
    prefix = key(kind, version) + "|"
    found = {s.removeprefix(prefix) for s in counters.totals if s.startswith(prefix)}
    return sorted(found, key=lambda le: math.inf if le == INF else float(le))


def quantile(q: float, bounds: list[str], cumulative: list[float]) -> float | None:
    """Prometheus' ``histogram_quantile``: linear within the bucket that holds the q-th observation."""
    if not cumulative or cumulative[-1] <= 0:
        return None
    rank = q * cumulative[-1]
    i = next(i for i, c in enumerate(cumulative) if c >= rank)
    upper = math.inf if bounds[i] == INF else float(bounds[i])
    if math.isinf(upper):
        return float(bounds[i - 1]) if i > 0 else None
    lower = float(bounds[i - 1]) if i > 0 else 0.0
    below = cumulative[i - 1] if i > 0 else 0.0
    inside = cumulative[i] - below
    return lower + (upper - lower) * ((rank - below) / inside if inside > 0 else 1.0)


def version_sample(counters: Counters, version: str, start: float, limit_ms: float) -> VersionSample:
    """One served version's counts since ``start`` (see the module docstring for what is missing and what is zero)."""
    timed = increase(counters, key("timed", version), start)
    fast = increase(counters, key("latency", version, le_key(latency_le(limit_ms))), start)
    latency_bounds = _bounds(counters, "latency", version)
    p95 = quantile(0.95, latency_bounds, [increase(counters, key("latency", version, le), start) for le in latency_bounds])
    score_bounds = _bounds(counters, "score", version)
    cumulative = [increase(counters, key("score", version, le), start) for le in score_bounds]
    buckets = tuple(max(b - a, 0.0) for a, b in zip([0.0, *cumulative], cumulative, strict=False))
    full = len(score_bounds) == len(m.SCORE_BUCKETS) + 1
    return VersionSample(
        requests=increase(counters, key("requests", version), start),
        errors=increase(counters, key("errors", version), start),
        slow=max(timed - fast, 0.0),
        timed=timed,
        p95_ms=None if p95 is None else 1000.0 * p95,
        # no histogram yet (nothing scored) is all zeros, which the analysis reads as "no scores in the window"
        score_buckets=buckets if full else tuple(0.0 for _ in range(len(m.SCORE_BUCKETS) + 1)),
    )


@dataclass(frozen=True)
class Outcomes:
    """A version's delayed-label figures over the analysis window (``churnops.rollout.outcomes``); None when unknown."""

    auc: float | None = None
    labelled: float | None = None
    positive_rate: float | None = None


def observe(
    counters: Counters,
    scrape: Scrape | None,
    canary: str,
    stable: str,
    since: float,
    step_since: float,
    limit_ms: float,
    look: int,
    outcomes: Mapping[str, Outcomes] | None = None,
    problems: tuple[str, ...] = (),
) -> Observation:
    """The operator's Observation of a canary against its stable version, from the runner's own scrapes."""
    notes = list(problems)
    if scrape is None:
        notes.append("no scrape of the predictor in this step")
        return Observation(VersionSample(), VersionSample(), None, look, tuple(notes))
    samples = {}
    for version in (canary, stable):
        if version in scrape.served:
            sample = version_sample(counters, version, since, limit_ms)
            figures = (outcomes or {}).get(version, Outcomes())
            samples[version] = replace(sample, auc=figures.auc, labelled=figures.labelled, positive_rate=figures.positive_rate)
        else:
            notes.append(f"version {version} is not served by the predictor")
            samples[version] = VersionSample()
    c, s = samples[canary], samples[stable]
    unattributed = increase(counters, key("errors", UNATTRIBUTED), since)
    if unattributed:
        notes.append(f"{unattributed:.0f} server errors carry no version label: the error rate cannot be judged")
        c, s = replace(c, errors=None), replace(s, errors=None)
    step = increase(counters, key("requests", canary), step_since) if canary in scrape.served else None
    return Observation(c, s, step, look, tuple(notes))


def drift_signals(scrape: Scrape | None, version: str) -> tuple[bool | None, float | None]:
    """The predictor's live drift verdict for a version (after multiple-testing control) and its drifted share."""
    if scrape is None:
        return None, None
    detected = scrape.gauges.get(key("drift_detected", version))
    share = scrape.gauges.get(key("drifted_share", version))
    return (None if detected is None else detected >= 0.5), share
