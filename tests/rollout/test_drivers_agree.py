"""The kopf operator and the embedded runner take the same decisions on the same traffic.

Acceptance (the shared rollout core's issue): "the operator and the runner
produce identical decisions on the same observation sequence (a shared
table-driven test runs both)".

Both drivers hand ``core.decide`` an observation built by
``observe.analysis_observation``; they differ only in how they get the named
answers of ``queries.analysis_queries``:

- the operator asks Prometheus. ``Prometheus`` below scrapes the predictor's
  exposition text at every pass and answers each named query as an instant
  query at ``now`` would, over the window written in the query: ``increase``
  is the reset-adjusted cumulative value now minus at the window's start,
  ``sum by (le)``, ``histogram_quantile``, ``max`` of the served gauge; every
  answer is a JSON body that goes through ``observe.parse_answer``;
- the runner scrapes the same text itself (``metrics.parse``), keeps
  reset-aware running totals (``metrics.advance``, persisted as JSON between
  passes) and fills the same names (``metrics.answers``).

Each driver has its own simulated predictor (``Predictor``), seeded alike: it
counts requests, 5xx errors, the ``total`` latency histogram and the score
histogram per model version as the Python client does, and routes each
interval's requests by the canary weight its driver's persisted status asks
for. While the drivers agree, both predictors see the same traffic; the first
pass where they disagree fails the comparison.

Both drivers pass the same ``World`` besides the observation (the target,
the canary ready, a healthy stable version), so what is compared is the
analysis: the answers, the observation, and the decisions taken on them. What
the drivers cannot share is why figures are missing during a metrics outage
(the operator names each failed query, the runner its failed scrape): that
explanation is left out of the compared event messages and verdicts.
"""

from __future__ import annotations

import bisect
import itertools
import json
import math
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import pytest
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.utils import floatToGoString

from churnops.rollout import scraped as rm
from churnops_contract import metric_names as m
from churnops_contract import queries
from churnops_contract.rollout import core, observe
from churnops_contract.rollout.analysis import Observation
from churnops_contract.rollout.spec import DeploymentSpec, parse
from churnops_contract.rollout.status import Health

MODEL = "churn"
STABLE, CANARY = "1", "2"
START = 1_700_000_000  # whole seconds: Prometheus windows are whole seconds (``queries.window`` rounds up)
INTERVAL = 60
REQUESTS = 3_000  # per interval: 150 canary requests at 5 %, above minSamples
MAX_PASSES = 16
SEED = 20_240_611
BUCKETS = len(m.SCORE_BUCKETS) + 1
go_float: Callable[[float], str] = floatToGoString  # how the client spells numbers ("0.1", "1.0", "+Inf"); untyped there
WHY_MISSING = "no canary request count: "  # what follows names each driver's own failure

SPEC = parse(
    {
        "model": {"registeredModel": MODEL, "version": CANARY},
        "featureService": "churn_v1",
        "rollout": {
            "steps": [5, 25, 50, 100],
            "interval": f"{INTERVAL}s",
            "minSamples": 100,
            "failureThreshold": 2,
            "inconclusiveLimit": 3,
            "progressDeadline": "30m",
        },
    }
)
LIMIT_MS = SPEC.rollout.analysis.max_latency_p95_ms


# --- the predictor: one model's series, as the Python client counts and exports them -----------------------------


@dataclass(frozen=True)
class Behaviour:
    """How a model version answers: the share of 5xx errors, the median latency, the Beta law of its scores."""

    error_rate: float = 0.0
    latency_median_s: float = 0.02
    scores: tuple[float, float] = (2.0, 5.0)


HEALTHY = Behaviour()


@dataclass
class Counts:
    """One version's counters since the process started (a restart loses them)."""

    requests: int = 0
    errors: int = 0  # code 500
    latency: list[int] = field(default_factory=lambda: [0] * (len(m.LATENCY_BUCKETS) + 1))  # per bucket, +Inf last
    latency_sum: float = 0.0
    scores: list[int] = field(default_factory=lambda: [0] * (len(m.SCORE_BUCKETS) + 1))
    score_sum: float = 0.0


