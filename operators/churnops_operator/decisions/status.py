"""The ModelDeployment's ``.status``: phase, conditions and printer-column fields from the decisions' state."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from churnops_operator.decisions.retraining import RetrainingStatus
from churnops_operator.decisions.rollout import RolloutStatus

CONDITIONS = ("Ready", "Progressing", "CanaryHealthy", "DriftDetected", "RetrainingTriggered")


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool, reason: str, message: str, generation: int, now: float, old: Mapping[str, Any]) -> dict[str, Any]:
    status = "True" if ok else "False"
    previous = old.get(kind) or {}
    since = previous.get("lastTransitionTime") if previous.get("status") == status else None
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:1024],
        "observedGeneration": generation,
        "lastTransitionTime": since or rfc3339(now),
    }


def phase(st: RolloutStatus, rs: RetrainingStatus, error: str | None) -> str:
    if error:
        return "Degraded"
    if st.canary is None and rs.active:
        return "Retraining"
    return st.phase


def assemble(
    st: RolloutStatus,
    rs: RetrainingStatus,
    generation: int,
    now: float,
    old: Mapping[str, Any] | None,
    error: str | None = None,
    serving_ready: bool = True,
) -> dict[str, Any]:
    """The whole status to write; ``error`` (an invalid spec, an unreachable dependency) makes it Degraded."""
    old = old or {}
    previous: dict[str, Mapping[str, Any]] = {str(c.get("type")): c for c in old.get("conditions") or [] if isinstance(c, Mapping)}
    verdict = st.last_verdict or {}
    outcome = verdict.get("outcome")
    ready = error is None and st.stable is not None and serving_ready
    conditions = [
        _condition(
            "Ready",
            ready,
            "Serving" if ready else ("Error" if error else "NotServing"),
            error or (f"version {st.stable} serving" if st.stable else "no version deployed yet"),
            generation,
            now,
            previous,
        ),
        _condition(
            "Progressing",
            st.canary is not None,
            "CanaryAnalysis" if st.canary else "Idle",
            st.message if st.canary else "",
            generation,
            now,
            previous,
        ),
        _condition(
            "CanaryHealthy",
            st.canary is not None and outcome in ("pass", "wait") and st.failed_checks == 0,
            {"pass": "ChecksPassing", "fail": "CheckFailed", "wait": "WaitingForSamples"}.get(str(outcome), "NoCanary"),
            str(verdict.get("reason") or ""),
            generation,
            now,
            previous,
        ),
        _condition("DriftDetected", rs.breaches > 0, "Breach" if rs.breaches else "WithinLimits", rs.reason, generation, now, previous),
        _condition(
            "RetrainingTriggered",
            rs.active,
            "RunInProgress" if rs.active else "Idle",
            f"{rs.pending_key} {rs.run_state or 'starting'}" if rs.active else "",
            generation,
            now,
            previous,
        ),
    ]
    return {
        **st.to_status(),
        "phase": phase(st, rs, error),
        "observedGeneration": generation,
        "conditions": conditions,
        "retraining": rs.to_status(),
        "message": error or st.message,
    }
