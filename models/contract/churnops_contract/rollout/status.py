"""The ModelDeployment's ``.status`` conditions and phase, following the Kubernetes API conventions.

- ``Ready``: the stable version's serving object reports Ready (the
  InferenceService's own condition in a cluster, the predictor's loaded model
  on one machine); ``Unknown`` until it has reported. A degraded dependency
  does not make it False while the stable version still serves.
- ``Progressing``: True while a canary is under analysis; False with the
  reason of how the last one ended.
- ``CanaryHealthy``: True while its checks pass, False after a failed check,
  ``Unknown`` while waiting for samples, without evidence, or without a canary.
- ``Degraded``: True while something keeps the deployment from acting fully:
  an invalid spec, a model owned by another deployment, serving objects the
  API server refuses, or Prometheus, MLflow or KFP unreachable.
- ``DriftDetected`` and ``RetrainingTriggered``: the retraining policy's state.
- ``RetrainingIneffective``: True once the breach persisted after the
  policy's retraining runs and a person was paged; False when the signals recover.

``lastTransitionTime`` changes only when a condition's status changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.retraining import RetrainingStatus

CONDITIONS = ("Ready", "Progressing", "CanaryHealthy", "Degraded", "DriftDetected", "RetrainingTriggered", "RetrainingIneffective")
# Why the deployment is degraded, by what is wrong; the first present names the condition's reason.
PROBLEMS = {
    "spec": "SpecInvalid",
    "owner": "ModelOwnedElsewhere",
    "serving": "ServingError",
    "metrics": "MetricsUnavailable",
    "registry": "RegistryUnavailable",
    "pipelines": "PipelinesUnavailable",
}
BLOCKING = ("spec", "owner")  # problems under which nothing moves: the phase is Degraded


@dataclass(frozen=True)
class Health:
    """What the driver saw of the world in this pass."""

    serving_ready: bool | None = None  # the stable version's serving object reports Ready; None: not reported
    problems: Mapping[str, str] = field(default_factory=dict)  # PROBLEMS key -> message

    @property
    def blocked(self) -> str | None:
        return next((self.problems[k] for k in BLOCKING if k in self.problems), None)


def rfc3339(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str, message: str, generation: int, now: float, old: Mapping[str, Any]) -> dict[str, Any]:
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


def _tri(value: bool | None) -> str:
    return "Unknown" if value is None else "True" if value else "False"


def phase(st: RolloutStatus, rs: RetrainingStatus, health: Health) -> str:
    if health.blocked:
        return "Degraded"
    if st.canary is None and rs.active:
        return "Retraining"
    return st.phase


def _canary(st: RolloutStatus) -> tuple[bool | None, str, str]:
    if st.canary is None:
        return None, "NoCanary", ""
    verdict = st.last_verdict or {}
    reason = str(verdict.get("reason") or st.message)
    if st.failed_checks:
        return False, "CheckFailed", reason
    if st.traffic_since is None:
        return None, "WaitingForTraffic", "the canary's serving object has not reported ready"
    outcome = verdict.get("outcome")
    if outcome == "pass":
        return True, "ChecksPassing", reason
    if outcome == "inconclusive":
        return None, "Inconclusive", reason
    return None, "WaitingForSamples", reason


def _progressing(st: RolloutStatus) -> tuple[bool, str, str]:
    if st.canary is not None:
        return True, "CanaryAnalysis", st.message
    ended = {"Promoted": "Promoted", "RolledBack": "RolledBack"}.get(st.phase, "Idle")
    return False, ended, st.message


def conditions(
    st: RolloutStatus, rs: RetrainingStatus, health: Health, generation: int, now: float, old: Mapping[str, Any] | None
) -> list[dict[str, Any]]:
    previous: dict[str, Mapping[str, Any]] = {str(c.get("type")): c for c in (old or {}).get("conditions") or [] if isinstance(c, Mapping)}
    ready = None if st.stable is None else health.serving_ready
    ready_status = "False" if st.stable is None else _tri(ready)
    ready_reason = {"True": "Serving", "False": "NotServing", "Unknown": "ServingNotReported"}[ready_status]
    ready_message = (
        f"version {st.stable} serving" if ready else f"version {st.stable} not reported ready" if st.stable else "no version deployed yet"
    )
    progressing, p_reason, p_message = _progressing(st)
    healthy, h_reason, h_message = _canary(st)
    problems = [k for k in PROBLEMS if k in health.problems]
    degraded_reason = PROBLEMS[problems[0]] if problems else "AsExpected"
    degraded_message = "; ".join(f"{k}: {health.problems[k]}" for k in problems)
    return [
        _condition("Ready", ready_status, ready_reason, ready_message, generation, now, previous),
        _condition("Progressing", _tri(progressing), p_reason, p_message, generation, now, previous),
        _condition("CanaryHealthy", _tri(healthy), h_reason, h_message, generation, now, previous),
        _condition("Degraded", _tri(bool(problems)), degraded_reason, degraded_message, generation, now, previous),
        _condition(
            "DriftDetected", _tri(rs.breaches > 0), "Breach" if rs.breaches else "WithinLimits", rs.reason, generation, now, previous
        ),
        _condition(
            "RetrainingTriggered",
            _tri(rs.active),
            "RunInProgress" if rs.active else "Idle",
            f"{rs.pending_key} {rs.run_state or 'starting'}" if rs.active else "",
            generation,
            now,
            previous,
        ),
        _condition(
            "RetrainingIneffective",
            _tri(rs.escalated),
            "PersonPaged" if rs.escalated else "AsExpected",
            rs.reason if rs.escalated else "",
            generation,
            now,
            previous,
        ),
    ]