def _buckets(bounds: Sequence[float], counts: Sequence[int]) -> list[tuple[str, float]]:
    """Cumulative buckets with ``le`` spelled as the client exports it ("0.1", "1.0", "+Inf")."""
    return [(go_float(b), float(c)) for b, c in zip((*bounds, math.inf), itertools.accumulate(counts), strict=True)]


class Predictor:
    """The serving process: routes requests as the status says, counts them, and exports the counts as text."""

    def __init__(self, canary: Behaviour, seed: int) -> None:
        self.rng = random.Random(seed)
        self.behaviour = {STABLE: HEALTHY, CANARY: canary}
        self.counts: dict[str, Counts] = {}  # a child appears with its first observation, as in the client
        self.served: tuple[str, ...] = ()

    def serve(self, status: Mapping[str, Any], restart: bool = False) -> None:
        """One interval of requests, split by the persisted status's routing; ``restart``: the process restarts halfway."""
        route = core.routing(status)
        self.served = tuple(v for v in (route.stable, route.canary) if v is not None)
        for i in range(REQUESTS):
            if restart and i == REQUESTS // 2:
                self.counts = {}
            to_canary = route.canary is not None and self.rng.random() * 100 < route.weight
            version = route.canary if to_canary else route.stable
            if version is not None:
                self._answer(version)

    def _answer(self, version: str) -> None:
        b, c = self.behaviour[version], self.counts.setdefault(version, Counts())
        c.requests += 1
        seconds = self.rng.lognormvariate(math.log(b.latency_median_s), 0.5)
        c.latency[bisect.bisect_left(m.LATENCY_BUCKETS, seconds)] += 1
        c.latency_sum += seconds
        if self.rng.random() < b.error_rate:
            c.errors += 1
            return
        score = self.rng.betavariate(*b.scores)
        c.scores[bisect.bisect_left(m.SCORE_BUCKETS, score)] += 1
        c.score_sum += score

    def collect(self) -> Iterable[Metric]:
        requests = CounterMetricFamily(m.REQUESTS, "requests", labels=[m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_PROTOCOL])
        errors = CounterMetricFamily(m.ERRORS, "errors", labels=[m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_CODE])
        latency = HistogramMetricFamily(m.LATENCY, "latency", labels=[m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_STAGE])
        score = HistogramMetricFamily(m.SCORE, "scores", labels=[m.LABEL_MODEL, m.LABEL_VERSION])
        info = GaugeMetricFamily(m.MODEL_INFO, "served", labels=[m.LABEL_MODEL, m.LABEL_VERSION, m.LABEL_ALIAS])
        for version, c in sorted(self.counts.items()):
            requests.add_metric([MODEL, version, "rest"], c.requests)
            if c.errors:
                errors.add_metric([MODEL, version, "500"], c.errors)
            latency.add_metric([MODEL, version, "total"], _buckets(m.LATENCY_BUCKETS, c.latency), c.latency_sum)
            if sum(c.scores):
                score.add_metric([MODEL, version], _buckets(m.SCORE_BUCKETS, c.scores), c.score_sum)
        for version in self.served:
            info.add_metric([MODEL, version, "champion" if version == STABLE else "canary"], 1.0)
        return [requests, errors, latency, score, info]

    def exposition(self) -> str:
        return generate_latest(self).decode()


# --- the operator's side: Prometheus scraping the predictor, answering the named queries ---------------------------

SELECTOR = re.compile(r"(?P<name>[a-zA-Z_:][\w:]*)\{(?P<matchers>[^}]*)\}(?:\[(?P<window>\d+)s\])?")
MATCHER = re.compile(r'(\w+)(=~|!=|=)"((?:[^"\\]|\\.)*)"')
Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Selector:
    name: str
    matchers: tuple[tuple[str, str, str], ...]
    window: int | None

    def matches(self, labels: Mapping[str, str]) -> bool:
        if labels.get("__name__") != self.name:
            return False
        for key, op, want in self.matchers:
            have = labels.get(key, "")  # a missing label matches ""
            if not (have == want if op == "=" else have != want if op == "!=" else re.fullmatch(want, have)):
                return False
        return True


def selectors(expr: str) -> list[Selector]:
    found = []
    for s in SELECTOR.finditer(expr):
        matchers = tuple((k, op, v.replace('\\"', '"').replace("\\\\", "\\")) for k, op, v in MATCHER.findall(s["matchers"]))
        found.append(Selector(s["name"], matchers, int(s["window"]) if s["window"] else None))
    return found


