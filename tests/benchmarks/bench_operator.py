"""Operator benchmark: verdict quality on metric streams, behaviour under faults, and reconcile throughput and memory at 100 resources.

Part 1 replays the same seeded metric streams through two rules:
- ChurnOps: the rollout core's pass (``churnops_contract.rollout.core.decide``, the
  one both drivers run) on counts accumulated since the analysis began: its
  ``analysis.judge`` (sequential tests valid under repeated looks) and its state
  machine (``machine.decide``: steps, holds, progress deadline);
- Flagger: the rule fluxcd/flagger applies (``advanceCanary`` in
  pkg/controller/scheduler.go, ``runMetricChecks`` in scheduler_metrics.go; see the
  comment above ``FlaggerMetric``): custom metric templates for the same limits,
  each judged on one interval against its ``thresholdRange``, no values failing the
  check, ``analysis.threshold`` failed checks rolling back, ``stepWeights`` steps;
  once without and once with an AUC-delta metric.
All use the same steps, interval and failure threshold; a labelled replay gives every
prediction its label at once (the best case for a per-interval AUC check). A stream is a
rollout's per-interval traffic: requests with both versions' answers (errors,
latencies, calibrated scores) and churn labels, routed by the rule's canary weight, so
every rule sees the same requests. It prints the false-rollback rate for a canary equal
to the stable model and the detection rate for a canary 0.03 AUC worse and for one with
2 % errors, each against its goal, then what Flagger's analysis cannot express.

Part 2 injects faults into the answers a driver gets, and drives the core's pass
with them: the answers to ``queries.analysis_queries`` are built from simulated
traffic, broken (Prometheus down, flaky, malformed raw bodies parsed by
``observe.parse_answer``, the canary's label coverage missing, MLflow down), turned
into the observation by ``observe.analysis_observation`` and handed to
``core.decide`` in a ``World``. For a good canary (equal to stable) and a bad one
it prints the share of rollouts promoted on missing evidence and frozen past the
progress deadline (goal 0 %), and of good canaries rejected for good: because of a
fault (goal 0 %) and in all (the tests' own false rollbacks, goal <= 2 %). Probe
rows (a documented rule decides them) are printed but not judged.

Part 3 starts the operator process against kmock's Kubernetes API (and the
harness's fake KServe controller, which reports each InferenceService Ready) with 100
ModelDeployments, each taking a version and then a healthy canary through
every step, and prints reconcile passes per second, the mean pass and the
operator's peak memory against their goals, the time until all are promoted,
and the CPU the operator, kmock, the fakes and this driver spent. kmock and the fakes
(Prometheus, MLflow, KFP) run in child processes of their own (``harness_procs``), so
that the harness's GIL is not what the operator's requests wait for; the fake KServe
controller is a thread of this process. It runs twice. The capacity run
ticks every second: 100 resources ask for up to 100 passes/s, more than these
2 cores serve, so the rate measures what the operator sustains (at the default
10 s the timer alone caps it at 10/s) and every pass waits in the queues of a
saturated machine. The latency run ticks every 1.75 s: the resources ask for
up to 57 passes/s, above the goal and below the capacity, and the mean pass is
judged there, with the rate actually served.

    python tests/benchmarks/bench_operator.py [--runs 500] [--fault-runs 200] [--resources 100]
"""

from __future__ import annotations

import argparse
import functools
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from churnops_contract import metric_names as m
from churnops_contract import queries
from churnops_contract.queries import latency_le
from churnops_contract.rollout import analysis, core, observe
from churnops_contract.rollout.analysis import Observation, VersionSample
from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.observe import Answer
from churnops_contract.rollout.spec import Analysis, DeploymentSpec, parse
from churnops_contract.rollout.status import Health
from tests.benchmarks.harness_procs import Harness
from tests.operators.harness import MD_PATH, NS, crd_defaults
from tests.operators.kubemock import ADMIN_TOKEN

STEPS = (5, 25, 50, 100)
# Flagger's stepWeights for the same rollout: it promotes after a passing analysis at its maxWeight (the last step), so
# 50 is its last; a step at 100 % would leave the stable no traffic, and every canary-against-stable query no values.
FLAGGER_STEPS = (5, 25, 50)
INTERVAL_S = 300.0
FAILURE_THRESHOLD = 2
MIN_SAMPLES = 200
HORIZON = 40  # intervals per simulated rollout: past the 1 h progress deadline at the last step
STABLE_AUC = 0.85
CHURN_RATE = 0.2
SCORE_EDGES = np.array([0.0, *m.SCORE_BUCKETS[:-1], np.inf])


@dataclass(frozen=True)
class Scenario:
    name: str
    canary_error_rate: float = 0.001
    canary_auc: float = STABLE_AUC


SCENARIOS = (
    Scenario("equal to stable"),
    Scenario("AUC 0.03 worse", canary_auc=STABLE_AUC - 0.03),
    Scenario("2 % errors", canary_error_rate=0.02),
)


def separation(auc: float) -> float:
    """Mean shift between positives' and negatives' normal scores that gives ``auc``."""
    return math.sqrt(2.0) * float(np.sqrt(2.0) * _erfinv(2 * auc - 1))


def _erfinv(y: float) -> float:
    # Winitzki's approximation refined by two Newton steps; enough for scenario parameters.
    a = 0.147
    ln = math.log(1 - y * y)
    x = math.copysign(math.sqrt(math.sqrt((2 / (math.pi * a) + ln / 2) ** 2 - ln / a) - (2 / (math.pi * a) + ln / 2)), y)
    for _ in range(2):
        x -= (math.erf(x) - y) / (2 / math.sqrt(math.pi) * math.exp(-x * x))
    return x


@dataclass
class Window:
    """One version's traffic in one interval."""

    n: int
    errors: int
    latencies_ms: np.ndarray
    scores: np.ndarray
    labels: np.ndarray


@dataclass(frozen=True)
class Answers:
    """What one version answers to each of an interval's requests."""

    errors: np.ndarray  # bool
    latencies_ms: np.ndarray
    scores: np.ndarray

    def served(self, mask: np.ndarray, labels: np.ndarray) -> Window:
        return Window(int(mask.sum()), int(self.errors[mask].sum()), self.latencies_ms[mask], self.scores[mask], labels[mask])


def traffic(rng: np.random.Generator, labels: np.ndarray, error_rate: float, auc: float) -> Answers:
    n = len(labels)
    z = rng.normal(0.0, 1.0, n) + labels * separation(auc)
    scores = 1.0 / (1.0 + np.exp(-(z - 1.6)))  # calibrated-looking probabilities, mostly low
    return Answers(rng.random(n) < error_rate, rng.lognormal(math.log(30.0), 0.5, n), scores)


