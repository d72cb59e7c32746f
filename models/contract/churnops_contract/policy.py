"""The retraining policy: when monitoring signals should start a training run, and why.

A pure function of the policy, the state carried between evaluations and one
observation of the monitoring signals. The kopf operator (from Prometheus)
and the embedded rollout runner (from the predictor's metrics and the
prediction log) both call ``decide`` and keep the returned state.

Rules:
- a *breach* is drift detected after multiple-testing control, or a drop of
  the measured AUC (only once ``min_labelled`` labels back it) or of the
  estimated AUC below the reference (the holdout AUC at training) by more
  than the allowed drop, or calibration that no longer holds (observed
  churners over the sum of the scores off by at least ``max_calibration_drift``,
  once ``min_labelled`` labels back it): concept drift changes how behaviour
  relates to churn, which moves calibration long before it moves the ranking;
- a missing signal (None or NaN) is neither a breach nor a recovery: it
  neither counts toward nor resets the consecutive-breach count;
- retraining starts after ``consecutive`` breached evaluations in a row,
  and at most once per ``cooldown_s``; starting resets the count;
- times and limits are checked when built (ValueError): a NaN time or
  cooldown makes every comparison false and would let runs start back to back.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class RetrainingPolicy:
    enabled: bool = True
    consecutive: int = 3  # breached evaluations in a row before retraining
    cooldown_s: float = 24 * 3600.0  # at most one retraining run per cooldown
    min_labelled: int = 200  # labelled predictions needed before a measured AUC counts
    max_auc_drop: float = 0.05  # measured AUC below reference by more than this is a breach
    max_estimated_auc_drop: float = 0.05  # same for the estimated AUC (before labels arrive)
    max_calibration_drift: float = 0.25  # |observed churners / expected churners - 1| at or above this is a breach

    def __post_init__(self) -> None:
        if self.consecutive < 1:
            raise ValueError(f"consecutive must be at least 1, got {self.consecutive}")
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

    def __post_init__(self) -> None:
        # State comes back from storage (a resource's status): refuse what would disable the cooldown.
        if self.breaches < 0:
            raise ValueError(f"breaches must not be negative, got {self.breaches}")
        if self.last_retraining is not None and not math.isfinite(self.last_retraining):
            raise ValueError(f"last_retraining must be a finite time or None, got {self.last_retraining}")


@dataclass(frozen=True)
class Decision:
    retrain: bool
    breached: tuple[str, ...]  # which signals breached in this observation
    reason: str  # why (or why not), for events and history
    state: PolicyState = field(default_factory=PolicyState)


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
        if _known(obs.measured_auc) and obs.labelled >= policy.min_labelled:
            assert obs.measured_auc is not None
            observed = True
            if obs.reference_auc - obs.measured_auc > policy.max_auc_drop:
                found.append(f"measured AUC {obs.measured_auc:.3f} < reference {obs.reference_auc:.3f} - {policy.max_auc_drop:g}")
        if _known(obs.estimated_auc):
            assert obs.estimated_auc is not None
            observed = True
            if obs.reference_auc - obs.estimated_auc > policy.max_estimated_auc_drop:
                found.append(
                    f"estimated AUC {obs.estimated_auc:.3f} < reference {obs.reference_auc:.3f} - {policy.max_estimated_auc_drop:g}"
                )
    if _known(obs.calibration_ratio) and obs.labelled >= policy.min_labelled:
        assert obs.calibration_ratio is not None
        observed = True
        if abs(obs.calibration_ratio - 1) >= policy.max_calibration_drift:
            found.append(
                f"calibration: observed/expected churners {obs.calibration_ratio:.2f}, off by {policy.max_calibration_drift:.0%} or more"
            )
    return tuple(found), observed


def decide(policy: RetrainingPolicy, state: PolicyState, obs: Observation) -> Decision:
    """Whether to start retraining now; the returned state replaces ``state``."""
    found, observed = breaches(policy, obs)
    if not observed:
        return Decision(False, (), "no monitoring signal observed; nothing counted", state)
    if not found:
        return Decision(False, (), "all signals within limits", replace(state, breaches=0))
    count = state.breaches + 1
    what = "; ".join(found)
    if not policy.enabled:
        return Decision(False, found, f"retraining disabled ({what})", replace(state, breaches=count))
    if count < policy.consecutive:
        return Decision(False, found, f"breach {count}/{policy.consecutive}: {what}", replace(state, breaches=count))
    if state.last_retraining is not None and obs.time - state.last_retraining < policy.cooldown_s:
        wait = policy.cooldown_s - (obs.time - state.last_retraining)
        return Decision(False, found, f"in cooldown for {wait:.0f} s more: {what}", replace(state, breaches=count))
    return Decision(True, found, f"{count} consecutive breaches: {what}", PolicyState(breaches=0, last_retraining=obs.time))
