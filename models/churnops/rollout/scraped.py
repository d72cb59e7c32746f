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

The figures are the answers to the operator's named queries
(``churnops_contract.queries.analysis_queries``): requests, server errors
(5xx), requests within the latency limit's bucket of the ``total`` stage,
score-histogram buckets and whether the version is served, per model version;
the one observation builder (``churnops_contract.rollout.observe``) reads them
for both drivers. A version the predictor does not serve answers only
``served`` (empty): its figures are missing, which the analysis reads as no
evidence, never as success.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from churnops_contract import metric_names as m
from churnops_contract.queries import latency_le
from churnops_contract.rollout.observe import Answer, failed, value

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


@dataclass(frozen=True)
class Outcomes:
    """A version's delayed-label figures over the analysis window (``churnops.rollout.outcomes``); None when unknown."""

    auc: float | None = None
    labelled: float | None = None  # None: the label source could not be read
    positive_rate: float | None = None


def _bucket_answer(counters: Counters, kind: str, version: str, start: float) -> Answer:
    return Answer({le: increase(counters, key(kind, version, le), start) for le in _bounds(counters, kind, version)})


def version_answers(counters: Counters, scrape: Scrape, role: str, version: str, start: float, limit_ms: float) -> dict[str, Answer]:
    """One version's ``<role>.<figure>`` answers, as Prometheus would give them for the same window."""
    if version not in scrape.served:
        return {f"{role}.served": Answer({})}
    timed = increase(counters, key("timed", version), start)
    fast = increase(counters, key("latency", version, le_key(latency_le(limit_ms))), start)
    latency_bounds = _bounds(counters, "latency", version)
    p95 = quantile(0.95, latency_bounds, [increase(counters, key("latency", version, le), start) for le in latency_bounds])
    out = {
        "served": value(1.0),
        "requests": value(increase(counters, key("requests", version), start)),
        "errors": value(increase(counters, key("errors", version), start)),
        "timed": value(timed),
        "fast": value(fast),
        "p95": Answer({}) if p95 is None else value(1000.0 * p95),
        "scores": _bucket_answer(counters, "score", version, start),
    }
    return {f"{role}.{name}": a for name, a in out.items()}


def label_answers(role: str, figures: Outcomes) -> dict[str, Answer]:
    """The prediction log's label figures; counted here (``labelled``), where Prometheus gives a coverage share."""
    if figures.labelled is None:
        return {f"{role}.labelled": failed("the prediction log or the labels could not be read")}
    out = {f"{role}.labelled": value(figures.labelled)}
    for name, x in (("auc", figures.auc), ("churn_rate", figures.positive_rate)):
        out[f"{role}.{name}"] = Answer({}) if x is None else value(x)
    return out


def answers(
    counters: Counters,
    scrape: Scrape | None,
    canary: str,
    stable: str,
    since: float,
    step_since: float,
    limit_ms: float,
    outcomes: Mapping[str, Outcomes] | None = None,
) -> dict[str, Answer]:
    """The analysis's named answers (``churnops_contract.queries.analysis_queries``) from the runner's own scrapes."""
    if scrape is None:
        return {}  # every figure missing: the check is inconclusive
    out: dict[str, Answer] = {}
    for role, version in (("canary", canary), ("stable", stable)):
        out.update(version_answers(counters, scrape, role, version, since, limit_ms))
        out.update(label_answers(role, (outcomes or {}).get(version, Outcomes(labelled=0.0))))
    if canary in scrape.served:
        out["canary.step_requests"] = value(increase(counters, key("requests", canary), step_since))
    out["unattributed_errors"] = value(increase(counters, key("errors", UNATTRIBUTED), since))
    return out


def drift_answers(scrape: Scrape | None, version: str) -> dict[str, Answer]:
    """The predictor's live drift verdict and drifted share of a version, as the retraining queries name them."""
    if scrape is None:
        return {}
    out = {}
    for name, kind in (("drift_verdict", "drift_detected"), ("drifted_share", "drifted_share")):
        x = scrape.gauges.get(key(kind, version))
        out[name] = Answer({}) if x is None else value(x)
    return out
