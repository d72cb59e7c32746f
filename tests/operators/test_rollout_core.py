"""Regression tests of the pure rollout core (``churnops_contract.rollout``): each test names the defect it guards against.

No servers: the answers to the contract's named queries (``queries.analysis_queries``)
are built with ``observe``, and ``core.decide`` is driven pass by pass on a
simulated clock, the way both drivers (the kopf operator, the embedded runner) call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as hs

from churnops_contract import metric_names as metrics
from churnops_contract import policy, queries
from churnops_contract.rollout import analysis, core, observe, retraining
from churnops_contract.rollout.core import Plan, RunReport, World
from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.observe import Answer, failed, value
from churnops_contract.rollout.retraining import RetrainingStatus
from churnops_contract.rollout.spec import DeploymentSpec, parse
from churnops_contract.rollout.status import Health

START = 1_700_000_000.0
LE = (*(repr(float(b)) for b in metrics.SCORE_BUCKETS), observe.INF)  # "0.05" ... "1.0", "+Inf"
BUCKETS = len(metrics.SCORE_BUCKETS) + 1
EMPTY = Answer({})
SERVING = Health(serving_ready=True)

# --- specs and answers ------------------------------------------------------------------------------------------


def make_spec(version: str = "1", monitoring: Mapping[str, Any] | None = None, **rollout: Any) -> DeploymentSpec:
    """A spec with a 10 s interval; ``rollout`` overrides spec.rollout fields (camelCase)."""
    base = {
        "steps": [50, 100],
        "interval": "10s",
        "minSamples": 100,
        "failureThreshold": 2,
        "progressDeadline": "10m",
        "inconclusiveLimit": 4,
    }
    return parse(
        {
            "model": {"registeredModel": "m", "version": version},
            "featureService": "churn",
            "rollout": {**base, **rollout},
            "monitoring": {"evaluationInterval": "10s", **(monitoring or {})},
        }
    )


def histogram(n: float) -> Answer:
    """Cumulative score buckets (``le`` as the client exports it) with ``n`` scores spread evenly."""
    return Answer({le: n * (i + 1) / len(LE) for i, le in enumerate(LE)})


def version_answers(
    role: str, *, requests: float = 1000.0, errors: float = 0.0, auc: Answer = EMPTY, coverage: Answer = EMPTY
) -> dict[str, Answer]:
    """One version's ``<role>.<figure>`` answers: every request fast, no delayed labels unless given."""
    return {
        f"{role}.requests": value(requests),
        f"{role}.errors": value(errors),
        f"{role}.timed": value(requests),
        f"{role}.fast": value(requests),
        f"{role}.p95": value(40.0),
        f"{role}.scores": histogram(requests),
        f"{role}.auc": auc,
        f"{role}.coverage": coverage,
        f"{role}.churn_rate": value(0.2),
        f"{role}.served": value(1.0),
    }


def answers(*, canary_errors: float = 0.0, step: float = 1000.0) -> dict[str, Answer]:
    """Answers to every query of ``queries.analysis_queries``: a canary as good as stable unless told otherwise."""
    return {
        **version_answers("canary", errors=canary_errors),
        **version_answers("stable"),
        "canary.step_requests": value(step),
        "unattributed_errors": value(0.0),
    }


def healthy() -> dict[str, Answer]:
    return answers()


def failing() -> dict[str, Answer]:
    """A bad canary: 20 % server errors against none on stable."""
    return answers(canary_errors=200.0)


def outage(note: str = "connection refused") -> dict[str, Answer]:
    """Every query failed (Prometheus unreachable)."""
    return {name: failed(note) for name in healthy()}


def auc_gap(**labels: Answer) -> dict[str, Answer]:
    """Canary AUC 0.6 against stable 0.8 with 50 % label coverage on both (500 labels each); ``labels`` overrides."""
    base = {"canary.auc": value(0.6), "stable.auc": value(0.8), "canary.coverage": value(0.5), "stable.coverage": value(0.5)}
    return {**healthy(), **base, **{k.replace("__", "."): v for k, v in labels.items()}}


def verdict_of(spec: DeploymentSpec, given_answers: Mapping[str, Answer], look: int = 1) -> analysis.Verdict:
    obs = observe.analysis_observation(given_answers, look, BUCKETS)
    return analysis.judge(spec.rollout.analysis, obs, spec.rollout.min_samples)


# --- a driver on a simulated clock ------------------------------------------------------------------------------


@dataclass
class Pass:
    before: dict[str, Any]
    plan: Plan
    now: float