def reset_adjusted(points: Sequence[tuple[float, float]], at: float) -> float:
    """A counter's growth from its first sample to the last one at or before ``at``; a drop is a reset (the new value is all new)."""
    total, last = 0.0, None
    for t, v in points:
        if t > at:
            break
        total += v - last if last is not None and v >= last else v
        last = v
    return total


def histogram_quantile(q: float, cumulative: Mapping[str, float]) -> float:
    """Prometheus' ``histogram_quantile`` over cumulative buckets keyed by ``le``."""
    ordered = sorted((float(le), c) for le, c in cumulative.items())
    if not math.isinf(ordered[-1][0]) or ordered[-1][1] <= 0:
        return math.nan
    rank = q * ordered[-1][1]
    i = next(i for i, (_, c) in enumerate(ordered) if c >= rank)
    if i == len(ordered) - 1:
        return ordered[-2][0]
    upper, count = ordered[i]
    lower, below = ordered[i - 1] if i else (0.0, 0.0)
    return lower + (upper - lower) * (rank - below) / (count - below)


def _number(x: float) -> str:
    return "NaN" if math.isnan(x) else go_float(x)


class Prometheus:
    """Scrapes the predictor at every pass; answers instant queries at ``now`` (``up`` False: unreachable)."""

    def __init__(self) -> None:
        self.series: dict[Labels, list[tuple[float, float]]] = {}
        self.scrapes: list[float] = []
        self.up = True

    def scrape(self, text: str, now: float) -> None:
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                key = tuple(sorted({**s.labels, "__name__": s.name}.items()))
                self.series.setdefault(key, []).append((now, s.value))
        self.scrapes.append(now)

    def _select(self, sel: Selector) -> list[tuple[dict[str, str], list[tuple[float, float]]]]:
        return [(dict(k), points) for k, points in self.series.items() if sel.matches(dict(k))]

    def _increases(self, sel: Selector, now: float) -> list[tuple[dict[str, str], float]]:
        """``increase(sel[window])`` per series that has a sample in the window."""
        assert sel.window is not None, sel
        start = now - sel.window
        return [
            (labels, reset_adjusted(points, now) - reset_adjusted(points, start))
            for labels, points in self._select(sel)
            if any(start < t <= now for t, _ in points)
        ]

    def _sum_increase(self, sel: Selector, now: float) -> float | None:
        found = self._increases(sel, now)
        return sum(x for _, x in found) if found else None

    def _by_le(self, sel: Selector, now: float) -> dict[str, float]:
        out: dict[str, float] = {}
        for labels, x in self._increases(sel, now):
            out[labels["le"]] = out.get(labels["le"], 0.0) + x
        return out

    def _latest(self, sel: Selector, now: float) -> list[float]:
        """The instant vector: series present in the last scrape at or before ``now`` (the others are stale)."""
        last = max((t for t in self.scrapes if t <= now), default=None)
        return [points[-1][1] for _, points in self._select(sel) if points[-1][0] == last]

    def evaluate(self, name: str, expr: str, now: float) -> dict[str, Any]:
        """The JSON body of ``/api/v1/query`` for one named query of ``queries.analysis_queries``."""
        figure = name.rsplit(".", 1)[-1]
        sel = selectors(expr)
        result: list[tuple[dict[str, str], float]]
        if figure in ("served", "auc", "coverage", "churn_rate"):
            assert expr.startswith("max("), expr
            values = self._latest(sel[0], now)
            result = [({}, max(values))] if values else []
        elif figure == "scores":
            assert expr.startswith("sum by (le) (increase("), expr
            result = [({"le": le}, x) for le, x in self._by_le(sel[0], now).items()]
        elif figure == "p95":
            assert expr.startswith("1000 * histogram_quantile(0.95, sum by (le) (increase("), expr
            buckets = self._by_le(sel[0], now)
            result = [({}, 1000.0 * histogram_quantile(0.95, buckets))] if buckets else []
        else:  # requests, errors, timed, fast, step_requests, unattributed_errors
            assert expr.startswith("sum(increase("), expr
            x = self._sum_increase(sel[0], now)
            if x is None and figure == "errors":  # "... or 0 * <the requests query>"
                assert " or 0 * sum(increase(" in expr, expr
                requests = self._sum_increase(sel[1], now)
                x = None if requests is None else 0.0 * requests
            result = [] if x is None else [({}, x)]
        samples = [{"metric": labels, "value": [now, _number(x)]} for labels, x in result]
        return {"status": "success", "data": {"resultType": "vector", "result": samples}}

    def answer(self, name: str, expr: str, now: float) -> observe.Answer:
        if not self.up:  # what the operator's client makes of a connection error
            return observe.failed("prometheus: connection refused")
        return observe.parse_answer(json.loads(json.dumps(self.evaluate(name, expr, now))))


