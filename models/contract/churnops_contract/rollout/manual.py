"""Decisions a person takes by hand (``churnops rollout promote|rollback|retrain|retry``), recorded like the automatic ones.

Pure, in the state machine's terms: the result is the next ``RolloutStatus``
(or ``RetrainingStatus``) with the same events the automatic decisions emit,
so the registry, the routing and the history follow a manual decision exactly
as they follow an automatic one. The reason given by the person is kept,
prefixed with ``manual:``. A decision that makes no sense now raises
``ManualError`` (the driver maps it to its own error model).
"""

from __future__ import annotations

from dataclasses import replace

from churnops_contract.rollout.machine import REJECTED_LIMIT, Event, RolloutStatus, Transition, _steady
from churnops_contract.rollout.retraining import RetrainingStatus, start_run

MANUAL = "manual"


class ManualError(ValueError):
    """A manual decision that conflicts with the current state."""


def promote(st: RolloutStatus, reason: str) -> Transition:
    """Make the canary the stable version now, whatever step it reached."""
    if st.canary is None:
        raise ManualError("no canary is in progress: nothing to promote (start one with `churnops rollout start`)")
    why = f"{MANUAL}: {reason}"
    new = replace(
        _steady(st), phase="Promoted", stable=st.canary, stable_slot=st.canary_slot, deferred=None, message=f"promoted {st.canary} by hand"
    )
    event = Event(
        "Normal", "Promoted", f"Version {st.canary} promoted over {st.stable} at {st.weight}% by hand: {reason}", st.stable, st.canary, why
    )
    return Transition(new, (event,))


def rollback(st: RolloutStatus, reason: str) -> Transition:
    """Send every request back to the stable version and never retry the canary automatically."""
    if st.canary is None:
        raise ManualError("no canary is in progress: nothing to roll back")
    why = f"{MANUAL}: {reason}"
    rejected = (*[v for v in st.rejected if v != st.canary], st.canary)[-REJECTED_LIMIT:]
    new = replace(
        _steady(st), phase="RolledBack", rejected=rejected, deferred=None, retired=st.canary, message=f"rolled back {st.canary} by hand"
    )
    event = Event(
        "Warning",
        "RolledBack",
        f"Canary {st.canary} rolled back to {st.stable} at {st.weight}% by hand: {reason}",
        st.canary,
        st.stable,
        why,
    )
    return Transition(new, (event,))


def retrain(
    rs: RetrainingStatus, now: float, reason: str, run_prefix: str, model_ref: str = ""
) -> tuple[RetrainingStatus, tuple[Event, ...]]:
    """Start a retraining run now, outside the policy (its cooldown starts as if the policy had started it)."""
    if rs.active:
        raise ManualError(f"retraining run {rs.pending_key} is still {rs.run_state or 'starting'}")
    # no training window: a run asked for by hand trains as the pipeline's defaults say, not as the last breach did
    new, key = start_run(replace(rs, breaches=0, last_triggered=now, reason=f"{MANUAL}: {reason}"), run_prefix, model_ref, {})
    return new, (Event("Normal", "RetrainingTriggered", f"Starting a training run as {key} by hand: {reason}"),)
