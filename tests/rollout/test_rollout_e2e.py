"""Canary rollouts against a real predictor: `churnops serve --route churn` over loopback, an MLflow registry on SQLite.

The runner is stepped with its own clock (each step is one check interval
later) while the test sends traffic through the ``churn`` endpoint, so the
outcome does not depend on how fast this machine is: a step without enough
canary requests waits, it never fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from churnops.rollout.runner import Runner, StepReport
from churnops.serving.routing_table import RoutingTable, read_table
from churnops.training import registry
from churnops_contract import registry as names
from tests.rollout.conftest import BAD, HEALTHY, STABLE, Setup, wait_for
from tests.support import groups

pytestmark = groups.ROLLOUT_MODELS

INTERVAL_S = 10.0
SPEC: dict[str, Any] = {
    "rollout": {"steps": [5, 25, 50, 100], "interval": "10s", "minSamples": 20, "failureThreshold": 2},
    "monitoring": {"retraining": {"enabled": False}},
}
MAX_STEPS = 150  # far more than needed: a step without enough canary traffic only waits


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def tick(self) -> float:
        self.now += INTERVAL_S
        return self.now


def target(runner: Runner, version: str, clock: Clock) -> StepReport:
    """Point the deployment at ``version`` (the spec in the CRD's shape), as the demo does."""
    return runner.apply({**SPEC, "model": {"version": version}}, now=clock.tick())


def deploy_stable(setup: Setup, runner: Runner, clock: Clock) -> None:
    """Version 1 as the deployment's first version, served by the route once the predictor has loaded it."""
    report = target(runner, STABLE, clock)
    assert (report.phase, report.stable, report.canary) == ("Promoted", STABLE, None)
    assert [e["reason"] for e in report.events] == ["Deployed"]
    wait_for(lambda: setup.serves(STABLE), "the route serves version 1")


def drive(setup: Setup, runner: Runner, clock: Clock, done: Callable[[StepReport], bool], requests: int = 60) -> list[StepReport]:
    """Traffic, then a step one interval later, until ``done``."""
    reports = []
    for _ in range(MAX_STEPS):
        setup.send(requests)
        report = runner.step(clock.tick())
        reports.append(report)
        if done(report):
            return reports
    raise AssertionError(f"not done after {MAX_STEPS} steps; last: {reports[-1]}")


def rollout_entries(setup: Setup, canary: str) -> list[dict[str, Any]]:
    """The timeline of the (last) rollout of ``canary``."""
    timeline = setup.store.timeline()
    started = [e for e in timeline if e["kind"] == "event" and e["reason"] == "CanaryStarted" and e["canary"] == canary]
    return [e for e in timeline if e.get("rolloutId") == started[-1]["rolloutId"]]


def test_a_healthy_canary_is_promoted_through_every_step(setup: Setup) -> None:
    clock = Clock(1_800_000_000.0)
    runner = setup.runner(clock)
    deploy_stable(setup, runner, clock)
    started = target(runner, HEALTHY, clock)
    assert (started.phase, started.canary, started.weight) == ("Progressing", HEALTHY, 5)
    assert read_table(setup.store.routing_path).same_routes(RoutingTable(STABLE, HEALTHY, 5))

    reports = drive(setup, runner, clock, lambda r: r.canary is None)

    last = reports[-1]
    assert (last.phase, last.stable, last.canary) == ("Promoted", HEALTHY, None)
    assert read_table(setup.store.routing_path).same_routes(RoutingTable(HEALTHY))
    assert registry.alias_version(setup.registry, names.CHAMPION) == HEALTHY
    tags = MlflowClient(setup.registry.tracking_uri).get_model_version(setup.registry.model_name, HEALTHY).tags
    assert "passed every step" in tags[names.TAG_PROMOTION_REASON]
    entries = rollout_entries(setup, HEALTHY)
    checks = [e for e in entries if e["kind"] == "check"]
    assert {c["outcome"] for c in checks} <= {"pass", "wait"} and all(c["failedChecks"] == 0 for c in checks)
    passed = [c for c in checks if c["outcome"] == "pass" and c["figures"]["samples"] >= 20]
    assert sorted({c["weight"] for c in passed}) == [5, 25, 50, 100]
    for c in passed:
        assert c["figures"]["score_psi"]["outcome"] == "pass" and c["figures"]["error_rate"]["canary"] == 0.0
        assert c["figures"]["auc_delta"]["outcome"] == "pending"  # no delayed labels: AUC is not judged, nor counted as passed
    weights = [e["weight"] for e in entries if e["kind"] in ("routing", "check") and e["canary"] == HEALTHY]
    assert weights == sorted(weights) and weights[0] == 5
    assert [e["reason"] for e in entries if e["kind"] == "event"] == ["CanaryStarted", *["StepAdvanced"] * 3, "Promoted"]
    history = setup.store.load().status["history"]
    assert [(h["event"], h["from"], h["to"]) for h in history] == [
        ("Deployed", None, STABLE),
        ("CanaryStarted", STABLE, HEALTHY),
        *[("StepAdvanced", None, None)] * 3,
        ("Promoted", STABLE, HEALTHY),
    ]
    assert [h["seq"] for h in history] == list(range(1, 7))  # each decision numbered once, its event posted once
    wait_for(lambda: setup.send(5) == {HEALTHY: 5}, "every request answered by the promoted version")
    wait_for(lambda: setup.loaded() == {HEALTHY}, "the replaced version unloaded by the router")


def test_a_bad_canary_is_rolled_back_at_the_failure_threshold(setup: Setup) -> None:
    clock = Clock(1_800_000_000.0)
    runner = setup.runner(clock)
    deploy_stable(setup, runner, clock)
    assert target(runner, BAD, clock).canary == BAD

    reports = drive(setup, runner, clock, lambda r: r.canary is None)

    last = reports[-1]
    assert (last.phase, last.stable, last.canary) == ("RolledBack", STABLE, None)
    assert [e["reason"] for e in last.events] == ["RolledBack"]
    checks = [e for e in rollout_entries(setup, BAD) if e["kind"] == "check"]
    judged = [c for c in checks if c["outcome"] != "wait"]
    assert [c["outcome"] for c in judged] == ["fail", "fail"]  # rolled back on the second failed check: the threshold, not later
    assert [c["failedChecks"] for c in judged] == [1, 2]
    assert all(c["weight"] == 5 for c in checks)  # it never advanced
    assert all(c["figures"]["score_psi"]["outcome"] == "fail" for c in judged)
    status = setup.store.load().status
    assert status["rejectedVersions"] == [BAD] and status["canaryVersion"] is None and status["canaryWeight"] == 0
    assert read_table(setup.store.routing_path).same_routes(RoutingTable(STABLE))
    assert registry.alias_version(setup.registry, names.CHAMPION) == STABLE
    tags = MlflowClient(setup.registry.tracking_uri).get_model_version(setup.registry.model_name, BAD).tags
    assert names.TAG_ROLLED_BACK_AT in tags and "score_psi fail" in tags[names.TAG_ROLLBACK_REASON]
    wait_for(lambda: setup.send(20) == {STABLE: 20}, "every request back on the stable version")
    # the rejected version stays rejected: the same target does not start it again
    assert runner.step(clock.tick()).canary is None


def test_the_route_answers_503_without_a_stable_version_and_names_the_version_that_scored(setup: Setup) -> None:
    with setup.server.client() as c:
        r = c.post("/v1/models/churn:predict", json={"instances": [{"customer_id": setup.customers[0]}]})
        assert r.status_code == 503 and "no stable version" in r.json()["error"]
        assert c.get("/v2/health/ready").status_code != 200  # not ready while the route serves nothing
        setup.runner().apply({**SPEC, "model": {"version": STABLE}})
        wait_for(lambda: c.get("/v2/health/ready").status_code == 200, "the server is ready once the stable version loaded")
        answer = setup.predict(c, setup.customers[:3], top_k=5)
        assert [p["model_version"] for p in answer] == [STABLE] * 3 and all(len(p["reasons"]) == 5 for p in answer)
        v2 = c.post(
            "/v2/models/churn/infer",
            json={"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [setup.customers[0]]}]},
        )
        assert v2.status_code == 200 and v2.json()["model_name"] == "churn" and v2.json()["model_version"] == STABLE


def test_a_canary_that_cannot_load_is_withdrawn_at_the_progress_deadline(setup: Setup) -> None:
    uri = MlflowClient(setup.registry.tracking_uri).get_model_version_download_uri(setup.registry.model_name, HEALTHY)
    with (Path(uri.removeprefix("file://")) / "artifacts" / registry.MODEL_FILE).open("ab") as f:
        f.write(b"altered after registration")  # its sha256 no longer matches: the predictor refuses to load it
    clock = Clock(1_800_000_000.0)
    runner = setup.runner(clock)
    deploy_stable(setup, runner, clock)
    spec = {**SPEC, "rollout": {**SPEC["rollout"], "progressDeadline": "60s"}}
    assert runner.apply({**spec, "model": {"version": HEALTHY}}, now=clock.tick()).canary == HEALTHY

    reports = drive(setup, runner, clock, lambda r: r.canary is None, requests=5)

    assert reports[-1].phase == "RolledBack" and reports[-1].stable == STABLE
    checks = [e for e in rollout_entries(setup, HEALTHY) if e["kind"] == "check"]
    assert checks == []  # a canary that never loaded is never judged: no figures, no pass, no wait
    status = setup.store.load().status
    assert status["history"][-1]["event"] == "RolledBack" and "never became ready" in status["history"][-1]["reason"]
    # Not shown to be the canary's fault (it never served): withdrawn and retried after a backoff, not rejected.
    assert status["rejectedVersions"] == [] and status["deferred"]["version"] == HEALTHY
    assert status["deferred"]["until"] > clock.now
    assert setup.send(10) == {STABLE: 10}


def test_errors_on_the_route_are_counted_under_the_version_that_answered(setup: Setup) -> None:
    def errors() -> dict[tuple[str, str, str], float]:
        return {
            (d["model"], d["version"], d["code"]): v for labels, v in setup.samples("churnops_errors_total").items() for d in [dict(labels)]
        }

    with setup.server.client() as c:
        assert c.post("/v1/models/churn:predict", json={"instances": [{"customer_id": setup.customers[0]}]}).status_code == 503
        setup.runner().apply({**SPEC, "model": {"version": STABLE}})
        wait_for(lambda: setup.serves(STABLE), "the route serves version 1")
        unknown = c.post("/v1/models/churn:predict", json={"instances": [{"customer_id": 1}]})
    assert unknown.status_code == 404 and "customer 1" in unknown.json()["error"]
    counted = errors()
    assert counted[("churn-classifier", STABLE, "404")] == 1  # the router told the middleware which version answered
    assert counted[("-", "-", "503")] >= 1  # before any version was chosen: no version's error