@dataclass
class Sim:
    """A driver without I/O: each ``tick`` is one pass (``core.due``, observe if asked, ``core.decide``, persist)."""

    spec: DeploymentSpec
    raw: dict[str, Any] = field(default_factory=dict)
    now: float = START
    passes: list[Pass] = field(default_factory=list)

    def tick(
        self,
        given_answers: Mapping[str, Answer] | None = None,
        *,
        target: str | None = "2",
        ready: bool = True,
        health: Health = SERVING,
        dt: float | None = None,
        **world: Any,
    ) -> Plan:
        self.now += self.spec.rollout.interval_s if dt is None else dt
        due = core.due(self.spec, self.raw, self.now, ready)
        observation = observe.analysis_observation(given_answers, due.look, BUCKETS) if due.check and given_answers is not None else None
        fields = {
            "target": target,
            "health": health,
            "canary_ready": ready,
            "observation": observation,
            "model_ref": core.model_ref(self.spec),
            **world,
        }
        plan = core.decide(self.spec, self.raw, World(**fields), 1, self.now)
        self.passes.append(Pass(self.raw, plan, self.now))
        self.raw = plan.status
        return plan

    @property
    def status(self) -> RolloutStatus:
        return core.rollout_of(self.raw)

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for p in self.passes for e in p.plan.events if e["event"] == reason]

    def overdue(self) -> float:
        """Seconds the running canary's step is past progress_deadline + interval (negative: within; -inf: no canary)."""
        st = self.status
        if st.canary is None:
            return -math.inf
        assert st.step_started is not None
        rollout = self.spec.rollout
        return self.now - st.step_started - (rollout.progress_deadline_s + rollout.interval_s)


def started(spec: DeploymentSpec, *, ready: bool = True) -> Sim:
    """Stable "1" deployed, canary "2" started at the first step (and ready, its analysis clock running, if ``ready``)."""
    sim = Sim(spec)
    sim.tick(target="1")
    sim.tick(target="2", ready=ready)
    if ready:
        sim.tick()
    st = sim.status
    assert (st.stable, st.canary, st.weight) == ("1", "2", spec.rollout.steps[0])
    assert (st.traffic_since is not None) == ready
    return sim


def condition(raw: Mapping[str, Any], kind: str) -> dict[str, Any]:
    found = [c for c in raw["conditions"] if c["type"] == kind]
    assert len(found) == 1, raw["conditions"]
    return dict(found[0])


def assert_withdrawn(sim: Sim, version: str = "2") -> None:
    """Rolled back without evidence: traffic on stable, the version deferred (retried later), not rejected."""
    raw = sim.raw
    assert raw["canaryVersion"] is None, raw["message"]
    assert raw["rolloutPhase"] == "RolledBack" and raw["phase"] == "RolledBack"
    assert raw["deferred"] is not None and raw["deferred"]["version"] == version
    assert raw["deferred"]["until"] > sim.now
    assert version not in raw["rejectedVersions"]


def test_fixture_answers_cover_the_contract_queries_and_judge_as_intended() -> None:
    """Guards the helpers: the names are exactly ``queries.analysis_queries``'s, healthy passes, failing fails."""
    spec = make_spec()
    assert set(healthy()) == set(queries.analysis_queries("m", "2", "1", 60.0, 60.0, 100.0))
    good = verdict_of(spec, healthy())
    assert good.outcome == "pass" and good.conclusive, good.reason
    assert verdict_of(spec, failing()).outcome == "fail"
    both_labelled = {r.name: r.outcome for r in verdict_of(spec, auc_gap()).results}
    assert both_labelled["auc_delta"] in ("fail", "undecided")  # with both labelled, AUC is judged (it can never promote as "pending")


# --- 1. AUC gate with missing label coverage ---------------------------------------------------------------------

NAN = Answer({"": math.nan})
AUC_GAPS = {
    "canary coverage failed": auc_gap(canary__coverage=failed("timeout")),
    "canary coverage empty": auc_gap(canary__coverage=EMPTY),
    "canary coverage NaN": auc_gap(canary__coverage=NAN),
    "canary coverage and AUC empty": auc_gap(canary__coverage=EMPTY, canary__auc=EMPTY),
    "stable coverage empty, canary labelled": auc_gap(stable__coverage=EMPTY),
    "stable coverage and AUC empty, canary labelled": auc_gap(stable__coverage=EMPTY, stable__auc=EMPTY),
    "stable coverage failed, canary labelled": auc_gap(stable__coverage=failed("timeout")),
}


@pytest.mark.parametrize("gap", AUC_GAPS.values(), ids=list(AUC_GAPS))
def test_auc_gate_with_missing_label_coverage_is_inconclusive_and_never_promotes(gap: dict[str, Answer]) -> None:
    """Item 1: a missing label coverage read as "no labels yet" passed the AUC gate and promoted a canary 0.2 AUC worse."""
    spec = make_spec(inconclusiveLimit=4)
    verdict = verdict_of(spec, gap)
    assert verdict.outcome == "inconclusive", verdict.reason
    sim = started(spec)
    sim.tick(healthy())  # labels not in yet anywhere: AUC pending, the first step passes
    assert sim.status.weight == 100
    for _ in range(30):  # the last step, many intervals, including the retries after each withdrawal
        plan = sim.tick(gap)
        assert plan.verdict is None or plan.verdict.outcome != "pass", plan.verdict.reason
        assert sim.raw["stableVersion"] == "1"
    assert sim.events("Promoted") == []
    assert "2" not in sim.raw["rejectedVersions"]  # no evidence against it either