@dataclass(frozen=True)
class Streams:
    """The seeded metric streams both rules are judged on.

    Interval ``look`` of rollout ``run`` holds the same requests, churn labels and answers of both
    versions whichever rule runs it: a rule's weight only decides which version serves each request.
    """

    seed: int
    rate: float
    scenario: Scenario

    def interval(self, run: int, look: int, weight: float) -> tuple[Window, Window]:
        rng = np.random.default_rng([self.seed, run, look])
        n = int(rng.poisson(self.rate * INTERVAL_S))
        labels = rng.random(n) < CHURN_RATE
        to_canary = rng.random(n) < weight / 100.0
        sc = self.scenario
        canary, stable = traffic(rng, labels, sc.canary_error_rate, sc.canary_auc), traffic(rng, labels, 0.001, STABLE_AUC)
        return canary.served(to_canary, labels), stable.served(~to_canary, labels)


def auc_of(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return None
    ranks = np.empty(len(scores))
    ranks[np.argsort(scores, kind="mergesort")] = np.arange(1, len(scores) + 1)
    return float((ranks[labels].sum() - pos * (pos + 1) / 2) / (pos * neg))


def summarize(windows: list[Window], limit_ms: float, labelled: bool) -> VersionSample:
    n = sum(w.n for w in windows)
    lat = np.concatenate([w.latencies_ms for w in windows]) if windows else np.array([])
    scores = np.concatenate([w.scores for w in windows]) if windows else np.array([])
    labels = np.concatenate([w.labels for w in windows]) if windows else np.array([], dtype=bool)
    le_ms = float(latency_le(limit_ms)) * 1000.0
    return VersionSample(
        requests=float(n),
        errors=float(sum(w.errors for w in windows)),
        slow=float((lat > le_ms).sum()),
        timed=float(n),
        p95_ms=float(np.percentile(lat, 95)) if n else None,
        score_buckets=tuple(float(c) for c in np.histogram(scores, SCORE_EDGES)[0]),
        auc=auc_of(scores, labels) if labelled else None,
        labelled=float(n) if labelled else 0.0,
        positive_rate=float(labels.mean()) if labelled and n else None,
    )


# Flagger's rule, as fluxcd/flagger applies it (read at commit 15bd6ad, 2026-07-21; our own code, not a port):
# - pkg/controller/scheduler.go, advanceCanary: one tick per analysis.interval. A tick first rolls back when
#   status.failedChecks >= analysis.threshold (GetAnalysisThreshold, default 1), so the canary keeps its weight for
#   one more interval after the last failed check; a canary at weight 0 with no iterations gets no analysis and moves
#   to the first step; otherwise runAnalysis: any failed metric adds one to failedChecks (never reset within a
#   rollout) and the weight stays; a passing analysis moves to the next weight (nextStepWeight over
#   analysis.stepWeights, maxWeight = the last one), and at maxWeight promotes.
# - pkg/controller/scheduler_metrics.go, runMetricChecks: each metrics[] entry renders its template's query over
#   its own `interval` (GetMetricInterval: 1m unless set) and compares the one value with thresholdRange{min,max};
#   the first metric out of range, or one whose query fails, fails the whole analysis.
# - pkg/metrics/providers/prometheus.go, RunQuery: an empty result or NaN is ErrNoValuesFound, which
#   runMetricChecks treats as a failed check ("Halt advancement no values found").
# There is no minimum sample size and no "pending": a check passes or fails on one interval's value.


@dataclass(frozen=True)
class FlaggerMetric:
    """One ``analysis.metrics`` entry with a custom metric template: the query's value over the interval and its ``thresholdRange``."""

    name: str
    query: Callable[[VersionSample, VersionSample], float | None]  # canary, stable -> the value; None: no values found
    min: float | None = None
    max: float | None = None


def flagger_metrics(a: Analysis, auc: bool) -> tuple[FlaggerMetric, ...]:
    """The templates a Flagger user would write for our limits (the CRD's): the canary's error rate and p95, the PSI of its
    scores against the stable's, and with ``auc`` the canary's AUC minus the stable's over the same interval."""

    def psi(c: VersionSample, s: VersionSample) -> float | None:
        if not c.requests or not s.requests or c.score_buckets is None or s.score_buckets is None:
            return None
        return analysis.psi_of_counts(c.score_buckets, s.score_buckets)

    ops = (
        FlaggerMetric("error-rate", lambda c, s: (c.errors or 0.0) / c.requests if c.requests else None, max=a.max_error_rate),
        FlaggerMetric("latency-p95", lambda c, s: c.p95_ms, max=a.max_latency_p95_ms),
        FlaggerMetric("score-psi", psi, max=a.max_score_psi),
    )
    delta = FlaggerMetric("auc-delta", lambda c, s: c.auc - s.auc if c.auc is not None and s.auc is not None else None, min=a.min_auc_delta)
    return (*ops, delta) if auc else ops


def flagger_analysis(metrics: tuple[FlaggerMetric, ...], c: VersionSample, s: VersionSample) -> bool:
    """runMetricChecks: True when every metric has a value within its range."""
    for metric in metrics:
        value = metric.query(c, s)
        if value is None or math.isnan(value):
            return False  # ErrNoValuesFound: a failed check
        if (metric.min is not None and value < metric.min) or (metric.max is not None and value > metric.max):
            return False
    return True


@dataclass
class Result:
    rolled_back: bool = False
    promoted: bool = False
    intervals: int = 0  # until the rollout ended (or the horizon)


def ours(streams: Streams, run: int, spec: DeploymentSpec, labelled: bool) -> Result:
    """One rollout through the core's pass (``core.decide``: ``analysis.judge`` and the state machine), as a driver runs it."""
    now = 0.0
    raw = RolloutStatus(phase="Promoted", stable="1").to_status()
    raw = core.decide(spec, raw, core.World(target="2"), 1, now).status  # the canary starts ...
    raw = core.decide(spec, raw, core.World(target="2", canary_ready=True), 1, now).status  # ... and takes traffic at once
    seen: list[tuple[Window, Window, float]] = []  # canary, stable, interval end
    limit = spec.rollout.analysis.max_latency_p95_ms
    for look in range(1, HORIZON + 1):
        now += INTERVAL_S
        seen.append((*streams.interval(run, look, raw["canaryWeight"]), now))
        due = core.due(spec, raw, now, canary_ready=True)
        assert due.check and due.step_since is not None
        step_n = sum(c.n for c, _, end in seen if end > due.step_since)
        obs = Observation(
            summarize([c for c, _, _ in seen], limit, labelled), summarize([x for _, x, _ in seen], limit, labelled), step_n, due.look
        )
        raw = core.decide(spec, raw, core.World(target="2", canary_ready=True, observation=obs), 1, now).status
        if raw["canaryVersion"] is None:
            return Result(rolled_back=raw["rolloutPhase"] == "RolledBack", promoted=raw["stableVersion"] == "2", intervals=look)
    return Result(intervals=HORIZON)


def flagger(streams: Streams, run: int, metrics: tuple[FlaggerMetric, ...], labelled: bool, limit_ms: float) -> Result:
    """One rollout under Flagger's rule (advanceCanary), its metrics' interval set to the analysis interval (Flagger's default
    1m would judge only the last minute of each 5 min interval), with the same threshold and ``FLAGGER_STEPS``."""
    weight, failed = FLAGGER_STEPS[0], 0  # the first tick: no analysis at weight 0, straight to the first step
    for look in range(1, HORIZON + 1):
        c, s = streams.interval(run, look, weight)  # served at `weight` until the tick at the end of this interval
        if failed >= FAILURE_THRESHOLD:
            return Result(rolled_back=True, intervals=look)
        if not flagger_analysis(metrics, summarize([c], limit_ms, labelled), summarize([s], limit_ms, labelled)):
            failed += 1
            continue
        if weight >= FLAGGER_STEPS[-1]:  # maxWeight
            return Result(promoted=True, intervals=look)
        weight = FLAGGER_STEPS[FLAGGER_STEPS.index(weight) + 1]
    return Result(intervals=HORIZON)


GOALS: dict[str, tuple[str, Callable[[float], bool]]] = {
    "false rollbacks": ("<= 2 %", lambda share: share <= 0.02),
    "detected": (">= 95 %", lambda share: share >= 0.95),
}


def bench_verdicts(runs: int, seed: int, rate: float) -> bool:
    """The verdict table at one request rate; True when ChurnOps meets every goal."""
    print(f"== Verdicts: {runs} rollouts per scenario; steps {STEPS} (Flagger: stepWeights {FLAGGER_STEPS}, then promotion),")
    print(
        f"   {INTERVAL_S:.0f} s interval, {rate:g} req/s, failureThreshold {FAILURE_THRESHOLD} (Flagger: analysis.threshold), limits as the"
    )
    print("   CRD defaults unless noted; every rule sees the same seeded requests, labels and answers per interval (its weights only")
    print("   route them);")
    print(f"   ChurnOps runs the rollout core's pass (core.decide; minSamples {MIN_SAMPLES}, progress deadline 1 h);")
    print("   Flagger runs advanceCanary's rule: metric templates judged on one interval, thresholdRange, failed checks;")
    print(
        f"   'Flagger ops' has error rate, p95 and score PSI; 'Flagger +AUC' adds canary AUC - stable AUC; all stop at {HORIZON} intervals"
    )
    met = True
    for labelled, delta in ((False, None), (True, None), (True, -0.02)):
        over = {} if delta is None else {"analysis": {"minAUCDelta": delta}}
        spec = parse(
            {
                "model": {"version": "2"},
                "featureService": "f",
                "rollout": {
                    "steps": list(STEPS),
                    "minSamples": MIN_SAMPLES,
                    "failureThreshold": FAILURE_THRESHOLD,
                    "interval": f"{INTERVAL_S:.0f}s",
                    **over,
                },
            }
        )
        a = spec.rollout.analysis
        what = f"labelled replay, minAUCDelta {a.min_auc_delta:g}" if labelled else "no labels yet (AUC pending)"
        print(f"-- {what}")
        print(f"   {'scenario':<18} {'ChurnOps (sequential)':<29} {'Flagger ops':<29} {'Flagger +AUC':<29} {'goal':<8} verdict")
        for sc in SCENARIOS:
            if not labelled and sc.canary_auc != STABLE_AUC:
                continue
            streams = Streams(seed, rate, sc)
            mine = [ours(streams, run, spec, labelled) for run in range(runs)]
            theirs = [
                [flagger(streams, run, flagger_metrics(a, auc), labelled, a.max_latency_p95_ms) for run in range(runs)]
                for auc in (False, True)
            ]
            kind = "false rollbacks" if sc.name == "equal to stable" else "detected"
            goal, ok = GOALS[kind]
            passed = ok(_share(mine))
            met &= passed
            cells = "".join(f"{_rate(r, kind):<30}" for r in (mine, *theirs))
            print(f"   {sc.name:<18} {cells}{goal:<8} {'PASS' if passed else 'FAIL'}")
        print(f"   {'':<18} {'(median intervals to the end; undecided at the horizon); verdict: ChurnOps against the goal'}")
    return met


def _share(results: list[Result]) -> float:
    return sum(r.rolled_back for r in results) / len(results)


def _rate(results: list[Result], kind: str) -> str:
    median = float(np.median([r.intervals for r in results]))
    open_ = sum(not (r.rolled_back or r.promoted) for r in results)
    return f"{_share(results):>6.1%} {kind.rsplit(maxsplit=1)[-1]} ({median:g}; {open_})"


def print_flagger_limits() -> None:
    """What our checks need that Flagger's analysis cannot express (from the files cited above Flagger's rule)."""
    lines = (
        "== What Flagger cannot judge (scheduler.go advanceCanary, scheduler_metrics.go runMetricChecks, providers/prometheus.go RunQuery)",
        "   It can: any PromQL a metric template renders, one value per metric per tick over the metric's own interval, within a",
        "   constant thresholdRange; e.g. canary AUC - stable AUC on that interval's labelled predictions, or a PSI built from `le` pairs.",
        "   It cannot, with templates alone:",
        "   - accumulate evidence across intervals: each tick sees one window; the only memory is status.failedChecks. A sequential",
        "     test over the whole rollout (our AUC test on labels that arrive hours late, valid under repeated looks) does not fit;",
        "   - say 'pending': no values (labels not joined yet, NaN, an empty series) fails the check, so an AUC metric rolls back every",
        "     canary whose labels lag the interval (the 'Flagger +AUC' column without labels), and `or vector(0)` promotes on no evidence;",
        "   - wait for a sample size: a PromQL gate (`and on() sum(increase(...)) > N`) returns no values, i.e. fails instead of waiting;",
        "   - scale a threshold with the sample: a constant AUC delta is noise on small windows (false rollbacks) and blind on large ones;",
        "   - hold, withdraw and retry on missing evidence, or judge label coverage, calibration and churn rate against delayed labels.",
        "   Model quality is therefore judged at all only through a rollout webhook (analysis.webhooks, called by runAnalysis before the",
        "   metrics): an outside service that keeps its own state and answers pass/fail, i.e. our analysis run elsewhere.",
    )
    print("\n".join(lines))


# --- Part 2: faults, through the core's pass --------------------------------------------------------------

FAULT_HORIZON = 60  # intervals (5 h): room for withdrawals, backoffs and retries
FAULT_RATE = 20.0  # requests per second over both versions
FAULT_STABLE_AUC = 0.8
BUCKETS = len(m.SCORE_BUCKETS) + 1  # per-bucket counts from the cumulative ``le`` answers, +Inf included (as the drivers use)
SCORE_LE = (*(repr(float(b)) for b in m.SCORE_BUCKETS), queries.INF)  # spelled as the Prometheus client writes them
LATENCY_LE_MS = float(latency_le(Analysis().max_latency_p95_ms)) * 1000.0
SLOW_SHARE = 1.0 - NormalDist().cdf(math.log(LATENCY_LE_MS / 30.0) / 0.5)  # of the lognormal latencies of ``traffic``
P95_MS = 30.0 * math.exp(0.5 * NormalDist().inv_cdf(0.95))  # reported, not judged
# Scores as in ``traffic`` (sigmoid(z - 1.6), z normal, shifted for positives), drawn per bin of z: a fine grid
# whose edges include the score buckets' bounds, so that per-bucket counts and the AUC come out of the same draw.
_BOUNDS_Z = np.array([1.6 + math.log(b / (1.0 - b)) for b in m.SCORE_BUCKETS if b < 1.0])
Z_EDGES = np.union1d(np.arange(-6.0, 9.0, 0.05), _BOUNDS_Z)
FINE = len(Z_EDGES) - 1
BUCKET_OF = np.searchsorted(_BOUNDS_Z, Z_EDGES[:-1], side="right")  # score bucket of each fine bin
Span = tuple[float, float]  # [from, to) in intervals since the rollout began


@functools.cache
def fine_probs(shift: float) -> np.ndarray:
    cdf = np.array([NormalDist(shift, 1.0).cdf(float(z)) for z in Z_EDGES])
    cdf[0], cdf[-1] = 0.0, 1.0  # the tails fold into the end bins
    return np.diff(cdf)


def tally(rng: np.random.Generator, n: int, error_rate: float, auc: float) -> np.ndarray:
    """One version's traffic in one interval as counts: [requests, errors, slow, positives' z bins..., negatives' z bins...]."""
    out = np.zeros(3 + 2 * FINE)
    if n <= 0:
        return out
    pos = int(rng.binomial(n, CHURN_RATE))
    out[:3] = n, rng.binomial(n, error_rate), rng.binomial(n, SLOW_SHARE)
    out[3 : 3 + FINE] = rng.multinomial(pos, fine_probs(round(separation(auc), 6)))
    out[3 + FINE :] = rng.multinomial(n - pos, fine_probs(0.0))
    return out


def auc_of_bins(pos: np.ndarray, neg: np.ndarray) -> float | None:
    """Mann-Whitney AUC from binned scores (ties within a bin count one half)."""
    p, n = float(pos.sum()), float(neg.sum())
    if p == 0 or n == 0:
        return None
    below = np.cumsum(neg) - neg
    return float((pos * (below + 0.5 * neg)).sum() / (p * n))


def role_answers(role: str, t: np.ndarray, labelled: bool) -> dict[str, Answer]:
    """What a healthy Prometheus answers for one version's figures over the analysis window."""
    n, errors, slow = (float(x) for x in t[:3])
    pos, neg = t[3 : 3 + FINE], t[3 + FINE :]
    cumulative = np.cumsum(np.bincount(BUCKET_OF, weights=pos + neg, minlength=len(m.SCORE_BUCKETS)))
    scores = {le: float(c) for le, c in zip(SCORE_LE, (*cumulative, cumulative[-1]), strict=True)}
    auc = auc_of_bins(pos, neg) if labelled else None
    figures = {
        "requests": observe.value(n),
        "errors": observe.value(errors),
        "timed": observe.value(n),
        "fast": observe.value(n - slow),
        "p95": observe.value(P95_MS),
        "scores": Answer(scores),
        "auc": Answer({}) if auc is None else observe.value(auc),
        "coverage": observe.value(1.0 if labelled else 0.0),  # labelled count = coverage x requests
        "churn_rate": observe.value(float(pos.sum()) / n) if labelled and n else Answer({}),
        "served": observe.value(1.0),
    }
    return {f"{role}.{name}": a for name, a in figures.items()}


ANSWER_NAMES = frozenset(queries.analysis_queries("m", "2", "1", INTERVAL_S, INTERVAL_S, 100.0))


def honest_answers(canary: np.ndarray, stable: np.ndarray, step_requests: float, labelled: bool) -> dict[str, Answer]:
    answers = {**role_answers("canary", canary, labelled), **role_answers("stable", stable, labelled)}
    answers["canary.step_requests"] = observe.value(step_requests)
    answers["unattributed_errors"] = observe.value(0.0)
    assert answers.keys() == ANSWER_NAMES, sorted(answers.keys() ^ ANSWER_NAMES)
    return answers


def _prom_number(x: float) -> str:
    return "NaN" if math.isnan(x) else ("+Inf" if x > 0 else "-Inf") if math.isinf(x) else repr(x)


def body_of(a: Answer, t: float) -> dict[str, Any]:
    """The raw ``/api/v1/query`` body Prometheus sends for an answer (values as strings, ``le`` as a label)."""
    if a.failed:
        return {"status": "error", "errorType": "timeout", "error": a.note}
    assert a.values is not None
    result = [{"metric": {"le": k} if k else {}, "value": [t, _prom_number(v)]} for k, v in a.values.items()]
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


def _vector(result: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": result}}


MALFORMED: dict[str, Callable[[float], Any]] = {
    "string value": lambda t: _vector([{"metric": {}, "value": [t, "twelve"]}]),
    "NaN value": lambda t: _vector([{"metric": {}, "value": [t, "NaN"]}]),
    "matrix result": lambda t: {
        "status": "success",
        "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[t, "1"], [t + 15, "2"]]}]},
    },
    "sample without value": lambda t: _vector([{"metric": {}}]),
    "result as a string": lambda t: _vector("12"),
    "string resultType": lambda t: {"status": "success", "data": {"resultType": "string", "result": [t, "12"]}},
    "value not a pair": lambda t: _vector([{"metric": {}, "value": [t]}]),
    "error status": lambda t: {"status": "error", "errorType": "bad_data", "error": "parse error"},
    "not JSON object": lambda t: "<html>502 Bad Gateway</html>",
}


def _check_malformed() -> None:
    """Every malformed body is a missing figure (failed, or not finite) and a healthy body round-trips."""
    for kind, make in MALFORMED.items():
        a = observe.parse_answer(make(1.0))
        assert a.failed or not all(math.isfinite(v) for v in (a.values or {}).values()), (kind, a)
    healthy = Answer({le: float(i) for i, le in enumerate(SCORE_LE)})
    assert observe.parse_answer(body_of(healthy, 1.0)) == healthy


@dataclass(frozen=True)
class Fault:
    name: str
    labelled: bool = False  # a labelled replay: both versions report label coverage 1.0, AUC and churn rate
    bad: Scenario = Scenario("2 % errors", canary_error_rate=0.02)
    prometheus_down: Span | None = None  # every answer failed
    flaky: float = 0.0  # each answer fails with this probability at every check of the rollout
    malformed: tuple[Span, float] | None = None  # raw bodies for every answer; in the span each is malformed with this probability
    coverage: tuple[Span, str] | None = None  # the canary's label coverage answer: failed, empty, NaN, ... (see ``_coverage``)
    registry_down: Span | None = None  # MLflow unreachable: the target is unknown, health problem "registry"
    emptied: tuple[Span, tuple[str, ...]] | None = None  # these answers come back empty (no series), e.g. a partial response
    hides_bad: bool = False  # the fault hides the only evidence against the bad canary: promoting it is promoting on missing evidence
    probe: bool = False  # printed, but not part of the verdict (a documented rule decides it)
    require_auc: bool = False  # the spec's rollout.analysis.requireAUC


FAULTS = (
    Fault("no fault (baseline)"),
    Fault("no fault (labelled baseline)", labelled=True, bad=Scenario("AUC 0.6 vs 0.8", canary_auc=0.6)),
    Fault("Prometheus down 2 intervals", prometheus_down=(2, 4)),
    Fault("Prometheus down 6 intervals", prometheus_down=(2, 8)),
    Fault("Prometheus flaky (2 % of answers)", flaky=0.02),
    Fault("malformed bodies (10 %, 6 intervals)", malformed=((2, 8), 0.1)),
    Fault("malformed bodies (100 %, 3 intervals)", malformed=((2, 5), 1.0)),
    *(
        Fault(
            f"canary coverage {shown} (30 intervals)",
            labelled=True,
            bad=Scenario("AUC 0.6 vs 0.8", canary_auc=0.6),
            coverage=((0, 30), kind),
            hides_bad=True,
        )
        for kind, shown in (("failed", "failed"), ("empty", "empty"), ("NaN", "NaN"), ("empty, no AUC", "and AUC empty"))
    ),
    Fault(
        "canary coverage reported 0 (probe, 30 int.)",
        labelled=True,
        bad=Scenario("AUC 0.6 vs 0.8", canary_auc=0.6),
        coverage=((0, 30), "0, no AUC"),
        probe=True,
    ),
    Fault(
        "canary coverage reported 0, requireAUC",
        labelled=True,
        bad=Scenario("AUC 0.6 vs 0.8", canary_auc=0.6),
        coverage=((0, 30), "0, no AUC"),
        hides_bad=True,
        require_auc=True,
    ),
    Fault("canary errors answer empty", emptied=((0, FAULT_HORIZON), ("canary.errors",)), hides_bad=True),
    Fault("MLflow down 6 intervals", registry_down=(1, 7)),
    Fault("MLflow down 6 intervals (labelled)", labelled=True, bad=Scenario("AUC 0.6 vs 0.8", canary_auc=0.6), registry_down=(1, 7)),
    Fault("MLflow down 10 + Prometheus down 6", prometheus_down=(2, 8), registry_down=(4, 14)),
)


def _within(span: Span | None, now: float) -> bool:
    return span is not None and span[0] * INTERVAL_S <= now < span[1] * INTERVAL_S


def _coverage(answers: dict[str, Answer], kind: str) -> None:
    if kind == "failed":
        answers["canary.coverage"] = observe.failed("query timed out")
    elif kind == "empty":
        answers["canary.coverage"] = Answer({})
    elif kind == "NaN":
        answers["canary.coverage"] = observe.value(math.nan)
    elif kind == "empty, no AUC":
        answers["canary.coverage"] = answers["canary.auc"] = answers["canary.churn_rate"] = Answer({})
    elif kind == "0, no AUC":
        answers["canary.coverage"] = observe.value(0.0)
        answers["canary.auc"] = answers["canary.churn_rate"] = Answer({})
    else:
        raise ValueError(kind)


def faulty_answers(f: Fault, answers: dict[str, Answer], now: float, rng: np.random.Generator) -> dict[str, Answer]:
    if _within(f.prometheus_down, now):
        return {name: observe.failed("connect: connection refused") for name in answers}
    if f.flaky:
        answers = {name: observe.failed("context deadline exceeded") if rng.random() < f.flaky else a for name, a in answers.items()}
    if f.coverage is not None and _within(f.coverage[0], now):
        _coverage(answers, f.coverage[1])
    if f.emptied is not None and _within(f.emptied[0], now):
        answers.update(dict.fromkeys(f.emptied[1], Answer({})))
    if f.malformed is not None:
        (span, share), kinds = f.malformed, list(MALFORMED.values())
        bodies = {
            name: kinds[int(rng.integers(len(kinds)))](now) if _within(span, now) and rng.random() < share else body_of(a, now)
            for name, a in answers.items()
        }
        answers = {name: observe.parse_answer(body) for name, body in bodies.items()}
    return answers


@dataclass
class FaultResult:
    end: str = "open"  # promoted, rolled back (rejected on evidence), withdrawn (deferred, retried later), open (a canary in progress)
    on_missing_evidence: bool = False
    frozen: bool = False
    rejected: bool = False  # the canary version is in rejectedVersions at the end
    fault_rejected: bool = False  # ... and a failed check that counted toward it saw a fault (missing figures, a fault active)
    withdrawals: int = 0
    why: str = ""  # the first violation, for the report


def _missing_evidence(f: Fault, bad: bool, verdict: analysis.Verdict | None, now: float) -> str:
    """Why a promotion decided in this pass lacked the evidence it needed ('' when it had it)."""
    if verdict is None:
        return "promoted without a check"
    if verdict.outcome != "pass":
        return f"promoted on a {verdict.outcome} check: {verdict.reason}"
    missing = [
        r for r in verdict.results if r.outcome == "unavailable" or (f.labelled and r.name == "auc_delta" and r.outcome == "pending")
    ]
    if missing:
        return f"promoted with {', '.join(f'{r.name} {r.outcome}' for r in missing)}: {verdict.reason}"
    if bad and f.hides_bad and _fault_active(f, now):
        return f"bad canary promoted while its evidence was hidden: {verdict.reason}"
    return ""


def _fault_active(f: Fault, now: float) -> bool:
    spans = (f.prometheus_down, f.registry_down, *(x[0] for x in (f.malformed, f.coverage, f.emptied) if x is not None))
    return any(_within(span, now) for span in spans)


def fault_rollout(f: Fault, bad: bool, spec: DeploymentSpec, rng: np.random.Generator) -> FaultResult:
    """One rollout of version 2 against stable 1, one pass per interval, the faults applied to the answers a pass gets."""
    canary = f.bad if bad else Scenario("good", canary_auc=FAULT_STABLE_AUC)
    stable_auc = FAULT_STABLE_AUC
    rollout = spec.rollout
    raw: dict[str, Any] = RolloutStatus(phase="Promoted", stable="1").to_status()
    res = FaultResult()
    empty = np.zeros(3 + 2 * FINE)
    c_win, s_win, step_n = empty, empty, 0.0  # the analysis window's counts, and the canary's requests in the step
    faulty_failures: set[int] = set()  # rollouts (rolloutId) with a failed check made under a fault
    for k in range(FAULT_HORIZON + 1):
        now = k * INTERVAL_S
        if k:  # the last interval's traffic, split as the persisted status says (the driver applied it)
            total = int(rng.poisson(FAULT_RATE * INTERVAL_S))
            weight = raw["canaryWeight"] if raw["canaryVersion"] and raw["trafficSince"] is not None else 0
            nc = int(rng.binomial(total, weight / 100.0))
            c_win = c_win + tally(rng, nc, canary.canary_error_rate, canary.canary_auc)
            s_win = s_win + tally(rng, total - nc, 0.001, stable_auc)
            step_n += nc
        registry_down = _within(f.registry_down, now)
        problems = {"registry": "MLflow: connection refused"} if registry_down else {}
        ready = raw["canaryVersion"] is not None  # the serving objects carry the canary and report it ready
        due = core.due(spec, raw, now, ready)
        observation = None
        if due.check:
            answers = faulty_answers(f, honest_answers(c_win, s_win, step_n, f.labelled), now, rng)
            if all(a.failed for a in answers.values()):
                problems["metrics"] = next(iter(answers.values())).note
            observation = observe.analysis_observation(answers, due.look, BUCKETS)
        world = core.World(
            target=None if registry_down else "2",
            target_problem="MLflow unreachable" if registry_down else None,
            health=Health(True, problems),
            canary_ready=ready,
            observation=observation,
        )
        plan = core.decide(spec, raw, world, 1, now)
        new = plan.status
        if (
            plan.verdict is not None
            and plan.verdict.outcome == "fail"
            and (_fault_active(f, now) or (observation and observation.problems))
        ):
            faulty_failures.add(raw["rolloutId"])
        if new["canaryVersion"] is not None and raw["canaryVersion"] is None:  # started: the serving follows at once
            new = core.decide(spec, new, replace(world, canary_ready=True, observation=None), 1, now).status
        if raw["canaryVersion"] is not None and new["canaryVersion"] is None:
            if new["stableVersion"] == "2":
                res.end = "promoted"
                why = _missing_evidence(f, bad, plan.verdict, now)
                if why and not res.on_missing_evidence:
                    res.on_missing_evidence, res.why = True, res.why or f"t={now:.0f} s: {why}"
            elif "2" in new["rejectedVersions"]:
                res.end, res.fault_rejected = "rolled back", raw["rolloutId"] in faulty_failures
            else:
                res.end, res.withdrawals = "withdrawn", res.withdrawals + 1
        elif new["canaryVersion"] is not None:
            res.end = "open"
            started = new["stepStartedAt"]
            if not res.frozen and (started is None or now - started > rollout.progress_deadline_s + rollout.interval_s):
                res.frozen, res.why = True, res.why or f"t={now:.0f} s: in progress since {started}: {new['message']}"
        if (new["trafficSince"], new["rolloutId"]) != (raw["trafficSince"], raw["rolloutId"]):
            c_win, s_win = empty, empty
        if new["stepStartedAt"] != raw["stepStartedAt"] or new["rolloutId"] != raw["rolloutId"]:
            step_n = 0.0
        raw = new
        if res.end in ("promoted", "rolled back"):
            break
    res.rejected = "2" in raw["rejectedVersions"]
    return res


def bench_faults(runs: int, seed: int) -> bool:
    """The fault table; True when every goal is met."""
    _check_malformed()
    rollout = {"steps": list(STEPS), "minSamples": MIN_SAMPLES, "failureThreshold": FAILURE_THRESHOLD, "interval": f"{INTERVAL_S:.0f}s"}
    spec = parse({"model": {"version": "2"}, "featureService": "f", "rollout": rollout})
    r = spec.rollout
    print(f"== Faults: {runs} rollouts per canary and scenario through the core's pass: answers -> observe.analysis_observation")
    print(
        f"   -> core.decide(World(observation=...)); steps {STEPS}, {INTERVAL_S:.0f} s interval, {FAULT_RATE:g} req/s, one pass per interval,"
    )
    print(
        f"   progress deadline {r.progress_deadline_s:.0f} s, inconclusiveLimit {r.inconclusive_limit}, failureThreshold {r.failure_threshold},"
    )
    print(
        f"   {FAULT_HORIZON} intervals; fault spans in intervals from the canary's start; good canary = stable (AUC {FAULT_STABLE_AUC} when labelled)."
    )
    print("   missing ev.: promoted on missing evidence; frozen: in progress > deadline + interval after its step began;")
    print("   rejected: the good canary in rejectedVersions at the end, by fault (a failed check made under a fault counted")
    print("   toward it) and in all (the rest are the sequential tests' false rollbacks on complete evidence, as in the table above);")
    print("   ends: promoted / withdrawn (deferred, to be retried) / rolled back (rejected) / still open; withdr.: withdrawals per rollout")
    print(
        f"   {'scenario':<44} {'canary':<15} {'missing ev.':>11} {'frozen':>7} {'rej. fault':>10} {'rej. all':>8}   {'ends':<16} {'withdr.':>7}"
    )
    print(f"   {'goal':<44} {'':<15} {'0 %':>11} {'0 %':>7} {'0 %':>10} {'<= 2 %':>8}")
    worst = dict.fromkeys(("missing", "frozen", "fault", "all"), 0.0)
    found: list[str] = []
    for i, f in enumerate(FAULTS):
        for bad in (False, True):
            rng = np.random.default_rng([seed, i, int(bad)])
            chosen = (
                replace(spec, rollout=replace(spec.rollout, analysis=replace(spec.rollout.analysis, require_auc=True)))
                if f.require_auc
                else spec
            )
            results = [fault_rollout(f, bad, chosen, rng) for _ in range(runs)]
            shares = {
                "missing": sum(x.on_missing_evidence for x in results) / runs,
                "frozen": sum(x.frozen for x in results) / runs,
                "fault": 0.0 if bad else sum(x.fault_rejected for x in results) / runs,
                "all": 0.0 if bad else sum(x.rejected for x in results) / runs,
            }
            ends = "/".join(str(sum(x.end == e for x in results)) for e in ("promoted", "withdrawn", "rolled back", "open"))
            withdrawals = sum(x.withdrawals for x in results) / runs
            name, kind = ("", f.bad.name) if bad else (f.name, "good (= stable)")
            fault, every = ("-", "-") if bad else (f"{shares['fault']:.1%}", f"{shares['all']:.1%}")
            print(
                f"   {name:<44} {kind:<15} {shares['missing']:>11.1%} {shares['frozen']:>7.1%} {fault:>10} {every:>8}   {ends:<16} {withdrawals:>7.2f}"
            )
            if f.probe:
                continue
            worst = {k: max(v, shares[k]) for k, v in worst.items()}
            example = next((x for x in results if x.on_missing_evidence or x.frozen or (not bad and x.fault_rejected)), None)
            if example is not None:
                found.append(f"{f.name}, {kind} canary: {example.why or 'rejected under a fault'}")
    verdicts = {k: "PASS" if v <= (0.02 if k == "all" else 0.0) else "FAIL" for k, v in worst.items()}
    v = verdicts
    print(f"   {'verdict (probe rows excluded)':<44} {'':<15} {v['missing']:>11} {v['frozen']:>7} {v['fault']:>10} {v['all']:>8}")
    for line in found:
        print(f"   first violation: {line[:400]}")
    return all(v == "PASS" for v in verdicts.values())


# --- Part 3: the operator process against kmock -----------------------------------------------------------


RECONCILE_TIMEOUT_S = 600.0
PASSES_GOAL = 50.0  # per second, with 100 ModelDeployments
MEAN_PASS_GOAL_MS = 100.0
RSS_GOAL_MIB = 150.0


def rss_peak_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"VmHWM:\s+(\d+) kB", text).group(1))  # type: ignore[union-attr]


