"""Decisions a person takes by hand (``churnops rollout promote|rollback|retrain``), recorded like the runner's.

Pure, like the operator's decision modules, and written in their terms: the
result is the next ``RolloutStatus`` (or ``RetrainingStatus``) with the same
history entries and events the automatic decisions write, so the registry,
the routing table and the timeline follow a manual decision exactly as they
follow an automatic one. The reason given by the person is kept, prefixed
with ``manual:``.
"""

from __future__ import annotations

from dataclasses import replace

from churnops.errors import ConflictError
from churnops_operator.decisions.retraining import RetrainingStatus
from churnops_operator.decisions.rollout import HISTORY_LIMIT, Event, RolloutStatus, Transition

MANUAL = "manual"


def _entry(now: float, event: str, frm: str | None, to: str | None, reason: str) -> dict[str, object]:
    return {"time": now, "event": event, "from": frm, "to": to, "reason": f"{MANUAL}: {reason}"}


def _steady(st: RolloutStatus) -> RolloutStatus:
    return replace(
        st, canary=None, weight=0, step=0, failed_checks=0, checks=0, analysis_key=None, analysis_started=None, traffic_since=None
    )


def promote(st: RolloutStatus, now: float, reason: str) -> Transition:
    """Make the canary the stable version now, whatever step it reached."""
    if st.canary is None:
        raise ConflictError("no canary is in progress: nothing to promote (start one with `churnops rollout start`)")
    new = replace(_steady(st), phase="Promoted", stable=st.canary, stable_slot=st.canary_slot, message=f"promoted {st.canary} by hand")
    history = (*st.history, _entry(now, "Promoted", st.stable, st.canary, reason))[-HISTORY_LIMIT:]
    event = Event("Normal", "Promoted", f"Version {st.canary} promoted over {st.stable} at {st.weight}% by hand: {reason}")
    return Transition(replace(new, history=history), (event,))


def rollback(st: RolloutStatus, now: float, reason: str) -> Transition:
    """Send every request back to the stable version and never retry the canary automatically."""
    if st.canary is None:
        raise ConflictError("no canary is in progress: nothing to roll back")
    rejected = (*[v for v in st.rejected if v != st.canary], st.canary)[-HISTORY_LIMIT:]
    new = replace(_steady(st), phase="RolledBack", rejected=rejected, message=f"rolled back {st.canary} by hand")
    history = (*st.history, _entry(now, "RolledBack", st.canary, st.stable, reason))[-HISTORY_LIMIT:]
    event = Event("Warning", "RolledBack", f"Canary {st.canary} rolled back to {st.stable} at {st.weight}% by hand: {reason}")
    return Transition(replace(new, history=history), (event,))


def allow(st: RolloutStatus, version: str) -> RolloutStatus:
    """Let a rolled-back version be tried again (the operator's "delete it from status.rejectedVersions")."""
    return replace(st, rejected=tuple(v for v in st.rejected if v != version))


def retrain(rs: RetrainingStatus, now: float, reason: str, run_prefix: str) -> tuple[RetrainingStatus, tuple[Event, ...]]:
    """Start a retraining run now, outside the policy (its cooldown starts as if the policy had started it)."""
    if rs.active:
        raise ConflictError(f"retraining run {rs.pending_key} is still {rs.run_state or 'starting'}")
    key = f"{run_prefix}-retrain-{rs.triggers + 1}"
    new = replace(
        rs,
        triggers=rs.triggers + 1,
        pending_key=key,
        run_id=None,
        run_state=None,
        candidate=None,
        breaches=0,
        last_triggered=now,
        reason=f"{MANUAL}: {reason}",
    )
    return new, (Event("Normal", "RetrainingTriggered", f"Starting a training run as {key} by hand: {reason}"),)