# --- 2. malformed Prometheus answers ---------------------------------------------------------------------------


def vector(*samples: Any) -> dict[str, Any]:
    return {"status": "success", "data": {"resultType": "vector", "result": list(samples)}}


MALFORMED: dict[str, Any] = {
    "value a string": vector({"metric": {}, "value": [1.0, "abc"]}),
    "value None": vector({"metric": {}, "value": [1.0, None]}),
    "value without a time": vector({"metric": {}, "value": [1.0]}),
    "matrix": {"status": "success", "data": {"resultType": "matrix", "result": [{"metric": {}, "values": [[1.0, "5"]]}]}},
    "sample without value": vector({"metric": {}}),
    "metric not an object": vector({"metric": "x", "value": [1.0, "3"]}),
    "result a string": {"status": "success", "data": {"resultType": "vector", "result": "abc"}},
    "no data": {"status": "success"},
    "body a string": "<html>502 Bad Gateway</html>",
    "body a list": [1, 2],
    "body None": None,
    "status error": {"status": "error", "errorType": "bad_data", "error": "parse error at char 5"},
}
FIGURES = ("requests", "errors", "timed", "fast", "scores", "auc", "coverage")
JUDGED = (*(f"{role}.{figure}" for role in ("canary", "stable") for figure in FIGURES), "canary.step_requests", "unattributed_errors")


def test_well_formed_answer_parses() -> None:
    """Item 2 (control): a well-formed vector parses to its values, so the malformed cases fail for their own reason."""
    assert observe.parse_answer(vector({"metric": {}, "value": [1.0, "1000"]})) == Answer({"": 1000.0})
    parsed = observe.parse_answer(vector(*({"metric": {"le": le}, "value": [1.0, "5"]} for le in LE)))
    assert parsed.values == dict.fromkeys(LE, 5.0)


@pytest.mark.parametrize("body", MALFORMED.values(), ids=list(MALFORMED))
@pytest.mark.parametrize("name", JUDGED)
def test_malformed_prometheus_answer_is_a_failed_answer_and_an_inconclusive_check(body: Any, name: str) -> None:
    """Item 2: a malformed Prometheus body raised (or read as a number) instead of making the check inconclusive."""
    answer = observe.parse_answer(body)
    assert answer.failed and answer.note
    verdict = verdict_of(make_spec(), {**healthy(), name: answer})
    assert verdict.outcome == "inconclusive", verdict.reason