# --- the two drivers: the same pass, their own I/O ----------------------------------------------------------------


class Driver(Protocol):
    predictor: Predictor
    status: dict[str, Any]

    def read_metrics(self, text: str | None, now: float) -> None:
        """Take this pass's view of the predictor's metrics (None: they cannot be read now)."""

    def observation(self, due: core.Due, now: float) -> Observation: ...


class Operator:
    """``churnops_operator.reconcile.observe_canary``: the named queries, asked of Prometheus."""

    def __init__(self, canary: Behaviour) -> None:
        self.predictor = Predictor(canary, SEED)
        self.status: dict[str, Any] = {}
        self.prometheus = Prometheus()

    def read_metrics(self, text: str | None, now: float) -> None:
        self.prometheus.up = text is not None
        if text is not None:
            self.prometheus.scrape(text, now)

    def observation(self, due: core.Due, now: float) -> Observation:
        assert due.canary is not None and due.stable is not None and due.since is not None
        since_s, step_s = max(now - due.since, 1.0), max(now - (due.step_since or due.since), 1.0)
        asked = queries.analysis_queries(MODEL, due.canary, due.stable, since_s, step_s, LIMIT_MS)
        answers = {name: self.prometheus.answer(name, expr, now) for name, expr in asked.items()}
        return observe.analysis_observation(answers, due.look, BUCKETS)


class Runner:
    """``churnops.rollout.runner.Runner._observe`` and ``_analysis``: its own scrapes, counted with snapshots."""

    def __init__(self, canary: Behaviour) -> None:
        self.predictor = Predictor(canary, SEED)
        self.status: dict[str, Any] = {}
        self.counters = rm.Counters()
        self.scrape: rm.Scrape | None = None
        self.problems: list[str] = []

    def read_metrics(self, text: str | None, now: float) -> None:
        self.scrape, self.problems = None, []
        if text is None:
            self.problems.append("predictor metrics at http://predictor/metrics: connection refused")
            return
        self.scrape = rm.parse(text, MODEL, now)
        st = core.rollout_of(self.status)
        if st.canary is None:  # counts are only kept while a canary is analysed
            return
        marks = [t for t in (st.traffic_since, st.step_started, now) if t is not None]
        versions = [v for v in (st.stable, st.canary) if v is not None]
        counted = rm.advance(self.counters, self.scrape, marks, versions)
        self.counters = rm.Counters.from_doc(json.loads(json.dumps(counted.to_doc())))  # persisted between passes

    def observation(self, due: core.Due, now: float) -> Observation:
        assert due.canary is not None and due.stable is not None and due.since is not None
        outcomes = {v: rm.Outcomes(labelled=0.0) for v in (due.canary, due.stable)}  # a readable log without labels yet
        answers = rm.answers(self.counters, self.scrape, due.canary, due.stable, due.since, due.step_since or due.since, LIMIT_MS, outcomes)
        return observe.analysis_observation(answers, due.look, BUCKETS, tuple(self.problems))


# --- one pass, the same for both -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Decision:
    """What one pass decided, as compared between the drivers."""

    time: float
    events: tuple[tuple[Any, ...], ...]  # (seq, type, reason, from, to, message) of the history entries added
    weight: int
    phase: str
    failed: int
    inconclusive: int
    rejected: tuple[str, ...]
    verdict: Mapping[str, Any] | None  # the last check's figures (``lastVerdict``)


def _message(text: str) -> str:
    return text.split(WHY_MISSING, maxsplit=1)[0] + WHY_MISSING if WHY_MISSING in text else text


