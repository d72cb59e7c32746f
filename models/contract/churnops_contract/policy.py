"""The retraining policy: when monitoring signals should start a training run, and why.

A pure function of the policy, the state carried between evaluations and one
observation of the monitoring signals. The kopf operator (from Prometheus)
and the embedded rollout runner (from the predictor's metrics and the
prediction log) both call ``decide`` and keep the returned state.

Rules:
- a *breach* is drift detected after multiple-testing control, or a drop of
  the measured AUC (only once ``min_labelled`` labels back it) or, until
  then, of the estimated AUC below the reference (the holdout AUC at training) by more
  than the allowed drop, or calibration that no longer holds (observed
  churners over the sum of the scores off by at least ``max_calibration_drift``,
  once ``min_labelled`` labels back it, and significantly so: its z at two-sided
  ``calibration_alpha``; a few hundred labels hold a dozen churners, whose
  chance count moves the ratio by a quarter, and a policy firing on that noise
  would retrain a calibrated model; without a z the size alone decides): concept drift changes how behaviour
  relates to churn, which moves calibration long before it moves the ranking;
- a missing signal (None or NaN) is neither a breach nor a recovery: it
  neither counts toward nor resets the consecutive-breach count;
- retraining starts after ``consecutive`` breached evaluations in a row,
  and at most once per ``cooldown_s``; starting resets the count;
- a breach means the population moved since the model was trained: the run is
  started with a recency training window (weights halving every
  ``recency_half_life_days``, the calibrator fitted on the latest
  ``calibration_days``), which ``Decision.window`` names with its reason;
- an *episode* lasts from the first trigger until an evaluation finds every
  signal within limits. If the breach persists once a version retrained in
  the episode serves, the policy escalates instead of cooling down silently:
  its reason names the next step while the cooldown holds, the next run
  (still a cooldown after the last) keeps a shorter window (only the latest
  ``calibration_days``, half the half-life), and after ``max_attempts`` runs
  it pages a person at once (``Decision.escalation == "page"``) and starts no
  more runs until the signals recover;
- times and limits are checked when built (ValueError): a NaN time or
  cooldown makes every comparison false and would let runs start back to back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from statistics import NormalDist


@dataclass(frozen=True)
class RetrainingPolicy:
    enabled: bool = True
    consecutive: int = 3  # breached evaluations in a row before retraining
    cooldown_s: float = 24 * 3600.0  # at most one retraining run per cooldown
    min_labelled: int = 200  # labelled predictions needed before a measured AUC counts
    max_auc_drop: float = 0.05  # measured AUC below reference by more than this is a breach
    max_estimated_auc_drop: float = 0.05  # same for the estimated AUC (before labels arrive)
    max_calibration_drift: float = 0.25  # |observed churners / expected churners - 1| at or above this is a breach
    calibration_alpha: float = 0.01  # ... when the gap is significant at this two-sided level
    # The training window of a run the policy starts. On the reference data (monthly snapshots, a shift 60 days
    # before the end of history) a 30-day half-life with calibration on the latest 30 days brought observed/expected
    # churners on the post-shift holdout from 0.60 to 0.87; the whole history gave the old base rate.
    recency_half_life_days: float = 30.0
    calibration_days: float = 30.0
    max_attempts: int = 2  # retraining runs in one episode before a person is paged

    def __post_init__(self) -> None:
        if self.consecutive < 1:
            raise ValueError(f"consecutive must be at least 1, got {self.consecutive}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        if not 0 < self.calibration_alpha < 1:
            raise ValueError(f"calibration_alpha must lie strictly between 0 and 1, got {self.calibration_alpha}")
        for name in ("recency_half_life_days", "calibration_days"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of days, got {value}")
        # `not x >= 0` also refuses NaN, which would make every comparison false (a NaN cooldown never holds anything back).
        limits = {
            "cooldown_s": self.cooldown_s,
            "max_auc_drop": self.max_auc_drop,
            "max_estimated_auc_drop": self.max_estimated_auc_drop,
            "max_calibration_drift": self.max_calibration_drift,
        }
        for name, value in {**limits, "min_labelled": self.min_labelled}.items():
            if not value >= 0:
                raise ValueError(f"{name} must be a number not below 0, got {value}")


@dataclass(frozen=True)
class Observation:
    """One evaluation of the monitoring signals; None when a signal is not available."""

    time: float  # seconds since the epoch
    drift_detected: bool | None = None
    drifted_share: float | None = None  # share of features drifted, for the reason text
    measured_auc: float | None = None
    labelled: int = 0
    estimated_auc: float | None = None
    reference_auc: float | None = None
    calibration_ratio: float | None = None  # observed churners / sum of the scores, on labelled predictions
    calibration_z: float | None = None  # (observed - expected) / sqrt(sum p (1 - p)): how far past chance the ratio is

    def __post_init__(self) -> None:
        # The cooldown compares times: a NaN or infinite time would let a second run start at once.
        if not math.isfinite(self.time):
            raise ValueError(f"time must be a finite number of seconds, got {self.time}")
        if self.labelled < 0:
            raise ValueError(f"labelled must not be negative, got {self.labelled}")


@dataclass(frozen=True)
class PolicyState:
    breaches: int = 0  # consecutive breached evaluations
    last_retraining: float | None = None  # when the last run was started
    attempts: int = 0  # runs started in this episode (since the signals were last within limits)
    escalated: bool = False  # a person was paged; no automatic run until the signals recover

    def __post_init__(self) -> None:
        # State comes back from storage (a resource's status): refuse what would disable the cooldown.
        if self.breaches < 0:
            raise ValueError(f"breaches must not be negative, got {self.breaches}")
        if self.attempts < 0:
            raise ValueError(f"attempts must not be negative, got {self.attempts}")
        if self.last_retraining is not None and not math.isfinite(self.last_retraining):
            raise ValueError(f"last_retraining must be a finite time or None, got {self.last_retraining}")


@dataclass(frozen=True)
class TrainingWindow:
    """Which training rows count, and how much, and why: off by default (every row, equal weights, calibration on all).

    After the population shifts, most labelled rows describe the old population, and a model fitted on them
    learns its base rate. A run the policy starts after a breach weights recent rows up
    (``recency_half_life_days``: a row's weight halves for every so many days it is older than the latest
    training row), may drop old ones (``window_days``: only rows less than so many days older than the latest
    one), and fits the calibrator on the latest ``calibration_days`` only. The training code applies it, the
    pipeline takes it as parameters of the same names, the model card records it with ``reason``.
    """

    recency_half_life_days: float | None = None
    window_days: float | None = None
    calibration_days: float | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        for name in ("recency_half_life_days", "window_days", "calibration_days"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive number of days (or unset), got {value}")

    @property
    def active(self) -> bool:
        return any(v is not None for v in (self.recency_half_life_days, self.window_days, self.calibration_days))

    def parameters(self) -> dict[str, str]:
        """Pipeline parameters (strings, as run parameters are); a part left unset is not passed."""
        given = {
            "recency_half_life_days": self.recency_half_life_days,
            "window_days": self.window_days,
            "calibration_days": self.calibration_days,
        }
        return {**{k: f"{v:g}" for k, v in given.items() if v is not None}, "window_reason": self.reason}

    def describe(self) -> str:
        parts = []
        if self.window_days is not None:
            parts.append(f"rows of the last {self.window_days:g} days")
        if self.recency_half_life_days is not None:
            parts.append(f"weights halving every {self.recency_half_life_days:g} days")
        if self.calibration_days is not None:
            parts.append(f"calibrated on the latest {self.calibration_days:g} days")
        return ", ".join(parts) or "every row"


@dataclass(frozen=True)
class Decision:
    retrain: bool
    breached: tuple[str, ...]  # which signals breached in this observation
    reason: str  # why (or why not), for events and history
    state: PolicyState = field(default_factory=PolicyState)
    window: TrainingWindow | None = None  # the training window of the run to start (with ``retrain``)
    escalation: str = ""  # "page": retraining did not clear the breach; a person must look (once per episode)


def _known(x: float | None) -> bool:
    return x is not None and not math.isnan(x)


def breaches(policy: RetrainingPolicy, obs: Observation) -> tuple[tuple[str, ...], bool]:
    """Breached signals, and whether any signal was observed at all."""
    found: list[str] = []
    observed = False
    if obs.drift_detected is not None:
        observed = True
        if obs.drift_detected:
            share = f" ({obs.drifted_share:.0%} of features)" if _known(obs.drifted_share) else ""
            found.append(f"drift{share}")
    if _known(obs.reference_auc):
        assert obs.reference_auc is not None
        measured = _known(obs.measured_auc) and obs.labelled >= policy.min_labelled
        if measured:
            assert obs.measured_auc is not None
            observed = True
            if obs.reference_auc - obs.measured_auc > policy.max_auc_drop:
                found.append(f"measured AUC {obs.measured_auc:.3f} < reference {obs.reference_auc:.3f} - {policy.max_auc_drop:g}")
        # The estimate stands in for the measurement until labels back it: it assumes calibrated scores, so next to
        # a measured AUC it adds no evidence, only the bias of whatever calibration error the labels already show.
        if _known(obs.estimated_auc) and not measured:
            assert obs.estimated_auc is not None
            observed = True
            if obs.reference_auc - obs.estimated_auc > policy.max_estimated_auc_drop:
                found.append(
                    f"estimated AUC {obs.estimated_auc:.3f} < reference {obs.reference_auc:.3f} - {policy.max_estimated_auc_drop:g}"
                )
    if _known(obs.calibration_ratio) and obs.labelled >= policy.min_labelled:
        assert obs.calibration_ratio is not None
        observed = True
        if abs(obs.calibration_ratio - 1) >= policy.max_calibration_drift and calibration_significant(policy, obs.calibration_z):
            z = f" (z {obs.calibration_z:.1f})" if _known(obs.calibration_z) else ""
            found.append(
                f"calibration: observed/expected churners {obs.calibration_ratio:.2f}{z}, off by {policy.max_calibration_drift:.0%} or more"
            )
    return tuple(found), observed


def calibration_significant(policy: RetrainingPolicy, z: float | None) -> bool:
    """Whether a calibration gap is past chance at the policy's level; an unknown z leaves the gap's size to decide."""
    if not _known(z):
        return True
    assert z is not None
    return abs(z) >= NormalDist().inv_cdf(1 - policy.calibration_alpha / 2)


def window_for(policy: RetrainingPolicy, attempt: int, what: str) -> TrainingWindow:
    """The training window of the ``attempt``-th run of an episode: recency weights, then only the latest rows."""
    if attempt <= 1:
        return TrainingWindow(
            recency_half_life_days=policy.recency_half_life_days,
            calibration_days=policy.calibration_days,
            reason=f"the population moved ({what}): recent outcomes weigh more and set the calibration",
        )
    return TrainingWindow(
        recency_half_life_days=policy.recency_half_life_days / 2,
        window_days=policy.calibration_days,
        calibration_days=policy.calibration_days,
        reason=f"retraining attempt {attempt}: the breach persisted after a retrained version served ({what}); a shorter window",
    )


def next_step(policy: RetrainingPolicy, attempts: int) -> str:
    """What the policy does if the breach persists after the runs started so far, in words."""
    if attempts >= policy.max_attempts:
        return f"page a person (RetrainingIneffective) after {attempts} retraining run(s)"
    return f"retrain with {window_for(policy, attempts + 1, '').describe()}"


def decide(policy: RetrainingPolicy, state: PolicyState, obs: Observation, retrained_serving: bool = False) -> Decision:
    """Whether to start retraining now; the returned state replaces ``state``.

    ``retrained_serving``: the version serving now came from this episode's last run (its breach counts against the retraining).
    """
    found, observed = breaches(policy, obs)
    if not observed:
        return Decision(False, (), "no monitoring signal observed; nothing counted", state)
    if not found:
        cleared = f" (cleared after {state.attempts} retraining run(s))" if state.attempts else ""
        return Decision(False, (), f"all signals within limits{cleared}", replace(state, breaches=0, attempts=0, escalated=False))
    count = state.breaches + 1
    what = "; ".join(found)
    counted = replace(state, breaches=count)
    if not policy.enabled:
        return Decision(False, found, f"retraining disabled ({what})", counted)
    if count < policy.consecutive:
        return Decision(False, found, f"breach {count}/{policy.consecutive}: {what}", counted)
    if state.escalated:
        return Decision(
            False, found, f"retraining ineffective, a person was paged; no automatic run until the signals recover: {what}", counted
        )
    persists = state.attempts > 0 and retrained_serving
    cooled = state.last_retraining is None or obs.time - state.last_retraining >= policy.cooldown_s
    if state.attempts >= policy.max_attempts and (persists or cooled):
        why = f"the breach persists after {state.attempts} retraining run(s) ({what}); a person must look at the data and the model"
        return Decision(False, found, f"retraining ineffective: {why}", replace(counted, escalated=True), escalation="page")
    against = "the breach persists against the retrained version: " if persists else ""
    if not cooled:
        assert state.last_retraining is not None
        wait = policy.cooldown_s - (obs.time - state.last_retraining)
        plan = f"; then: {next_step(policy, state.attempts)}" if state.attempts else ""
        return Decision(False, found, f"in cooldown for {wait:.0f} s more: {against}{what}{plan}", counted)
    attempt = state.attempts + 1
    window = window_for(policy, attempt, what)
    lead = f"{against}retraining attempt {attempt}" if persists else f"{count} consecutive breaches"
    return Decision(
        True,
        found,
        f"{lead}: {what}; training window: {window.describe()}",
        PolicyState(breaches=0, last_retraining=obs.time, attempts=attempt),
        window,
    )