@pytest.mark.parametrize("body", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_prometheus_answer_holds_the_canary_through_core_decide(body: Any) -> None:
    """Item 2: through ``core.decide`` a malformed answer holds the canary (CheckInconclusive), never raises, never advances."""
    sim = started(make_spec())
    plan = sim.tick({**healthy(), "canary.requests": observe.parse_answer(body)})
    assert plan.verdict is not None and plan.verdict.outcome == "inconclusive"
    assert [e["event"] for e in plan.events] == ["CheckInconclusive"]
    assert (sim.status.canary, sim.status.weight) == ("2", 50)


# --- 3. the progress deadline as a hard bound ------------------------------------------------------------------


def _short_step(sim: Sim) -> Mapping[str, Answer] | None:
    sim.tick(healthy())  # the first step passes: the canary is at its second step
    assert sim.status.weight == 50
    return answers(step=10.0)


def _step_unknown(sim: Sim) -> Mapping[str, Answer] | None:
    return {**healthy(), "canary.step_requests": failed("timeout")}


def _no_check(sim: Sim) -> Mapping[str, Answer] | None:
    return None


DEADLINE_CASES = {
    "total samples suffice, the step's do not": (_short_step, True, SERVING),
    "the step's request count failed": (_step_unknown, True, SERVING),
    "the canary never becomes ready": (_no_check, False, SERVING),
    "serving degraded, no check possible": (_no_check, True, Health(serving_ready=True, problems={"serving": "InferenceService refused"})),
}


@pytest.mark.parametrize(("setup", "ready", "health"), DEADLINE_CASES.values(), ids=list(DEADLINE_CASES))
def test_progress_deadline_is_a_hard_bound(setup: Any, ready: bool, health: Health) -> None:
    """Item 3: a step short of samples, without a step count, never ready or never checked stayed in progress past the deadline."""
    spec = make_spec(steps=[10, 50, 100], progressDeadline="60s", inconclusiveLimit=100)
    sim = started(spec, ready=ready)
    given_answers = setup(sim)
    bound = spec.rollout.progress_deadline_s + spec.rollout.interval_s
    step_started = START
    for _ in range(int(bound / spec.rollout.interval_s) + 3):
        step_started = sim.status.step_started or math.nan
        plan = sim.tick(given_answers, ready=ready, health=health)
        assert sim.overdue() <= 0
        if plan.verdict is not None:
            assert plan.verdict.outcome != "pass" or plan.verdict.step_samples < spec.rollout.min_samples
            if given_answers is not None and given_answers["canary.step_requests"].failed:
                assert plan.verdict.outcome == "inconclusive"  # a failed step count is not 0 requests ("wait")
        if sim.status.canary is None:
            break
    assert sim.now - step_started <= bound
    assert_withdrawn(sim)
    assert sim.events("Promoted") == []


def test_progress_deadline_bounds_a_canary_with_failed_checks_below_the_threshold() -> None:
    """Item 3 (iv): a check that fails after the deadline only counted toward failureThreshold, so the step outlived the bound."""
    spec = make_spec(steps=[10, 50, 100], progressDeadline="60s", failureThreshold=4)
    sim = started(spec)
    step_started = sim.status.step_started
    assert step_started is not None
    while sim.now + spec.rollout.interval_s < step_started + spec.rollout.progress_deadline_s:
        sim.tick(answers(step=10.0))  # too few requests in the step: waiting, no decision yet
    assert sim.status.canary == "2" and sim.raw["failedChecks"] == 0
    for _ in range(spec.rollout.failure_threshold):
        plan = sim.tick(failing())
        assert plan.verdict is not None and plan.verdict.outcome == "fail"
        assert sim.overdue() <= 0, f"in progress {sim.now - step_started:.0f} s after its step started: {sim.raw['message']}"
        if sim.raw["canaryVersion"] is None:
            break
    assert sim.raw["canaryVersion"] is None and sim.raw["rolloutPhase"] == "RolledBack"
    assert sim.now - step_started <= spec.rollout.progress_deadline_s + spec.rollout.interval_s
    assert sim.events("Promoted") == []


def test_undecided_auc_leaning_worse_is_rolled_back_at_the_deadline() -> None:
    """Item 3 (machine rule): an undecided AUC test leaning to "worse" is settled at the deadline by a rollback, not one more failed check."""
    spec = make_spec(steps=[100], progressDeadline="60s", failureThreshold=2)
    sim = started(spec)
    step_started = sim.status.step_started
    assert step_started is not None
    verdict = verdict_of(spec, auc_gap())
    assert verdict.outcome == "pass" and not verdict.conclusive and verdict.decidable and verdict.leans_worse
    while sim.now + spec.rollout.interval_s < step_started + spec.rollout.progress_deadline_s:
        plan = sim.tick(auc_gap())
        assert plan.events == () and sim.status.canary == "2"  # held at the last step until the test decides
    plan = sim.tick(auc_gap())  # the first check at the deadline
    assert sim.now - step_started >= spec.rollout.progress_deadline_s
    assert [e["event"] for e in plan.events] == ["RolledBack"], f"{[e['event'] for e in plan.events]}: {sim.raw['message']}"
    assert sim.raw["canaryVersion"] is None and sim.raw["stableVersion"] == "1"


# --- 4. metrics outage ---------------------------------------------------------------------------------------


def test_short_metrics_outage_does_not_stop_a_good_canary() -> None:
    """Item 4: checks without evidence (all answers failed) below inconclusiveLimit must hold, not end, a good canary."""
    spec = make_spec(inconclusiveLimit=3)
    sim = started(spec)
    for _ in range(spec.rollout.inconclusive_limit - 1):
        plan = sim.tick(outage())
        assert plan.verdict is not None and plan.verdict.outcome == "inconclusive"
        assert (sim.status.canary, sim.status.weight) == ("2", 50)
    sim.tick(healthy())
    assert sim.status.weight == 100
    for _ in range(spec.rollout.inconclusive_limit - 1):
        sim.tick(outage())
    sim.tick(healthy())
    assert sim.raw["stableVersion"] == "2" and sim.raw["rolloutPhase"] == "Promoted"
    assert sim.events("RolledBack") == []


def test_long_metrics_outage_withdraws_then_retries_after_backoff() -> None:
    """Item 4: inconclusiveLimit checks without evidence withdraw (not reject) the canary, which is retried after the backoff."""
    spec = make_spec(inconclusiveLimit=3)
    sim = started(spec)
    for _ in range(spec.rollout.inconclusive_limit):
        sim.tick(outage())
    assert_withdrawn(sim)
    until = sim.raw["deferred"]["until"]
    for _ in range(100):
        plan = sim.tick(healthy())
        if any(e["event"] == "CanaryStarted" for e in plan.events):
            assert sim.now >= until
            break
        assert sim.status.canary is None  # not before the backoff
    else:
        pytest.fail("the withdrawn canary was never retried")
    for _ in range(10):
        sim.tick(healthy())
        if sim.status.canary is None:
            break
    assert sim.raw["stableVersion"] == "2" and sim.raw["rolloutPhase"] == "Promoted"
    assert "2" not in sim.raw["rejectedVersions"]


# --- 5. MLflow outage ----------------------------------------------------------------------------------------

REGISTRY_DOWN = Health(serving_ready=True, problems={"registry": "MLflow: connection refused"})


def test_registry_outage_does_not_freeze_a_rollback_and_reports_degraded_once() -> None:
    """Item 5: an unreachable MLflow froze a bad canary, and posted a Degraded event on every pass."""
    spec = make_spec(failureThreshold=2)
    sim = started(spec)
    outcomes = []
    for _ in range(spec.rollout.failure_threshold):
        plan = sim.tick(failing(), target=None, health=REGISTRY_DOWN)
        outcomes.append(plan.verdict.outcome if plan.verdict else None)
        degraded = condition(sim.raw, "Degraded")
        assert (degraded["status"], degraded["reason"]) == ("True", "RegistryUnavailable")
    assert outcomes == ["fail"] * spec.rollout.failure_threshold
    assert sim.raw["canaryVersion"] is None and sim.raw["rolloutPhase"] == "RolledBack"
    assert "2" in sim.raw["rejectedVersions"] and sim.raw["stableVersion"] == "1"
    for _ in range(3):
        sim.tick(failing(), target=None, health=REGISTRY_DOWN)
    assert len(sim.events("Degraded")) == 1
    assert condition(sim.raw, "Ready")["status"] == "True"
    sim.tick(healthy(), target="2")
    assert len(sim.events("Recovered")) == 1 and len(sim.events("Degraded")) == 1
    assert condition(sim.raw, "Degraded")["status"] == "False"
    assert sim.raw["canaryVersion"] is None  # the rejected version is not retried once the registry answers


# --- 6. events from the history --------------------------------------------------------------------------------


def names(entries: tuple[dict[str, Any], ...]) -> list[str]:
    """The deterministic Event names a driver derives from the history (what makes a re-post a duplicate)."""
    return [f"churn.{e['seq']}" for e in entries]


def test_events_are_posted_from_the_history_exactly_once() -> None:
    """Item 6: events were posted from the pass (lost or doubled on a crash) instead of from the persisted history."""
    spec = make_spec(steps=[25, 50, 100])
    sim = Sim(spec)
    posted: list[str] = []
    seqs: list[int] = []
    script: list[tuple[Mapping[str, Answer] | None, str]] = [(None, "1"), (None, "2"), (None, "2"), *[(healthy(), "2")] * 3]
    for given_answers, target in script:
        before = sim.raw.get("eventsPosted", 0)
        plan = sim.tick(given_answers, target=target)
        added = [e["seq"] for e in plan.events]
        assert added == sorted(added) and all(s > max(seqs, default=0) for s in added)
        seqs += added
        if added:  # the pass's events are the history's newest entries
            assert [e["seq"] for e in sim.raw["history"][-len(added) :]] == added
        assert sim.raw["eventSeq"] == max(seqs, default=0)
        assert sim.raw["eventsPosted"] == before
        todo = core.unposted(sim.raw)
        assert [e["seq"] for e in todo] == [e["seq"] for e in sim.raw["history"] if e["seq"] > before]
        posted += names(todo)
        if todo:
            sim.raw = core.mark_posted(sim.raw, todo[-1]["seq"])
        assert core.unposted(sim.raw) == ()
    assert [e["event"] for e in sim.raw["history"]] == ["Deployed", "CanaryStarted", "StepAdvanced", "StepAdvanced", "Promoted"]
    assert posted == [f"churn.{s}" for s in seqs] and len(set(posted)) == len(posted)


def test_events_reposted_after_a_crash_keep_their_names() -> None:
    """Item 6: a driver killed after persisting a status (before or after posting) posts the same seqs again, which dedupe."""
    spec = make_spec()
    sim = started(spec)
    posted_before = sim.raw.get("eventsPosted", 0)
    sim.tick(healthy())  # StepAdvanced, persisted
    persisted = dict(sim.raw)
    first = names(core.unposted(persisted))  # posted ... then the driver dies before marking them posted
    assert first and first == names(core.unposted(dict(persisted)))  # the restarted driver posts the same names
    assert all(int(n.split(".")[1]) > posted_before for n in first)
    sim.raw = persisted
    sim.tick(healthy())  # the restarted driver decides the next pass before posting: old names unchanged, new ones after
    again = names(core.unposted(sim.raw))
    assert again[: len(first)] == first and len(again) > len(first)
    sim.raw = core.mark_posted(sim.raw, int(again[-1].split(".")[1]))
    assert core.unposted(sim.raw) == ()
    sim.tick(healthy(), target="2")
    assert core.unposted(sim.raw) == ()  # nothing new decided: nothing to post


# --- 7. retraining run names -----------------------------------------------------------------------------------

DRIFT_NOW = {"drift": {"consecutive": 1}, "retraining": {"cooldown": "1h"}}


def test_retraining_run_names_include_the_deployment_uid() -> None:
    """Item 7: a re-created deployment (same namespace/name, new uid) adopted its predecessor's retraining run."""
    uids = ("7f0c2a1e-3b4d-4e5f-8a9b-0c1d2e3f4a5b", "c41d9e07-8f6a-4b2c-9d3e-5f6a7b8c9d0e")
    prefixes = [retraining.run_prefix("shop", "churn", uid) for uid in uids]
    assert prefixes[0] != prefixes[1]
    assert prefixes[0] == retraining.run_prefix("shop", "churn", uids[0])  # stable across restarts
    spec = make_spec(monitoring=DRIFT_NOW)
    obs = policy.Observation(time=START, drift_detected=True)
    runs = [retraining.evaluate(spec, RetrainingStatus(), obs, p, "m@1")[0].pending_key for p in prefixes]
    assert runs[0] is not None and runs[1] is not None and runs[0] != runs[1]
    assert all(run is not None and run.startswith(p) for run, p in zip(runs, prefixes, strict=True))
    through_core = []
    for p in prefixes:
        sim = Sim(spec)
        sim.tick(target="1", signals=policy.Observation(time=sim.now + spec.rollout.interval_s, drift_detected=True), run_prefix=p)
        through_core.append(sim.raw["retraining"]["runName"])
        assert core.run_action(sim.raw) == ("start", through_core[-1])
    assert through_core == runs


# --- 9. analysis edits ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("edits", [(6,), (3, 3), (2, 2, 2)], ids=["six edits, threshold 2", "3+3 edits, threshold 3", "2+2+2, threshold 4"])
def test_analysis_edits_keep_the_failed_checks_of_the_same_canary(edits: tuple[int, ...]) -> None:
    """Item 9: each analysis edit restarted the analysis with zero failed checks, so edits kept a failing canary alive."""
    threshold = len(edits) + 1
    spec = make_spec(failureThreshold=threshold)
    sim = started(spec)
    limit = 0.01
    for failures, count in enumerate(edits, start=1):
        plan = sim.tick(failing())
        assert plan.verdict is not None and plan.verdict.outcome == "fail"
        assert sim.raw["failedChecks"] == failures
        for _ in range(count):
            key = sim.spec.analysis_key()
            limit += 0.001
            sim.spec = make_spec(failureThreshold=threshold, analysis={"maxErrorRate": limit})
            assert sim.spec.analysis_key() != key
            plan = sim.tick(failing())
            assert [e["event"] for e in plan.events] == ["AnalysisRestarted"]
            assert sim.raw["failedChecks"] == failures and sim.raw["canaryVersion"] == "2"
            sim.tick(failing(), dt=0.0)  # the restarted canary reported ready
    plan = sim.tick(failing())
    assert [e["event"] for e in plan.events] == ["RolledBack"]
    assert sim.raw["canaryVersion"] is None and "2" in sim.raw["rejectedVersions"]


# --- 10. conditions ------------------------------------------------------------------------------------------


def test_conditions_ready_follows_serving_and_canary_healthy_is_not_stale() -> None:
    """Item 10: Ready was True before serving reported and False while merely degraded; CanaryHealthy stayed True after promotion."""
    sim = Sim(make_spec())
    sim.tick(target="1", health=Health(serving_ready=None))
    assert condition(sim.raw, "Ready")["status"] == "Unknown"
    sim.tick(target="1", health=SERVING)
    assert condition(sim.raw, "Ready")["status"] == "True"
    for problem, reason in (("metrics", "MetricsUnavailable"), ("registry", "RegistryUnavailable")):
        sim.tick(target="1", health=Health(serving_ready=True, problems={problem: "unreachable"}))
        assert condition(sim.raw, "Ready")["status"] == "True"
        assert (condition(sim.raw, "Degraded")["status"], condition(sim.raw, "Degraded")["reason"]) == ("True", reason)
    sim.tick(target="2")
    sim.tick()
    sim.tick(healthy())
    assert (condition(sim.raw, "CanaryHealthy")["status"], condition(sim.raw, "Progressing")["status"]) == ("True", "True")
    sim.tick(healthy())
    assert sim.raw["stableVersion"] == "2"
    healthy_condition, progressing = condition(sim.raw, "CanaryHealthy"), condition(sim.raw, "Progressing")
    assert (healthy_condition["status"], healthy_condition["reason"]) == ("Unknown", "NoCanary")
    assert (progressing["status"], progressing["reason"]) == ("False", "Promoted")
    assert condition(sim.raw, "Ready")["status"] == "True"


# --- 11. a retrained candidate and a spec edit -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version", "target", "expected"),
    [("2", "2", "2"), ("1", "1", "3")],
    ids=["spec now pins 2: the edit wins", "spec unchanged: the candidate rolls out"],
)
def test_retrained_candidate_does_not_override_a_spec_edit(version: str, target: str, expected: str) -> None:
    """Item 11: a challenger retrained under model ref m@1 replaced the version a person pinned afterwards."""
    sim = Sim(make_spec(monitoring=DRIFT_NOW))
    sim.tick(target="1", signals=policy.Observation(time=sim.now + 10.0, drift_detected=True))
    assert sim.raw["retraining"]["runName"] and sim.raw["retraining"]["startedFor"] == "m@1"
    sim.spec = make_spec(version, monitoring=DRIFT_NOW)
    assert core.model_ref(sim.spec) == f"m@{version}"
    sim.tick(target=target, run=RunReport(run_id="r1", state="SUCCEEDED", challenger="3"))
    assert sim.raw["retraining"]["candidateVersion"] == "3" and sim.raw["retraining"]["candidateFor"] == "m@1"
    assert sim.raw["canaryVersion"] == expected
    sim.tick(target=target)
    assert sim.raw["canaryVersion"] == expected  # and it stays so on the next pass


