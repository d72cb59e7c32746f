"""The retraining policy, table by table: what breaches, how breaches accumulate, cooldown, labels, disabled; plus properties."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from churnops_contract.policy import Decision, Observation, PolicyState, RetrainingPolicy, breaches, decide

NAN = float("nan")
# Binary fractions, so that "exactly at the limit" is exact: reference 0.875, limit 0.0625.
REF = 0.875
DEFAULT = RetrainingPolicy(max_auc_drop=0.0625, max_estimated_auc_drop=0.0625)


def obs(t: float = 0.0, **signals: object) -> Observation:
    return Observation(time=t, **signals)  # type: ignore[arg-type]


# --- one observation: which signals breach, and whether anything was observed -------------------------------


@pytest.mark.parametrize(
    ("observation", "breached", "observed"),
    [
        pytest.param(obs(drift_detected=True), ("drift",), True, id="drift"),
        pytest.param(obs(drift_detected=True, drifted_share=0.4), ("drift (40% of features)",), True, id="drift-with-share"),
        pytest.param(obs(drift_detected=True, drifted_share=NAN), ("drift",), True, id="drift-share-nan"),
        pytest.param(obs(drift_detected=False, drifted_share=0.9), (), True, id="no-drift-verdict-wins-over-share"),
        pytest.param(
            obs(measured_auc=0.75, labelled=500, reference_auc=REF),
            ("measured AUC 0.750 < reference 0.875 - 0.0625",),
            True,
            id="measured-drop",
        ),
        pytest.param(obs(measured_auc=0.8125, labelled=500, reference_auc=REF), (), True, id="measured-drop-exactly-at-limit"),
        pytest.param(obs(measured_auc=0.85, labelled=500, reference_auc=REF), (), True, id="measured-within-limit"),
        pytest.param(obs(measured_auc=0.5, labelled=199, reference_auc=REF), (), False, id="measured-too-few-labels"),
        pytest.param(
            obs(measured_auc=0.5, labelled=200, reference_auc=REF),
            ("measured AUC 0.500 < reference 0.875 - 0.0625",),
            True,
            id="measured-min-labels",
        ),
        pytest.param(obs(measured_auc=0.5, labelled=500), (), False, id="measured-without-reference"),
        pytest.param(obs(measured_auc=0.5, labelled=500, reference_auc=NAN), (), False, id="reference-nan"),
        pytest.param(obs(measured_auc=NAN, labelled=500, reference_auc=REF), (), False, id="measured-nan"),
        pytest.param(
            obs(estimated_auc=0.75, reference_auc=REF),
            ("estimated AUC 0.750 < reference 0.875 - 0.0625",),
            True,
            id="estimated-drop-no-labels-needed",
        ),
        pytest.param(obs(estimated_auc=0.85, reference_auc=REF), (), True, id="estimated-within-limit"),
        pytest.param(obs(estimated_auc=NAN, reference_auc=REF), (), False, id="estimated-nan"),
        pytest.param(
            obs(calibration_ratio=0.5, labelled=500),
            ("calibration: observed/expected churners 0.50, off by 25% or more",),
            True,
            id="calibration-broken-no-reference-needed",
        ),
        pytest.param(
            obs(calibration_ratio=1.25, labelled=500),
            ("calibration: observed/expected churners 1.25, off by 25% or more",),
            True,
            id="calibration-exactly-at-limit",
        ),
        pytest.param(obs(calibration_ratio=0.875, labelled=500), (), True, id="calibration-within-limit"),
        pytest.param(
            obs(calibration_ratio=0.5, calibration_z=-4.2, labelled=500),
            ("calibration: observed/expected churners 0.50 (z -4.2), off by 25% or more",),
            True,
            id="calibration-broken-past-chance",
        ),
        # 0.66 on 250 labels: 11 churners where 17 were expected, a count chance gives (the demo measured such a case)
        pytest.param(obs(calibration_ratio=0.66, calibration_z=-1.6, labelled=250), (), True, id="calibration-gap-within-chance"),
        pytest.param(obs(calibration_ratio=1.02, calibration_z=9.0, labelled=50_000), (), True, id="calibration-significant-but-small"),
        pytest.param(
            obs(calibration_ratio=0.6, calibration_z=NAN, labelled=500),
            ("calibration: observed/expected churners 0.60, off by 25% or more",),
            True,
            id="calibration-without-z-size-decides",
        ),
        pytest.param(obs(calibration_ratio=0.5, labelled=199), (), False, id="calibration-too-few-labels"),
        pytest.param(obs(calibration_ratio=NAN, labelled=500), (), False, id="calibration-nan"),
        pytest.param(
            obs(drift_detected=True, measured_auc=0.75, labelled=500, estimated_auc=0.7, reference_auc=REF),
            ("drift", "measured AUC 0.750 < reference 0.875 - 0.0625"),
            True,
            id="the-measurement-supersedes-the-estimate",
        ),
        # a retrained model whose labels show a healthy AUC: the estimate (biased by a calibration gap) no longer counts
        pytest.param(obs(measured_auc=0.89, labelled=500, estimated_auc=0.7, reference_auc=REF), (), True, id="estimate-set-aside"),
        pytest.param(
            obs(drift_detected=True, measured_auc=0.75, labelled=199, estimated_auc=0.7, reference_auc=REF),
            ("drift", "estimated AUC 0.700 < reference 0.875 - 0.0625"),
            True,
            id="estimate-until-labels-back-the-measurement",
        ),
        pytest.param(obs(drift_detected=None, measured_auc=None, estimated_auc=None), (), False, id="nothing"),
    ],
)
def test_breaches(observation: Observation, breached: tuple[str, ...], observed: bool) -> None:
    assert breaches(DEFAULT, observation) == (breached, observed)


@pytest.mark.parametrize(
    ("policy", "observation", "breached"),
    [
        # measured and estimated drops have their own limits
        (RetrainingPolicy(max_auc_drop=0.05, max_estimated_auc_drop=0.1), obs(measured_auc=0.8, labelled=500, reference_auc=0.88), True),
        (RetrainingPolicy(max_auc_drop=0.05, max_estimated_auc_drop=0.1), obs(estimated_auc=0.8, reference_auc=0.88), False),
        (RetrainingPolicy(max_auc_drop=0.1, max_estimated_auc_drop=0.05), obs(measured_auc=0.8, labelled=500, reference_auc=0.88), False),
        (RetrainingPolicy(max_auc_drop=0.1, max_estimated_auc_drop=0.05), obs(estimated_auc=0.8, reference_auc=0.88), True),
        # the label floor is the policy's
        (RetrainingPolicy(min_labelled=10), obs(measured_auc=0.5, labelled=10, reference_auc=0.88), True),
        (RetrainingPolicy(min_labelled=1000), obs(measured_auc=0.5, labelled=999, reference_auc=0.88), False),
        # so is the significance level of a calibration gap (two-sided: z 2.58 at 0.01, 1.64 at 0.1)
        (RetrainingPolicy(), obs(calibration_ratio=0.7, calibration_z=-2.0, labelled=500), False),
        (RetrainingPolicy(calibration_alpha=0.1), obs(calibration_ratio=0.7, calibration_z=-2.0, labelled=500), True),
        (RetrainingPolicy(), obs(calibration_ratio=0.7, calibration_z=-2.6, labelled=500), True),
    ],
)
def test_limits_come_from_the_policy(policy: RetrainingPolicy, observation: Observation, breached: bool) -> None:
    assert bool(breaches(policy, observation)[0]) is breached


# --- sequences: consecutive breaches, missing signals, cooldown, disabled ----------------------------------------

Signals = Mapping[str, object]
BREACH: Signals = {"drift_detected": True}
CLEAR: Signals = {"drift_detected": False}
MISSING: Signals = {}
NAN_ONLY: Signals = {"measured_auc": NAN, "labelled": 500, "reference_auc": REF, "estimated_auc": NAN}
FEW_LABELS: Signals = {"measured_auc": 0.5, "labelled": 150, "reference_auc": REF}
ENOUGH_LABELS: Signals = {"measured_auc": 0.5, "labelled": 250, "reference_auc": REF}


@dataclass(frozen=True)
class Case:
    policy: RetrainingPolicy
    steps: list[tuple[float, Mapping[str, object]]]  # (time, signals)
    retrain: list[bool]  # expected per step
    breaches: list[int]  # expected consecutive-breach count after each step
    reasons: list[str] = field(default_factory=list)  # expected fragments of each reason (optional, by position)
    start: PolicyState = field(default_factory=PolicyState)


HOUR = 3600.0
CASES = {
    "three-in-a-row": Case(
        RetrainingPolicy(consecutive=3),
        [(0, BREACH), (60, BREACH), (120, BREACH)],
        [False, False, True],
        [1, 2, 0],
        ["breach 1/3: drift", "breach 2/3: drift", "3 consecutive breaches: drift"],
    ),
    "a-clear-window-resets": Case(
        RetrainingPolicy(consecutive=3),
        [(0, BREACH), (60, BREACH), (120, CLEAR), (180, BREACH), (240, BREACH)],
        [False] * 5,
        [1, 2, 0, 1, 2],
        ["", "", "all signals within limits"],
    ),
    "missing-neither-counts-nor-resets": Case(
        RetrainingPolicy(consecutive=3),
        [(0, BREACH), (60, MISSING), (120, BREACH), (180, MISSING), (240, BREACH)],
        [False, False, False, False, True],
        [1, 1, 2, 2, 0],
        ["", "no monitoring signal observed"],
    ),
    "nan-is-missing": Case(
        RetrainingPolicy(consecutive=2),
        [(0, BREACH), (60, NAN_ONLY), (120, BREACH)],
        [False, False, True],
        [1, 1, 0],
    ),
    "too-few-labels-is-missing": Case(
        RetrainingPolicy(consecutive=2, min_labelled=200),
        [(0, FEW_LABELS), (60, FEW_LABELS), (120, ENOUGH_LABELS), (180, ENOUGH_LABELS)],
        [False, False, False, True],
        [0, 0, 1, 0],
    ),
    "cooldown-holds-then-releases": Case(
        RetrainingPolicy(consecutive=1, cooldown_s=HOUR),
        [(0, BREACH), (1800, BREACH), (HOUR - 1, BREACH), (HOUR, BREACH)],
        [True, False, False, True],
        [0, 1, 2, 0],
        ["1 consecutive breaches", "in cooldown for 1800 s more", "in cooldown for 1 s more"],
    ),
    "breaches-accumulate-in-cooldown-and-fire-when-it-ends": Case(
        RetrainingPolicy(consecutive=3, cooldown_s=HOUR),
        [(HOUR + 10, BREACH)],
        [True],
        [0],
        start=PolicyState(breaches=5, last_retraining=10.0),
    ),
    "cooldown-counts-from-the-stored-state": Case(
        RetrainingPolicy(consecutive=1, cooldown_s=HOUR),
        [(100, BREACH), (HOUR + 99, BREACH), (HOUR + 100, BREACH)],
        [False, False, True],
        [1, 2, 0],
        start=PolicyState(last_retraining=100.0),
    ),
    "clock-going-back-stays-in-cooldown": Case(
        RetrainingPolicy(consecutive=1, cooldown_s=HOUR),
        [(-5 * HOUR, BREACH)],
        [False],
        [1],
        start=PolicyState(last_retraining=0.0),
    ),
    "disabled-counts-but-never-starts": Case(
        RetrainingPolicy(enabled=False, consecutive=1),
        [(0, BREACH), (60, BREACH), (120, CLEAR)],
        [False, False, False],
        [1, 2, 0],
        ["retraining disabled (drift)", "retraining disabled (drift)"],
    ),
    "zero-cooldown-allows-back-to-back": Case(
        RetrainingPolicy(consecutive=1, cooldown_s=0),
        [(0, BREACH), (0, BREACH)],
        [True, True],
        [0, 0],
    ),
}


@pytest.mark.parametrize("case", list(CASES.values()), ids=list(CASES))
def test_decisions_over_a_sequence(case: Case) -> None:
    state = case.start
    decisions: list[Decision] = []
    for t, signals in case.steps:
        d = decide(case.policy, state, obs(t, **signals))
        decisions.append(d)
        state = d.state
    assert [d.retrain for d in decisions] == case.retrain
    assert [d.state.breaches for d in decisions] == case.breaches
    for d, fragment in zip(decisions, case.reasons, strict=False):
        assert fragment in d.reason, (fragment, d.reason)
    for (t, _), d in zip(case.steps, decisions, strict=True):
        if d.retrain:
            assert d.state.last_retraining == t and d.breached


def test_a_missing_observation_returns_the_state_unchanged() -> None:
    state = PolicyState(breaches=2, last_retraining=5.0)
    d = decide(RetrainingPolicy(), state, obs(100))
    assert d == Decision(False, (), "no monitoring signal observed; nothing counted", state)


# --- what cannot be built ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: RetrainingPolicy(consecutive=0), "consecutive must be at least 1"),
        (lambda: RetrainingPolicy(cooldown_s=-1), "cooldown_s must be a number not below 0"),
        (lambda: RetrainingPolicy(cooldown_s=NAN), "cooldown_s must be a number not below 0"),
        (lambda: RetrainingPolicy(max_auc_drop=NAN), "max_auc_drop must be a number not below 0"),
        (lambda: RetrainingPolicy(min_labelled=-1), "min_labelled must be a number not below 0"),
        (lambda: RetrainingPolicy(calibration_alpha=0), "calibration_alpha must lie strictly between 0 and 1"),
        (lambda: RetrainingPolicy(calibration_alpha=NAN), "calibration_alpha must lie strictly between 0 and 1"),
        (lambda: Observation(time=NAN, drift_detected=True), "time must be a finite number"),
        (lambda: Observation(time=math.inf, drift_detected=True), "time must be a finite number"),
        (lambda: Observation(time=0, labelled=-1), "labelled must not be negative"),
        (lambda: PolicyState(last_retraining=NAN), "last_retraining must be a finite time"),
        (lambda: PolicyState(breaches=-1), "breaches must not be negative"),
    ],
)
def test_values_that_would_break_the_policy_are_refused(build: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()  # type: ignore[operator]


# --- properties ---------------------------------------------------------------------------------------------------

aucs = st.one_of(st.none(), st.just(NAN), st.floats(0.0, 1.0))
observations = st.builds(
    Observation,
    time=st.floats(-1e6, 1e7, allow_nan=False),
    drift_detected=st.one_of(st.none(), st.booleans()),
    drifted_share=st.one_of(st.none(), st.floats(0.0, 1.0)),
    measured_auc=aucs,
    labelled=st.integers(0, 1000),
    estimated_auc=aucs,
    reference_auc=st.one_of(st.none(), st.floats(0.5, 1.0)),
)
policies = st.builds(
    RetrainingPolicy,
    enabled=st.booleans(),
    consecutive=st.integers(1, 5),
    cooldown_s=st.floats(0.0, 1e6),
    min_labelled=st.integers(0, 500),
    max_auc_drop=st.floats(0.0, 0.2),
    max_estimated_auc_drop=st.floats(0.0, 0.2),
)


def replay(policy: RetrainingPolicy, seq: list[Observation]) -> list[Decision]:
    state = PolicyState()
    out = []
    for o in seq:
        d = decide(policy, state, o)
        out.append(d)
        state = d.state
    return out


@settings(max_examples=300, deadline=None, database=None)  # no example database in the work tree
@given(policies, st.lists(observations, max_size=40))
def test_never_two_retrainings_within_one_cooldown(policy: RetrainingPolicy, seq: list[Observation]) -> None:
    """Whatever the signals and however the clock moves (even backwards), starts are a cooldown apart."""
    starts = [o.time for o, d in zip(seq, replay(policy, seq), strict=True) if d.retrain]
    for i, a in enumerate(starts):
        for b in starts[i + 1 :]:
            assert b - a >= policy.cooldown_s


@settings(max_examples=300, deadline=None, database=None)  # no example database in the work tree
@given(policies, st.lists(observations, max_size=40))
def test_a_start_needs_enough_breaches_in_a_row_and_an_enabled_policy(policy: RetrainingPolicy, seq: list[Observation]) -> None:
    state = PolicyState()
    for o in seq:
        d = decide(policy, state, o)
        found, observed = breaches(policy, o)
        if d.retrain:
            assert policy.enabled and found and state.breaches + 1 >= policy.consecutive
            assert d.state == PolicyState(0, o.time, attempts=state.attempts + 1)  # one more run in this episode
            assert d.window is not None and d.window.parameters()["window_reason"]  # the run says which window and why
        elif not observed:
            assert d.state == state  # a missing signal changes nothing
        state = d.state


# --- the training window and the escalation ladder (a breach that retraining does not clear) ---------------------


def calibration_off(time: float) -> Observation:
    """Observed/expected churners 0.47 on enough labels: a calibration breach."""
    return Observation(time=time, calibration_ratio=0.47, labelled=500)


def test_a_triggered_run_carries_the_recency_window_and_why() -> None:
    policy = RetrainingPolicy(consecutive=1)
    d = decide(policy, PolicyState(), calibration_off(0.0))
    assert d.retrain and d.window is not None
    params = d.window.parameters()
    assert params["recency_half_life_days"] == "30" and params["calibration_days"] == "30" and "window_days" not in params
    assert "calibration: observed/expected churners 0.47" in params["window_reason"]
    assert "weights halving every 30 days, calibrated on the latest 30 days" in d.reason


def test_a_breach_that_persists_against_the_retrained_version_escalates_then_pages() -> None:
    """Retrain (recency window); while the cooldown holds, say what comes next; retrain with a shorter window; then page."""
    policy = RetrainingPolicy(consecutive=2, cooldown_s=300.0, max_attempts=2)
    state = PolicyState()
    steps = []
    for t in range(0, 20 * 60, 60):  # every minute, the retrained version serving from the first start on
        d = decide(policy, state, calibration_off(float(t)), retrained_serving=state.attempts > 0)
        steps.append((t, d))
        state = d.state
    starts = [(t, d.window.window_days if d.window else None) for t, d in steps if d.retrain]
    assert starts == [(60, None), (360, 30.0)]  # a cooldown apart; the second keeps only the latest 30 days
    waiting = [d.reason for t, d in steps if 60 < t < 360 and d.state.breaches >= 2]
    assert waiting and all(
        "persists against the retrained version" in r and "then: retrain with rows of the last 30 days" in r for r in waiting
    )
    pages = [t for t, d in steps if d.escalation == "page"]
    assert pages == [480]  # at once (within the cooldown) once the second retrained version breaches too, and once only
    assert state.escalated and state.attempts == 2
    quiet = decide(policy, state, calibration_off(1300.0), retrained_serving=True)
    assert not quiet.retrain and quiet.escalation == "" and "a person was paged" in quiet.reason
    cleared = decide(policy, state, Observation(time=1360.0, calibration_ratio=0.98, labelled=500))
    assert cleared.state == PolicyState(breaches=0, last_retraining=state.last_retraining)
    assert "cleared after 2 retraining run(s)" in cleared.reason


def test_a_retrained_version_not_serving_waits_for_the_cooldown_and_says_what_comes_next() -> None:
    policy = RetrainingPolicy(consecutive=1, cooldown_s=3600.0)
    first = decide(policy, PolicyState(), calibration_off(0.0))
    later = decide(policy, first.state, calibration_off(60.0), retrained_serving=False)
    assert not later.retrain and later.reason.startswith("in cooldown for 3540 s more")
    assert "then: retrain with rows of the last 30 days" in later.reason


@settings(max_examples=300, deadline=None, database=None)  # no example database in the work tree
@given(policies, st.lists(st.tuples(observations, st.booleans()), max_size=40), st.integers(1, 3))
def test_an_episode_starts_at_most_max_attempts_runs_and_pages_once(
    policy: RetrainingPolicy, seq: list[tuple[Observation, bool]], max_attempts: int
) -> None:
    """However the retrained versions fare, an episode (until the signals recover) is bounded: the ladder, then one page."""
    policy = RetrainingPolicy(**{**policy.__dict__, "max_attempts": max_attempts})
    state, starts, pages = PolicyState(), 0, 0
    for o, serving in seq:
        d = decide(policy, state, o, retrained_serving=serving)
        found, observed = breaches(policy, o)
        if observed and not found:
            starts, pages = 0, 0  # the episode ended
        if d.retrain:  # the ladder keeps the cooldown
            assert state.last_retraining is None or o.time - state.last_retraining >= policy.cooldown_s
        starts += d.retrain
        pages += d.escalation == "page"
        assert starts <= max_attempts and pages <= 1
        state = d.state
