"""Table tests of the pure decisions: spec parsing, the sequential tests, the rollout machine, serving objects."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import pytest

from churnops_contract import policy
from churnops_contract.queries import latency_le
from churnops_contract.rollout import analysis, core, retraining
from churnops_contract.rollout import machine as rollout
from churnops_contract.rollout.analysis import Observation, VersionSample
from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.observe import bucket_counts, drifted, parse_answer
from churnops_contract.rollout.spec import Analysis, SpecError, parse, parse_duration
from churnops_operator import objects as serving
from churnops_operator.reconcile import Claim, owner_of, status_patch

BASE: dict[str, Any] = {"model": {"version": "1"}, "featureService": "churn_v1"}


def spec(**over: Any) -> Any:
    return parse({**BASE, **over})


def sample(n: float = 2000, errors: float = 0, slow: float = 0, scores: tuple[float, ...] | None = None, **kw: Any) -> VersionSample:
    buckets = scores if scores is not None else tuple(n / 11 for _ in range(11))
    return VersionSample(requests=n, errors=errors, slow=slow, timed=n, p95_ms=40.0, score_buckets=buckets, **kw)


def obs(c: VersionSample, s: VersionSample | None = None, look: int = 1, step: float | None = None) -> Observation:
    return Observation(c, s or sample(20000), step if step is not None else c.requests, look)


# --- spec ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"model": {"version": "1", "alias": "challenger"}}, "spec.model"),
        ({"model": {}}, "spec.model"),
        ({"model": {"version": "v7"}}, "spec.model.version"),
        ({"rollout": {"steps": [5, 5, 100]}}, "spec.rollout.steps[1]"),
        ({"rollout": {"steps": [5, 50]}}, "spec.rollout.steps"),
        ({"rollout": {"steps": [0, 100]}}, "spec.rollout.steps[0]"),
        ({"rollout": {"interval": "5 minutes"}}, "spec.rollout.interval"),
        ({"rollout": {"analysis": {"maxErrorRate": 2}}}, "spec.rollout.analysis.maxErrorRate"),
        ({"rollout": {"analysis": {"maxErrorRate": float("nan")}}}, "spec.rollout.analysis.maxErrorRate"),
        ({"rollout": {"analysis": {"minAUCDelta": 0}}}, "spec.rollout.analysis.minAUCDelta"),
        ({"serving": {"mode": "Standard"}}, "spec.serving.gateway"),
        ({"serving": {"minReplicas": 5, "maxReplicas": 2}}, "spec.serving"),
        ({"monitoring": {"drift": {"methods": ["wasserstein"]}}}, "spec.monitoring.drift.methods[0]"),
        ({"featureService": ""}, "spec.featureService"),
    ],
)
def test_invalid_specs_name_the_field(over: dict[str, Any], field: str) -> None:
    with pytest.raises(SpecError) as e:
        spec(**over)
    assert str(e.value).startswith(field), str(e.value)


def test_defaults_and_durations() -> None:
    s = spec()
    assert s.rollout.steps == (5, 25, 50, 100) and s.rollout.interval_s == 300 and s.monitoring.retraining.cooldown_s == 86400
    assert parse_duration("1h30m", "x") == 5400 and parse_duration("0.5s", "x") == 0.5
    assert s.analysis_key() == spec(monitoring={"evaluationInterval": "1m"}).analysis_key()  # monitoring does not restart analyses
    assert s.analysis_key() != spec(rollout={"interval": "1m"}).analysis_key()


# --- sequential tests ---------------------------------------------------------------------------------


def test_msprt_is_negative_at_the_null_and_grows_with_the_distance() -> None:
    assert analysis.msprt_log_lr(0.0, 1e-4, 0.0, 0.01) < 0
    values = [analysis.msprt_log_lr(d, 1e-4, 0.0, 0.01) for d in (0.02, 0.04, 0.08)]
    assert values == sorted(values) and values[-1] > math.log(400)


def test_equal_canary_passes_and_an_erroring_one_fails() -> None:
    a = Analysis()
    assert analysis.judge(a, obs(sample()), 200).outcome == "pass"
    verdict = analysis.judge(a, obs(sample(errors=200)), 200)  # 10 % errors vs 0 %
    assert verdict.outcome == "fail" and "error_rate fail" in verdict.reason


def test_errors_within_the_allowed_excess_pass() -> None:
    assert analysis.judge(Analysis(), obs(sample(errors=10)), 200).outcome == "pass"  # 0.5 % excess < 1 %


def test_slow_canary_fails_only_when_slower_than_the_stable_model_too() -> None:
    a = Analysis()
    assert analysis.judge(a, obs(sample(slow=400)), 200).outcome == "fail"  # 20 % slower than 100 ms
    both_slow = obs(sample(slow=400), sample(20000, slow=4000))
    assert analysis.judge(a, both_slow, 200).outcome == "pass"  # the cluster is slow, not the canary


def test_shifted_scores_fail_the_psi_check() -> None:
    shifted = (0, 0, 0, 0, 0, 0, 0, 500, 500, 500, 500)
    verdict = analysis.judge(Analysis(), obs(sample(scores=shifted)), 200)
    assert verdict.outcome == "fail" and "score_psi fail" in verdict.reason


def test_auc_is_pending_without_labels_and_judged_with_them() -> None:
    a = Analysis()
    v = analysis.judge(a, obs(sample(), sample(20000)), 200)  # no version reports labels: AUC does not exist yet
    assert v.outcome == "pass" and {r.name: r.outcome for r in v.results}["auc_delta"] == "pending"
    few = obs(sample(auc=0.80, labelled=50, positive_rate=0.2), sample(20000, auc=0.85, labelled=5000, positive_rate=0.2))
    v = analysis.judge(a, few, 200)  # both report labels, the canary fewer than minLabelled so far
    assert v.outcome == "pass" and {r.name: r.outcome for r in v.results}["auc_delta"] == "pending"
    one_sided = obs(sample(auc=0.60, labelled=5000, positive_rate=0.2))  # the stable reports no labels: AUC is expected, not pending
    assert analysis.judge(a, one_sided, 200).outcome == "inconclusive"
    worse = obs(sample(auc=0.75, labelled=20000, positive_rate=0.2), sample(20000, auc=0.85, labelled=20000, positive_rate=0.2))
    assert analysis.judge(a, worse, 200).outcome == "fail"
    same = obs(sample(auc=0.85, labelled=20000, positive_rate=0.2), sample(20000, auc=0.85, labelled=20000, positive_rate=0.2))
    assert analysis.judge(a, same, 200).outcome == "pass"


def labelled(auc: float, n: float) -> VersionSample:
    return sample(n, auc=auc, labelled=n, positive_rate=0.2)


def test_auc_test_fails_passes_or_stays_undecided_between_its_two_hypotheses() -> None:
    a = Analysis()  # minAUCDelta -0.03: "as good as stable" against "0.03 worse"

    def outcome(canary_auc: float, n: float) -> analysis.MetricResult:
        results = analysis.judge(a, obs(labelled(canary_auc, n), labelled(0.85, n)), 200).results
        return {r.name: r for r in results}["auc_delta"]

    assert outcome(0.82, 20000).outcome == "fail" and outcome(0.85, 20000).outcome == "pass"
    # 2,000 labels each cannot tell 0 from -0.03 apart: neither boundary is crossed.
    few_worse, few_same = outcome(0.835, 2000), outcome(0.85, 2000)
    assert few_worse.outcome == few_same.outcome == "undecided"
    assert few_worse.evidence > 0 and few_same.evidence == 0  # leaning toward "worse", and toward "as good"
    verdict = analysis.judge(a, obs(labelled(0.835, 2000), labelled(0.85, 2000)), 200)
    assert verdict.outcome == "pass" and not verdict.conclusive and verdict.leans_worse and "auc_delta undecided" in verdict.reason
    # A canary beyond the drop to catch never passes; one between the hypotheses goes the nearer way.
    assert outcome(0.80, 200_000).outcome == "fail" and outcome(0.84, 200_000).outcome == "pass"
    assert outcome(0.825, 200_000).outcome == "fail"


def test_wald_log_lr_is_zero_halfway_and_symmetric() -> None:
    assert analysis.wald_log_lr(-0.015, 1e-4, -0.03) == pytest.approx(0.0)
    assert analysis.wald_log_lr(0.0, 1e-4, -0.03) == pytest.approx(-analysis.wald_log_lr(-0.03, 1e-4, -0.03))


@pytest.mark.parametrize("missing", ["requests", "errors", "slow", "score_buckets"])
def test_missing_metrics_make_the_check_inconclusive(missing: str) -> None:
    c = replace(sample(), **{missing: None})  # type: ignore[arg-type]
    verdict = analysis.judge(Analysis(), obs(c), 200)
    assert verdict.outcome == "inconclusive"  # never a pass, and not the canary's failure either


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_metrics_make_the_check_inconclusive(value: float) -> None:
    assert analysis.judge(Analysis(), obs(replace(sample(), errors=value)), 200).outcome == "inconclusive"


def test_labels_without_auc_make_the_check_inconclusive() -> None:
    c = sample(auc=None, labelled=20000, positive_rate=0.2)
    assert analysis.judge(Analysis(), obs(c, sample(20000, auc=0.85, labelled=20000, positive_rate=0.2)), 200).outcome == "inconclusive"


def test_too_few_samples_waits() -> None:
    assert analysis.judge(Analysis(), obs(sample(50)), 200).outcome == "wait"


def test_latency_bucket_is_the_first_bound_at_or_above_the_limit_spelled_as_exported() -> None:
    assert latency_le(100) == "0.1" and latency_le(4) == "0.005" and latency_le(1000) == "1.0" and latency_le(10_000) == "+Inf"


# --- rollout machine -----------------------------------------------------------------------------------


def passing(samples: int = 1000) -> analysis.Verdict:
    return analysis.Verdict("pass", samples, samples, (), "ok")


def failing() -> analysis.Verdict:
    return analysis.Verdict("fail", 1000, 1000, (), "error_rate fail")


def started(s: Any, now: float = 100.0) -> RolloutStatus:
    """A canary of version 2 decided at ``now`` and applied to the serving objects in the same instant."""
    st = rollout.decide(s, RolloutStatus(), "1", 0.0).status
    return rollout.traffic_applied(rollout.decide(s, st, "2", now).status, now)


def test_no_check_before_the_serving_objects_carry_the_canary() -> None:
    s = spec()
    st = rollout.decide(s, rollout.decide(s, RolloutStatus(), "1", 0.0).status, "2", 100.0).status
    assert not rollout.check_due(s, st, 10_000.0)
    st = rollout.traffic_applied(st, 9_000.0)
    assert not rollout.check_due(s, st, 9_100.0) and rollout.check_due(s, st, 9_300.0)


def test_first_version_is_deployed_without_a_canary_then_a_new_one_starts_at_the_first_step() -> None:
    s = spec()
    t = rollout.decide(s, RolloutStatus(), "1", 0.0)
    assert t.status.stable == "1" and t.status.canary is None and t.events[0].reason == "Deployed"
    t = rollout.decide(s, t.status, "2", 10.0)
    assert (t.status.canary, t.status.weight, t.status.rollout_id) == ("2", 5, 1)


def test_healthy_canary_walks_every_step_then_promotes() -> None:
    s = spec()
    st = started(s)
    weights = [st.weight]
    now = 100.0
    while st.canary is not None:
        now += 300
        assert rollout.check_due(s, st, now)
        st = rollout.decide(s, st, "2", now, passing()).status
        weights.append(st.weight)
    assert weights == [5, 25, 50, 100, 0]
    assert st.stable == "2" and st.phase == "Promoted" and st.stable_slot == "green"


def test_rollback_happens_at_exactly_the_failure_threshold() -> None:
    s = spec(rollout={"failureThreshold": 3})
    st = started(s)
    for i in range(1, 4):
        t = rollout.decide(s, st, "2", 100.0 + 300 * i, failing())
        st = t.status
        assert (st.canary is None) == (i == 3), i
    assert st.phase == "RolledBack" and st.rejected == ("2",) and t.events[-1].reason == "RolledBack"
    assert rollout.decide(s, st, "2", 10_000.0).status == st  # a rejected version is not retried


def test_a_passing_check_without_enough_step_samples_waits() -> None:
    s = spec()
    st = started(s)
    st = rollout.decide(s, st, "2", 400.0, analysis.Verdict("pass", 5000, 50, (), "ok")).status
    assert st.weight == 5 and st.failed_checks == 0


def test_no_traffic_past_the_progress_deadline_withdraws_without_rejecting() -> None:
    s = spec(rollout={"progressDeadline": "10m"})
    st = started(s)
    wait = analysis.Verdict("wait", 10, 10, (), "10 of 200")
    st = rollout.decide(s, st, "2", 400.0, wait).status
    assert st.failed_checks == 0 and st.canary == "2"
    st = rollout.decide(s, st, "2", 800.0, wait).status
    assert st.canary is None and st.phase == "RolledBack" and "progress deadline" in st.message
    assert st.rejected == () and st.deferred is not None and st.deferred.version == "2" and st.deferred.until > 800.0


def undecided(worse: bool, decidable: bool = True) -> analysis.Verdict:
    auc = analysis.MetricResult("auc_delta", "undecided", 0.84, 0.85, -0.03, 0.4 if worse else 0.0, "AUC undecided", decidable)
    return analysis.Verdict("pass", 5000, 1000, (auc,), "all judged metrics within limits; auc_delta undecided")


def at_last_step(s: Any) -> RolloutStatus:
    st, now = started(s), 100.0
    while st.weight < 100:
        now += 300
        st = rollout.decide(s, st, "2", now, undecided(worse=True)).status  # undecided AUC lets the steps pass
    return st


def test_an_undecided_auc_holds_the_promotion_until_it_decides() -> None:
    s = spec()
    st = at_last_step(s)
    assert st.weight == 100 and st.step_started == 1000.0
    held = rollout.decide(s, st, "2", 1300.0, undecided(worse=False)).status
    assert held.canary == "2" and held.weight == 100 and held.failed_checks == 0 and "holding at 100%" in held.message
    assert rollout.decide(s, held, "2", 1600.0, passing()).status.stable == "2"


@pytest.mark.parametrize(("worse", "stable", "failed"), [(True, "1", 1), (False, "2", 0)])
def test_at_the_progress_deadline_the_likelier_hypothesis_settles_an_undecided_auc(worse: bool, stable: str, failed: int) -> None:
    s = spec(rollout={"progressDeadline": "10m"})
    st = at_last_step(s)
    st = rollout.decide(s, st, "2", st.step_started + 300, undecided(worse)).status  # type: ignore[operator]
    assert st.canary == "2" and st.failed_checks == 0
    t = rollout.decide(s, st, "2", st.step_started + 600, undecided(worse))  # type: ignore[operator]
    assert t.status.stable == stable and t.status.canary is None  # settled: rolled back (rejected) or promoted
    if worse:
        assert "lean to worse" in t.status.message and t.status.rejected == ("2",) and failed == 1
    else:
        assert "settled at the progress deadline" in t.events[-1].note


def test_an_undecided_auc_that_more_canary_data_cannot_decide_is_settled_at_once() -> None:
    s = spec()
    st = at_last_step(s)
    t = rollout.decide(s, st, "2", 1300.0, undecided(worse=False, decidable=False))
    assert t.status.stable == "2" and "as more canary data cannot decide them" in t.events[-1].note
    t = rollout.decide(s, st, "2", 1300.0, undecided(worse=True, decidable=False))
    assert t.status.canary == "2" and t.status.failed_checks == 1 and "lean to worse" in t.status.message


def test_too_few_stable_labels_make_the_auc_test_undecidable() -> None:
    # A better canary against a stable version with 300 labels (about 20 churners): neither boundary is in reach.
    c, s = labelled(0.866, 5000), replace(labelled(0.816, 300), positive_rate=0.066)
    result = {r.name: r for r in analysis.judge(Analysis(min_auc_delta=-0.05), obs(c, s), 200).results}["auc_delta"]
    assert result.outcome == "undecided" and not result.decidable and "too few" in result.detail
    plenty = {r.name: r for r in analysis.judge(Analysis(), obs(labelled(0.84, 2000), labelled(0.85, 20000)), 200).results}
    assert plenty["auc_delta"].outcome == "undecided" and plenty["auc_delta"].decidable


def test_spec_change_restarts_the_analysis_as_a_new_rollout() -> None:
    s = spec()
    st = rollout.decide(s, started(s), "2", 400.0, passing()).status
    assert st.weight == 25
    changed = spec(rollout={"analysis": {"maxScorePSI": 0.3}})
    t = rollout.decide(changed, st, "2", 500.0)
    assert (t.status.weight, t.status.rollout_id, t.events[0].reason) == (5, st.rollout_id + 1, "AnalysisRestarted")


def test_new_target_replaces_the_canary_and_the_stable_target_withdraws_it() -> None:
    s = spec()
    st = started(s)
    assert rollout.decide(s, st, "3", 200.0).status.canary == "3"
    withdrawn = rollout.decide(s, st, "1", 200.0).status
    assert withdrawn.canary is None and withdrawn.stable == "1"
    assert rollout.decide(s, st, "1", 200.0).events[-1].reason == "CanaryAborted"


def test_status_round_trips() -> None:
    st = started(spec())
    assert RolloutStatus.from_status(st.to_status()) == st


def test_choose_target_prefers_a_newer_retrained_candidate_unless_disabled_or_rejected() -> None:
    assert rollout.choose_target("3", "4", True, ()) == "4"
    assert rollout.choose_target("3", "4", False, ()) == "3"
    assert rollout.choose_target("3", "4", True, ("4",)) == "3"
    assert rollout.choose_target("5", "4", True, ()) == "5"


# --- retraining ------------------------------------------------------------------------------------------


def test_retraining_triggers_after_consecutive_breaches_then_waits_for_the_cooldown() -> None:
    s = spec(monitoring={"drift": {"consecutive": 2}, "retraining": {"cooldown": "1h"}})
    rs = retraining.RetrainingStatus()
    rs, ev = retraining.evaluate(s, rs, policy.Observation(time=0.0, drift_detected=True), "ns-churn")
    assert rs.pending_key is None and ev[0].reason == "DriftDetected"
    rs, ev = retraining.evaluate(s, rs, policy.Observation(time=10.0, drift_detected=True), "ns-churn")
    assert rs.pending_key == "ns-churn-retrain-1" and ev[0].reason == "RetrainingTriggered" and rs.active
    rs, _ = retraining.on_run(rs, "run-1", "SUCCEEDED", "2", "1")
    assert rs.candidate == "2" and not rs.active
    for t in (20.0, 30.0, 40.0):
        rs, _ = retraining.evaluate(s, rs, policy.Observation(time=t, drift_detected=True), "ns-churn")
    assert rs.triggers == 1 and "cooldown" in rs.reason


def test_a_failed_run_leaves_no_candidate() -> None:
    rs = retraining.RetrainingStatus(pending_key="k", triggers=1)
    rs, ev = retraining.on_run(rs, "r", "FAILED", None, "1")
    assert rs.candidate is None and ev[0].reason == "RetrainingFailed"


# --- serving objects ---------------------------------------------------------------------------------------

OWNER = serving.Owner("churn", "churn", "uid-1")
URIS = {"1": "s3://m/1", "2": "s3://m/2"}


def test_the_deployment_already_serving_a_model_keeps_it_against_a_newcomer_of_the_same_second() -> None:
    # creationTimestamp counts whole seconds: a rival created in the owner's second must not win by its uid
    second = "2026-12-07T13:11:20Z"
    owner = Claim("churn", second, "f-uid", "ns/churn", serving=True)
    rival = Claim("churn", second, "0-uid", "ns/rival")
    other = Claim("other", "2026-01-01T00:00:00Z", "a-uid", "ns/other")
    assert owner_of("churn", [rival, owner, other]) == owner
    # before either serves, the oldest claim then the smallest uid decides, the same on every pass
    fresh = replace(owner, serving=False)
    assert owner_of("churn", [fresh, rival]) == rival == owner_of("churn", [rival, fresh])
    older = replace(fresh, created="2026-12-07T13:11:19Z")
    assert owner_of("churn", [older, rival]) == older
    assert owner_of("absent", [owner, rival]) is None


def test_serverless_canary_uses_kserve_traffic_split_only_on_an_existing_service() -> None:
    s = spec()
    st = started(s)
    fresh = serving.desired(OWNER, s, core.routing(st.to_status()), URIS, {})
    assert fresh.objects[0]["spec"]["predictor"]["canaryTrafficPercent"] is None  # recreate the stable first
    existing = serving.desired(OWNER, s, core.routing(st.to_status()), URIS, {"churn": fresh.objects[0]})
    predictor = existing.objects[0]["spec"]["predictor"]
    assert predictor["canaryTrafficPercent"] == 5 and predictor["model"]["env"][1] == {"name": "CHURNOPS_MODEL_VERSION", "value": "2"}
    assert existing.objects[0]["metadata"]["annotations"]["churnops.io/artifact-uri"] == "s3://m/2"


def test_standard_mode_weights_sum_to_100_and_promotion_flips_the_slot() -> None:
    s = spec(serving={"mode": "Standard", "gateway": {"name": "gw"}})
    st = started(s)
    want = serving.desired(OWNER, s, core.routing(st.to_status()), URIS, {})
    route = want.objects[-1]
    assert serving.route_weights(route) == [95, 5] and [o["metadata"]["name"] for o in want.objects] == [
        "churn-blue",
        "churn-blue-predictor",  # the PodDisruptionBudgets (two replicas by default)
        "churn-green",
        "churn-green-predictor",
        "churn",
    ]
    promoted = replace(st, canary=None, stable="2", stable_slot="green", weight=0)
    after = serving.desired(OWNER, s, core.routing(promoted.to_status()), URIS, {})
    assert serving.route_weights(after.objects[-1]) == [100] and ("InferenceService", "churn-blue") in after.absent


def test_differs_and_status_patch() -> None:
    want = {"spec": {"a": 1, "gone": None, "l": [1, 2]}}
    assert not serving.differs(want, {"spec": {"a": 1, "l": [1, 2], "extra": 3}})
    assert serving.differs(want, {"spec": {"a": 1, "gone": 5, "l": [1, 2]}})
    assert serving.differs(want, {"spec": {"a": 1, "l": [1]}})
    assert status_patch({"a": 1, "b": {"x": 1, "y": 2}}, {"a": 1, "b": {"x": 2}, "c": None}) == {"b": {"x": 2, "y": None}}


def test_drift_follows_the_predictors_verdict_and_falls_back_to_the_worst_score() -> None:
    assert drifted(1.0, 0.05, 0.2) is True  # the verdict wins over a small worst score
    assert drifted(0.0, 0.9, 0.2) is False  # one large score among 116 features is not a drifted window
    assert drifted(None, 0.3, 0.2) is True and drifted(None, 0.1, 0.2) is False
    assert drifted(None, None, 0.2) is None


def test_prometheus_answers_are_read_one_way_for_the_operator_and_the_runner() -> None:
    vector = {
        "resultType": "vector",
        "result": [
            {"metric": {"le": "+Inf"}, "value": [0, "10"]},
            {"metric": {"le": "0.5"}, "value": [0, "4"]},
            {"metric": {"version": "3"}, "value": [0, "7"]},
            {"metric": {}, "value": [0, "1"]},
        ],
    }
    body = {"status": "success", "data": vector}
    assert parse_answer(body).values == {"+Inf": 10.0, "0.5": 4.0, "": 1.0}  # without an le label the key is "": the last one wins
    assert (parse_answer(body, ("le", "version")).values or {})["3"] == 7.0
    assert parse_answer({"status": "success", "data": {"resultType": "scalar", "result": [0, "2.5"]}}).values == {"": 2.5}
    assert bucket_counts({"+Inf": 10.0, "0.5": 4.0, "0.1": 1.0}) == (1.0, 3.0, 6.0)  # ordered by le, +Inf last
    assert bucket_counts({"0.1": 5.0, "+Inf": 3.0}) == (5.0, 0.0)  # a reset mid-window never gives a negative count
    assert bucket_counts({}) is None
    assert bucket_counts({"0.1": math.nan, "+Inf": 1.0}) is None


def test_failed_passes_back_off_exponentially_with_jitter() -> None:
    import random  # noqa: PLC0415

    from churnops_operator.handlers import MAX_BACKOFF_S, backoff  # noqa: PLC0415

    rng = random.Random(1)
    for failures in range(1, 12):
        delays = [backoff(failures, 1.0, rng) for _ in range(200)]
        nominal = min(2.0 ** (failures - 1), MAX_BACKOFF_S)
        assert all(0.5 * nominal <= d < 1.5 * nominal for d in delays)
        assert len({round(d, 6) for d in delays}) > 150  # jittered: replicas and resources do not retry in lockstep


def test_a_pipeline_that_can_never_start_ends_the_run_and_not_the_rollouts() -> None:
    from churnops_contract.rollout.status import Health  # noqa: PLC0415

    s = spec()
    raw = core.decide(s, None, core.World(target="1", health=Health(True)), 1, 0.0).status
    raw["retraining"] = {**raw["retraining"], "runName": "churn-abc-retrain-1", "triggers": 1}
    assert core.run_action(raw) == ("start", "churn-abc-retrain-1")
    world = core.World(target="2", health=Health(True), run=core.RunReport(failure="no pipeline named 'nope'"))
    plan = core.decide(s, raw, world, 1, 10.0)
    assert plan.status["retraining"]["runState"] == "FAILED" and core.run_action(plan.status) is None
    assert [e["event"] for e in plan.events] == ["RetrainingFailed", "CanaryStarted"]  # the rollout goes on
    assert plan.status["phase"] == "Progressing"


def test_a_pipelines_outage_leaves_the_run_and_the_rollout_going() -> None:
    from churnops_contract.rollout.status import Health  # noqa: PLC0415

    s = spec()
    raw = core.decide(s, None, core.World(target="1", health=Health(True)), 1, 0.0).status
    raw["retraining"] = {**raw["retraining"], "runName": "churn-abc-retrain-1", "runId": "r-1", "triggers": 1}
    down = Health(True, {"pipelines": "kfp: unreachable"})
    plan = core.decide(s, raw, core.World(target="2", health=down, run=None), 1, 10.0)  # KFP did not answer
    assert plan.status["retraining"]["runId"] == "r-1" and core.run_action(plan.status) == ("poll", "r-1")  # tracked again next pass
    assert plan.status["canaryVersion"] == "2"  # the rollout does not wait for KFP
    degraded = next(c for c in plan.status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "PipelinesUnavailable"


def test_a_progress_deadline_shorter_than_the_interval_is_refused() -> None:
    with pytest.raises(SpecError, match=r"spec.rollout.progressDeadline: '1m' is shorter than the interval '5m'"):
        parse({"model": {"version": "1"}, "featureService": "f", "rollout": {"interval": "5m", "progressDeadline": "1m"}})
    assert parse({"model": {"version": "1"}, "featureService": "f", "rollout": {"interval": "1h"}}).rollout.progress_deadline_s == 3600.0


def test_the_history_stays_bounded_once_its_entries_are_posted_and_applied() -> None:
    from churnops_contract.rollout.status import Health  # noqa: PLC0415

    s = spec(rollout={"steps": [50, 100], "interval": "60s", "minSamples": 10})
    raw: dict[str, Any] = {}
    now, version = 0.0, 1
    for _ in range(40):  # forty rollouts: CanaryStarted, StepAdvanced, Promoted each
        world = core.World(target=str(version), health=Health(True), canary_ready=True)
        for _ in range(4):
            now += 60.0
            observation = obs(sample(2000), sample(20000)) if core.due(s, raw, now, True).check else None
            raw = core.decide(s, raw, replace(world, observation=observation), 1, now).status
            raw = {**core.mark_posted(raw, core.history_seq(raw)), "registrySynced": core.history_seq(raw)}  # what a driver does
        version += 1
    assert raw["stableVersion"] == "40" and core.history_seq(raw) > 100
    assert len(raw["history"]) <= core.HISTORY_LIMIT and core.unposted(raw) == () and core.registry_writes(raw) == ()