# --- 12. no event spam -----------------------------------------------------------------------------------------


def test_drift_in_cooldown_is_announced_once() -> None:
    """Item 12: every evaluation that still found drift during the cooldown posted another DriftDetected event."""
    sim = Sim(make_spec(monitoring={"drift": {"consecutive": 1}, "retraining": {"cooldown": "24h"}}))
    sim.tick(target="1", signals=policy.Observation(time=sim.now + 10.0, drift_detected=True))
    assert len(sim.events("RetrainingTriggered")) == 1
    sim.tick(target="1", run=RunReport(run_id="r1", state="SUCCEEDED", challenger=None))
    assert not core.retraining_of(sim.raw).active
    evaluations = set()
    for _ in range(10):
        sim.tick(target="1", signals=policy.Observation(time=sim.now + 10.0, drift_detected=True))
        evaluations.add(sim.raw["retraining"]["lastEvaluation"])
        assert "cooldown" in sim.raw["retraining"]["reason"]
    assert len(evaluations) == 10
    assert len(sim.events("DriftDetected")) == 1
    assert len(sim.events("RetrainingTriggered")) == 1
    assert condition(sim.raw, "DriftDetected")["status"] == "True"


# --- property: invariants over random answers --------------------------------------------------------------------


def malformed(name: str, body_name: str) -> dict[str, Answer]:
    return {**healthy(), name: observe.parse_answer(MALFORMED[body_name])}