def cpu_s(pid: int) -> float:
    """User and system CPU seconds of a process so far (fields 14 and 15 of /proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def bench_reconcile(resources: int, tick: float, judged: str) -> bool:
    """The reconcile figures of one run against the goals it judges (``judged``: "capacity" or "latency"); True when
    every goal judged is met.

    Capacity: a tick short enough that the resources ask for more passes than the machine serves; the passes/s
    measured are what the operator sustains, and each pass waits in the queues of a saturated machine. Latency: a
    tick at which they ask for a rate above the goal that the machine serves with room to spare, as a service is
    judged at a stated load below its capacity; the mean pass is judged there, with the rate actually served.
    """
    from tests.operators.harness import FakeKServe, OperatorProcess  # noqa: PLC0415

    demand = resources / tick
    print(
        f"== Reconcile ({judged}): {resources} ModelDeployments, tick {tick:g} s (up to {demand:.0f} passes/s asked), "
        "against kmock (2 cores, one process each)"
    )
    names = [f"md-{i:03d}" for i in range(resources)]
    with tempfile.TemporaryDirectory() as tmp, ExitStack() as children:
        # kmock and the fakes each in a process of their own: on this one's GIL they, not the operator, set the pace.
        kube = children.enter_context(Harness("kube", "--kubeconfig", str(Path(tmp) / "kubeconfig")))
        fakes = children.enter_context(Harness("fakes", "--models", *names, "--versions", "2"))
        kube_url = str(kube.ready["url"])
        api = httpx.Client(base_url=kube_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30)
        # The fake KServe controller here: this process only waits otherwise, and in kmock's it would take kmock's GIL.
        # A listing of every InferenceService a quarter second (the tests' 50 ms would have the fake controller, not the
        # operator, keep the emulator busy at 100 resources); readiness follows a step within that.
        kserve = FakeKServe(httpx.Client(base_url=kube_url, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, timeout=30), 0.25)
        kserve.thread.start()  # InferenceServices report Ready: a canary is judged only once its serving object is ready
        urls = fakes.ready
        operator = OperatorProcess(
            Path(kube.ready["kubeconfig"]), urls["prometheus"], urls["mlflow"], urls["kfp"], Path(tmp) / "op.log", tick
        )
        operator.args[operator.args.index("--metrics-port") + 1] = str(metrics_port := _free_port())
        operator.args[operator.args.index("--timeout") + 1] = "5"  # the operator's default
        operator.start()
        started = time.monotonic()
        for name in names:
            spec = {
                "model": {"registeredModel": name, "version": "1"},
                "featureService": "f",
                "rollout": {"interval": "1s", "minSamples": 100},
            }
            body = {"apiVersion": "churnops.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": name, "namespace": NS}}
            api.post(MD_PATH.format(ns=NS), json={**body, "spec": crd_defaults(spec)}).raise_for_status()

        def statuses() -> list[dict[str, Any]]:
            return [i.get("status") or {} for i in api.get(MD_PATH.format(ns=NS)).json().get("items") or []]

        def count(version: str) -> int:
            return sum(1 for s in statuses() if s.get("stableVersion") == version)

        def finished() -> tuple[int, int]:
            """Canaries promoted, and rolled back (a metric query failing under load fails its check)."""
            done = statuses()
            return sum(1 for s in done if s.get("stableVersion") == "2"), sum(1 for s in done if "2" in (s.get("rejectedVersions") or []))

        def wait(done: Callable[[], bool], what: str) -> None:
            """Until ``done``; past RECONCILE_TIMEOUT_S, stop with the messages of the deployments (never hang)."""
            deadline = time.monotonic() + RECONCILE_TIMEOUT_S
            while not done():
                if time.monotonic() > deadline:
                    messages = sorted({f"{s.get('rolloutPhase')}: {s.get('message')}"[:200] for s in statuses()})
                    operator.stop()
                    raise SystemExit(f"reconcile bench: {what} not done in {RECONCILE_TIMEOUT_S:.0f} s; statuses: {messages[:5]}")
                time.sleep(2)

        wait(lambda: count("1") >= resources, f"all {resources} deployed")
        deployed = time.monotonic() - started
        passes_before, (seconds_before, count_before) = _passes(metrics_port), _pass_time(metrics_port)
        assert operator.proc is not None
        cpu_before, own_before, load_before = cpu_s(operator.proc.pid), time.process_time(), os.getloadavg()[0]
        kube_before, fakes_before = cpu_s(kube.pid), cpu_s(fakes.pid)
        t0 = time.monotonic()
        for name in names:
            api.patch(
                f"{MD_PATH.format(ns=NS)}/{name}",
                json={"spec": {"model": {"version": "2"}}},
                headers={"Content-Type": "application/merge-patch+json"},
            ).raise_for_status()
        wait(lambda: sum(finished()) >= resources, f"all {resources} canaries promoted or rolled back")
        promoted_n, rolled_back = finished()
        promoted = time.monotonic() - t0
        passes = _passes(metrics_port) - passes_before
        seconds_after, count_after = _pass_time(metrics_port)
        seconds, count_ = seconds_after - seconds_before, count_after - count_before
        assert operator.proc is not None
        cpu, own = cpu_s(operator.proc.pid) - cpu_before, time.process_time() - own_before
        kube_cpu, fakes_cpu = cpu_s(kube.pid) - kube_before, cpu_s(fakes.pid) - fakes_before
        peak = rss_peak_kib(operator.proc.pid)
        operator.stop()
        kserve.stop.set()
        kserve.thread.join(5)
        reasons = sorted({str(s["history"][-1]["reason"])[:200] for s in statuses() if s.get("rolloutPhase") == "RolledBack"})
        denied: list[str] = kube.stop()["denied"]
        fakes.stop()
        rate, mean_ms, peak_mib = passes / promoted, 1000 * seconds / count_, peak / 1024
        # capacity: the rate and the memory; latency: the mean pass, counted only at a served rate above the goal
        checks = (rate >= PASSES_GOAL, mean_ms <= MEAN_PASS_GOAL_MS and rate >= PASSES_GOAL, peak_mib <= RSS_GOAL_MIB)
        judging = (True, False, True) if judged == "capacity" else (False, True, False)
        print(f"   all {resources} deployed (version 1) in {deployed:.1f} s")
        print(f"   {promoted_n} canaries promoted through {len(STEPS)} steps, {rolled_back} rolled back, all done in {promoted:.1f} s")
        print(f"   {'figure':<44} {'measured':>10} {'goal':>10}   verdict")
        rows = [
            (f"reconcile passes/s ({passes:.0f} passes)", rate, f">= {PASSES_GOAL:g}"),
            ("mean pass, ms (passes while rolling out)", mean_ms, f"<= {MEAN_PASS_GOAL_MS:g}"),
            ("operator peak memory (VmHWM), MiB", peak_mib, f"<= {RSS_GOAL_MIB:g}"),
        ]
        for (label, value, goal), ok, judge in zip(rows, checks, judging, strict=True):
            print(f"   {label:<44} {value:>10.1f} {goal:>10}   {verdict(ok) if judge else '(not judged in this run)'}")
        print(
            f"   CPU while the canaries rolled out: operator {1000 * cpu / max(passes, 1):.1f} ms per pass ({cpu / promoted:.0%} of a core);"
            f" kmock {kube_cpu / promoted:.0%}, fakes {fakes_cpu / promoted:.0%}, driver {own / promoted:.0%} of a core; RBAC refusals: {len(denied)}"
        )
        print(
            f"   machine load (1 min average, {os.cpu_count()} cores) at the start and the end: {load_before:.1f}, {os.getloadavg()[0]:.1f}"
        )
        for reason in reasons[:3]:
            print(f"   rolled back because: {reason}")
        return all(ok for ok, judge in zip(checks, judging, strict=True) if judge) and not denied and rolled_back == 0


def _free_port() -> int:
    from churnops.processes import free_port  # noqa: PLC0415

    return free_port()


def _passes(port: int) -> float:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(float(v) for v in re.findall(r'^churnops_operator_reconciles_total\{result="ok"\} (\S+)$', text, re.M))


def _pass_time(port: int) -> tuple[float, float]:
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    total = float(re.search(r"^churnops_operator_reconcile_seconds_sum (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    count = float(re.search(r"^churnops_operator_reconcile_seconds_count (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
    return total, count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, default=300)
    p.add_argument("--rates", type=float, nargs="+", default=[20.0, 60.0], help="requests per second over both versions")
    p.add_argument("--resources", type=int, default=100)
    p.add_argument(
        "--capacity-tick",
        type=float,
        default=1.0,
        help="the operator's pass interval in the capacity run: 100 resources ask for 100 passes/s, more than 2 cores serve",
    )
    p.add_argument(
        "--tick",
        type=float,
        default=1.75,
        help="the pass interval in the latency run: 100 resources ask for up to 57 passes/s (the operator's default, 10 s, for 10/s)",
    )
    p.add_argument("--seed", type=int, default=11)
    p.add_argument("--fault-runs", type=int, default=200, help="rollouts per canary and fault scenario")
    p.add_argument("--skip-verdicts", action="store_true")
    p.add_argument("--skip-faults", action="store_true")
    p.add_argument("--skip-reconcile", action="store_true")
    args = p.parse_args()
    verdicts: dict[str, bool] = {}
    if not args.skip_verdicts:
        tables = [bench_verdicts(args.runs, args.seed, rate) for rate in args.rates]  # every table printed, not the first failing
        verdicts["verdict quality"] = all(tables)
        print_flagger_limits()
    if not args.skip_faults:
        verdicts["faults"] = bench_faults(args.fault_runs, args.seed)
    if not args.skip_reconcile:
        verdicts["reconcile capacity"] = bench_reconcile(args.resources, args.capacity_tick, "capacity")
        verdicts["reconcile latency"] = bench_reconcile(args.resources, args.tick, "latency")
    print("== Goals: " + "; ".join(f"{name} {verdict(ok)}" for name, ok in verdicts.items()))


if __name__ == "__main__":
    main()
