"""Property-based tests of the rollout over random metric sequences (Hypothesis).

Whatever the metrics say (good, bad, missing, NaN, flapping between them) and
whatever targets the spec names over time:
- the canary weight never goes down within one rollout;
- a version is rolled back at most once (it is not retried);
- the stable version changes only by promoting the canary (no flapping back);
- every reachable status gives serving objects with at most one canary and
  route weights that sum to 100.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from churnops_contract.rollout import analysis, core
from churnops_contract.rollout import machine as rollout
from churnops_contract.rollout.analysis import Observation, VersionSample
from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.spec import parse
from churnops_operator import objects as serving

URIS = {str(v): f"s3://m/{v}" for v in range(1, 5)}
OWNER = serving.Owner("churn", "churn", "uid")

counts = st.one_of(st.floats(0, 5000), st.just(math.nan), st.none())
version_samples = st.builds(
    VersionSample,
    requests=counts,
    errors=st.one_of(st.floats(0, 300), st.just(math.nan), st.none()),
    slow=st.one_of(st.floats(0, 300), st.none()),
    timed=counts,
    score_buckets=st.one_of(st.none(), st.lists(st.floats(0, 500), min_size=11, max_size=11).map(tuple)),
    auc=st.one_of(st.none(), st.floats(0.5, 0.95)),
    labelled=st.one_of(st.none(), st.floats(0, 5000)),
    positive_rate=st.one_of(st.none(), st.floats(0.05, 0.5)),
)
steps_lists = st.lists(st.integers(1, 99), min_size=0, max_size=4, unique=True).map(lambda xs: [*sorted(xs), 100])
events = st.tuples(
    st.floats(0, 400),  # seconds until this pass
    st.sampled_from(["1", "2", "3", "4"]),  # the target the spec names now
    version_samples,
    version_samples,
    st.floats(0, 5000),  # canary requests in the step
)


@settings(max_examples=300, deadline=None)
@given(steps=steps_lists, threshold=st.integers(1, 3), mode=st.sampled_from(["Serverless", "Standard"]), seq=st.lists(events, max_size=60))
def test_rollout_invariants(steps: list[int], threshold: int, mode: str, seq: list[tuple[Any, ...]]) -> None:
    raw: dict[str, Any] = {
        "model": {"version": "1"},
        "featureService": "f",
        "rollout": {"steps": steps, "interval": "60s", "minSamples": 100, "failureThreshold": threshold, "progressDeadline": "10m"},
        "serving": {"mode": mode, "gateway": {"name": "gw"}},
    }
    s = parse(raw)
    state = RolloutStatus()
    now = 0.0
    top: dict[int, int] = {}
    rollbacks: Counter[str] = Counter()
    for dt, target, c, stab, step_requests in seq:
        now += dt
        state = rollout.traffic_applied(state, now)  # what the reconcile pass does once the objects are applied
        verdict = None
        if rollout.check_due(s, state, now):
            verdict = analysis.judge(s.rollout.analysis, Observation(c, stab, step_requests, state.checks + 1), s.rollout.min_samples)
        before = state
        transition = rollout.decide(s, state, target, now, verdict)
        state = transition.status
        reasons = [e.reason for e in transition.events]
        # weight only rises within a rollout
        if state.canary is not None:
            assert state.weight >= top.get(state.rollout_id, 0)
            top[state.rollout_id] = state.weight
            assert state.weight in s.rollout.steps
        # stable changes only by promotion of the canary (or the first deployment)
        if before.stable is not None and state.stable != before.stable:
            assert state.stable == before.canary and reasons == ["Promoted"]
            assert before.weight == s.rollout.steps[-1]  # promotion only from the last step
            assert verdict is not None and verdict.outcome == "pass"  # never on missing evidence
        if "RolledBack" in reasons and before.canary in state.rejected:
            rollbacks[f"{before.canary}/{before.rollout_id}"] += 1
        assert all(n <= 1 for n in rollbacks.values()), rollbacks
        # a canary never outlives its step's deadline by more than one interval
        if state.canary is not None and state.step_started is not None:
            assert now - state.step_started <= s.rollout.progress_deadline_s + s.rollout.interval_s
        # serving objects for this status, on an existing and on a missing InferenceService
        if state.stable is not None:
            for observed in (
                {},
                {"churn": {"metadata": {"labels": {serving.LABEL_VERSION: state.retired or "x"}}}},
            ):
                want = serving.desired(OWNER, s, core.routing(state.to_status()), URIS, observed)
                roles = [o["metadata"]["labels"].get(serving.LABEL_ROLE) for o in want.objects if o["kind"] == serving.ISVC_KIND]
                assert roles.count("canary") <= 1
                for obj in want.objects:
                    if obj["kind"] == serving.ROUTE_KIND:
                        assert sum(serving.route_weights(obj)) == 100
                    elif obj["kind"] == serving.ISVC_KIND:
                        percent = obj["spec"]["predictor"]["canaryTrafficPercent"]
                        assert percent is None or 0 <= percent <= 100