def missing(name: str) -> dict[str, Answer]:
    return {k: v for k, v in healthy().items() if k != name}


def labels_close() -> dict[str, Answer]:
    """Both versions labelled (250 each), AUC 0.79 against 0.80: the AUC test cannot decide."""
    close = {"canary.auc": value(0.79), "stable.auc": value(0.8), "canary.coverage": value(0.25), "stable.coverage": value(0.25)}
    return {**healthy(), **close}


# kind -> (the answers, or None for a pass that observes nothing; whether they carry evidence a promotion may rest on)
EVIDENCE: dict[str, tuple[Mapping[str, Answer] | None, bool]] = {
    "healthy": (healthy(), True),
    "failing": (failing(), True),
    "auc worse": (auc_gap(), True),
    "labels close": (labels_close(), True),
    "few in step": (answers(step=10.0), True),
}
NO_EVIDENCE: dict[str, tuple[Mapping[str, Answer] | None, bool]] = {
    "outage": (outage(), False),
    "not observed": (None, False),
    **{f"missing {n}": (missing(n), False) for n in JUDGED},
    **{f"malformed {n}: {b}": (malformed(n, b), False) for n in JUDGED for b in MALFORMED},
    **{f"AUC gap: {g}": (a, False) for g, a in AUC_GAPS.items()},
}
KINDS = {**EVIDENCE, **NO_EVIDENCE}
kinds = hs.one_of(hs.sampled_from(sorted(EVIDENCE)), hs.sampled_from(["outage", "not observed"]), hs.sampled_from(sorted(NO_EVIDENCE)))
passes = hs.lists(
    hs.tuples(kinds, hs.sampled_from(["2", "2", "2", None, "3"]), hs.booleans(), hs.sampled_from([0.5, 1.0, 1.0, 1.0, 2.0])),
    max_size=40,
)
steps_lists = hs.lists(hs.integers(1, 99), max_size=3, unique=True).map(lambda xs: [*sorted(xs), 100])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=steps_lists,
    threshold=hs.integers(1, 4),
    limit=hs.integers(1, 4),
    deadline=hs.sampled_from(["30s", "60s", "2m"]),
    script=passes,
)
@example(  # regression: failed checks past the deadline must end the canary below failureThreshold (4 here)
    steps=[100], threshold=4, limit=1, deadline="30s", script=[("auc worse", "2", True, 1.0)] * 7
)
def test_rollout_invariants_over_random_answers(steps: list[int], threshold: int, limit: int, deadline: str, script: list[Any]) -> None:
    """Property (items 1-4): promotion only from the last step and on evidence, weight monotone per rollout, the deadline a hard bound."""
    spec = make_spec(steps=steps, failureThreshold=threshold, inconclusiveLimit=limit, progressDeadline=deadline)
    sim = Sim(spec)
    sim.tick(target="1")
    top: dict[int, int] = {}
    for kind, target, ready, factor in script:
        given_answers, evidence = KINDS[kind]
        plan = sim.tick(given_answers, target=target, ready=ready, dt=spec.rollout.interval_s * factor)
        before = sim.passes[-1].before
        context = f"{kind} at {sim.now - START:.0f} s: {sim.raw['message']}"
        if any(e["event"] == "Promoted" for e in plan.events):
            # (i) only from the last step; (ii) only on a check that passed, never one without evidence
            assert before["canaryWeight"] == spec.rollout.steps[-1], context
            assert plan.verdict is not None and plan.verdict.outcome == "pass", context
            assert evidence, context
        st = sim.status
        if st.canary is not None:
            # (iii) the weight never goes down within one rollout
            assert st.weight >= top.get(st.rollout_id, 0), context
            top[st.rollout_id] = st.weight
        # (iv) never in progress longer than progress_deadline + interval after the step started
        assert sim.overdue() <= 0, f"{context}; step started {st.step_started and st.step_started - START:.0f} s, failed {st.failed_checks}"