def _verdict(figures: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
    return None if figures is None else {**figures, "reason": _message(str(figures["reason"]))}


def step(driver: Driver, spec: DeploymentSpec, target: str, now: float, text: str | None) -> Decision:
    driver.read_metrics(text, now)
    due = core.due(spec, driver.status, now, canary_ready=True)
    observation = driver.observation(due, now) if due.check else None
    world = core.World(target=target, canary_ready=True, health=Health(True, {}), observation=observation)
    plan = core.decide(spec, driver.status, world, 1, now)
    driver.status = json.loads(json.dumps(plan.status))
    st = driver.status
    return Decision(
        now,
        tuple((e["seq"], e["type"], e["event"], e["from"], e["to"], _message(e["message"])) for e in plan.events),
        st["canaryWeight"],
        st["phase"],
        st["failedChecks"],
        st["inconclusiveChecks"],
        tuple(st["rejectedVersions"]),
        _verdict(st["lastVerdict"]),
    )


@dataclass(frozen=True)
class Scenario:
    name: str
    canary: Behaviour = HEALTHY
    ends: str = "Promoted"
    failing: str | None = None  # the check a rolled back canary fails
    restart: int | None = None  # the pass whose interval has a predictor restart (counters back to zero)
    gap: int | None = None  # the pass at which the runner's scrape fails and Prometheus is unreachable (and records nothing)


def drive(driver: Driver, scenario: Scenario) -> list[Decision]:
    """Deploy 1, start canary 2, then one pass per interval until the canary is promoted or rolled back."""
    trail = []
    for k in range(MAX_PASSES):
        now = START + k * INTERVAL
        if k:
            driver.predictor.serve(driver.status, restart=k == scenario.restart)
        text = None if k == scenario.gap else driver.predictor.exposition()
        trail.append(step(driver, SPEC, STABLE if k == 0 else CANARY, now, text))
        if k > 1 and driver.status["canaryVersion"] is None:
            break
    return trail


SCENARIOS = [
    Scenario("healthy"),
    Scenario("server-errors", Behaviour(error_rate=0.05), "RolledBack", "error_rate fail"),
    Scenario("slow", Behaviour(latency_median_s=0.15), "RolledBack", "latency_p95_ms fail"),
    Scenario("shifted-scores", Behaviour(scores=(4.0, 3.0)), "RolledBack", "score_psi fail"),
    Scenario("restart", restart=5),
    Scenario("metrics-gap", gap=4),
]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda s: s.name)
def test_operator_and_runner_decide_alike(scenario: Scenario) -> None:
    operator, runner = Operator(scenario.canary), Runner(scenario.canary)
    by_operator, by_runner = drive(operator, scenario), drive(runner, scenario)
    assert by_operator == by_runner
    assert operator.status["canaryVersion"] is None, "the rollout did not end"

    last, events = runner.status, [e for d in by_runner for e in d.events]
    reasons = [e[2] for e in events]
    assert reasons[:2] == ["Deployed", "CanaryStarted"]
    assert last["phase"] == scenario.ends
    if scenario.ends == "Promoted":
        assert (last["stableVersion"], last["rejectedVersions"]) == (CANARY, [])
        assert [d.weight for d in by_runner if d.phase == "Progressing"] == sorted(d.weight for d in by_runner if d.phase == "Progressing")
        assert {d.weight for d in by_runner} >= {5, 25, 50, 100}
        assert reasons.count("StepAdvanced") == 3 and reasons[-1] == "Promoted"
    else:
        assert (last["stableVersion"], last["rejectedVersions"]) == (STABLE, [CANARY])
        assert reasons.count("CheckFailed") == SPEC.rollout.failure_threshold - 1
        assert events[-1][2:5] == ("RolledBack", CANARY, STABLE)
        assert f"{SPEC.rollout.failure_threshold} failed checks: {scenario.failing}" in events[-1][5]
    if scenario.restart is not None:  # the counts fell to zero in this interval, and the check still counted the step's requests
        assert [e[2] for e in by_runner[scenario.restart].events] == ["StepAdvanced"]
    if scenario.gap is not None:  # no figures: the canary holds where it was
        held, before = by_runner[scenario.gap], by_runner[scenario.gap - 1]
        assert [e[2] for e in held.events] == ["CheckInconclusive"]
        assert (held.weight, held.phase, held.inconclusive) == (before.weight, "Progressing", 1)
        assert by_runner[scenario.gap + 1].inconclusive == 0