# --- retraining that does not clear its breach: the window it ran with, then the ladder ---------------------------


def calibration_off(sim: Sim) -> policy.Observation:
    return policy.Observation(time=sim.now + 10.0, calibration_ratio=0.47, labelled=500)


def retrain_and_promote(sim: Sim, run_id: str, challenger: str) -> None:
    """The recorded run succeeds with ``challenger``, which canaries through every step to stable."""
    sim.tick(target="1", run=RunReport(run_id=run_id, state="SUCCEEDED", challenger=challenger))
    for _ in range(20):
        sim.tick(healthy(), target="1")
        if sim.status.stable == challenger and sim.status.canary is None:
            return
    raise AssertionError(f"{challenger} was not promoted: {sim.raw['message']}")


def test_a_calibration_breach_starts_a_recency_window_run_and_a_persisting_one_escalates_to_a_page() -> None:
    """Issue 19: the retrained version kept the old base rate; the alert fired against it and the policy cooled down silently."""
    spec = make_spec(monitoring={**DRIFT_NOW, "retraining": {"cooldown": "2m", "parameters": {"n_trials": "4"}}})
    sim = Sim(spec)
    sim.tick(target="1", signals=calibration_off(sim))
    params = core.run_parameters(sim.spec, sim.raw)
    assert params["n_trials"] == "4" and params["recency_half_life_days"] == "30" and params["calibration_days"] == "30"
    assert "observed/expected churners 0.47" in params["window_reason"]
    (triggered,) = sim.events("RetrainingTriggered")
    assert "weights halving every 30 days" in triggered["message"] and "observed/expected churners 0.47" in triggered["message"]
    assert triggered["message"].count("observed/expected") == 1  # said once, not again as the window's reason
    assert sim.raw["retraining"]["window"] == {k: v for k, v in params.items() if k != "n_trials"}

    retrain_and_promote(sim, "r1", "2")
    sim.now += 120.0  # the cooldown over
    sim.tick(target="1", signals=calibration_off(sim))  # the breach persists against v2: a shorter window
    assert len(sim.events("RetrainingTriggered")) == 2 and sim.raw["retraining"]["attempts"] == 2
    assert core.run_parameters(sim.spec, sim.raw)["window_days"] == "30"

    retrain_and_promote(sim, "r2", "3")
    sim.tick(target="1", signals=calibration_off(sim))
    (paged,) = sim.events("RetrainingIneffective")
    assert paged["type"] == "Warning" and "persists after 2 retraining run(s)" in paged["message"]
    assert condition(sim.raw, "RetrainingIneffective")["status"] == "True"
    for _ in range(3):  # no more runs and no more pages while the breach lasts
        sim.tick(target="1", signals=calibration_off(sim))
    assert len(sim.events("RetrainingTriggered")) == 2 and len(sim.events("RetrainingIneffective")) == 1

    sim.tick(target="1", signals=policy.Observation(time=sim.now + 10.0, calibration_ratio=1.02, labelled=500))
    assert condition(sim.raw, "RetrainingIneffective")["status"] == "False" and sim.raw["retraining"]["attempts"] == 0


def test_retraining_status_round_trips_the_window_and_the_escalation() -> None:
    rs = RetrainingStatus(attempts=2, escalated=True, window=(("calibration_days", "30"), ("window_reason", "why")))
    assert RetrainingStatus.from_status(rs.to_status()) == rs
    assert RetrainingStatus.from_status({"window": "not a map", "escalated": "yes"}) == RetrainingStatus()
