"""Drift-driven retraining: when to start a Kubeflow Pipelines run, and what its end means.

The rule itself is the monitoring's retraining policy (``churnops_contract.policy``),
shared with the embedded runner; this module keeps its state in the
ModelDeployment's status and adds what a cluster needs around it:

- starting is two-phase: ``evaluate`` records a *pending* run with a fixed
  key; the handler then finds a run of that name or creates it, and records
  its id. An operator killed between the two finds the run it created, so a
  trigger never makes two runs;
- at most one run is in flight; no evaluation while a canary is analysed;
- a run that succeeds with a registered challenger newer than the stable
  version becomes the rollout's candidate (``machine.choose_target``) for as
  long as the spec's model reference is the one the run was started under: a
  person who edits ``spec.model`` afterwards gets what they asked for;
- run names carry the deployment's uid: a deleted and re-created deployment
  never adopts a run of its predecessor;
- ``DriftDetected`` is announced when breaches start, not at every evaluation
  that still finds one (the condition carries the running count);
- a run is started with the training window the policy chose (``window``, the
  pipeline parameters ``run_parameters`` adds to the spec's); the
  ``RetrainingTriggered`` event names it and why. When the breach persists
  against a version the episode's run produced, the policy escalates (see
  ``churnops_contract.policy``): a ``RetrainingIneffective`` warning pages a
  person, once per episode.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from churnops_contract import policy
from churnops_contract.rollout.machine import Event, integer, number, text
from churnops_contract.rollout.spec import DeploymentSpec

TERMINAL = ("SUCCEEDED", "FAILED", "CANCELED", "SKIPPED")


@dataclass(frozen=True)
class RetrainingStatus:
    breaches: int = 0
    last_triggered: float | None = None
    last_evaluation: float | None = None
    triggers: int = 0
    pending_key: str | None = None  # display name of the run to find or create
    run_id: str | None = None
    run_state: str | None = None
    candidate: str | None = None  # challenger version produced by the last successful run
    candidate_for: str | None = None  # the spec's model reference the run was started under
    started_for: str | None = None
    reason: str = ""
    attempts: int = 0  # runs started in this breach episode
    escalated: bool = False  # retraining did not clear the breach; a person was paged
    window: tuple[tuple[str, str], ...] = ()  # the training window parameters of the current or last run

    @property
    def active(self) -> bool:
        return self.pending_key is not None and (self.run_state is None or self.run_state not in TERMINAL)

    def to_status(self) -> dict[str, Any]:
        return {
            "breaches": self.breaches,
            "lastTriggered": self.last_triggered,
            "lastEvaluation": self.last_evaluation,
            "triggers": self.triggers,
            "runName": self.pending_key,
            "runId": self.run_id,
            "runState": self.run_state,
            "candidateVersion": self.candidate,
            "candidateFor": self.candidate_for,
            "startedFor": self.started_for,
            "reason": self.reason,
            "attempts": self.attempts,
            "escalated": self.escalated,
            "window": dict(self.window),
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> RetrainingStatus:
        raw = raw or {}
        return cls(
            breaches=integer(raw, "breaches"),
            last_triggered=number(raw, "lastTriggered"),
            last_evaluation=number(raw, "lastEvaluation"),
            triggers=integer(raw, "triggers"),
            pending_key=text(raw, "runName"),
            run_id=text(raw, "runId"),
            run_state=text(raw, "runState"),
            candidate=text(raw, "candidateVersion"),
            candidate_for=text(raw, "candidateFor"),
            started_for=text(raw, "startedFor"),
            reason=text(raw, "reason") or "",
            attempts=integer(raw, "attempts"),
            escalated=raw.get("escalated") is True,
            window=_strings(raw.get("window")),
        )

    def candidate_under(self, model_ref: str) -> str | None:
        """The retrained candidate, if the spec still names the model the run was started under."""
        return self.candidate if self.candidate is not None and self.candidate_for == model_ref else None


def _strings(raw: Any) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((str(k), str(v)) for k, v in raw.items())) if isinstance(raw, Mapping) else ()


def _days(parameters: Mapping[str, str], name: str, default: float) -> float:
    """A window size the spec's run parameters set (its base for the policy's windows); the default when absent or not a positive number."""
    try:
        value = float(parameters[name])
    except (KeyError, ValueError):
        return default
    return value if value > 0 and value < float("inf") else default


def retraining_policy(spec: DeploymentSpec) -> policy.RetrainingPolicy:
    r = spec.monitoring.retraining
    given, base = dict(r.parameters), policy.RetrainingPolicy()
    return policy.RetrainingPolicy(
        enabled=r.enabled,
        consecutive=spec.monitoring.drift.consecutive,
        cooldown_s=r.cooldown_s,
        recency_half_life_days=_days(given, "recency_half_life_days", base.recency_half_life_days),
        calibration_days=_days(given, "calibration_days", base.calibration_days),
    )


def run_parameters(spec: DeploymentSpec, rs: RetrainingStatus) -> dict[str, str]:
    """The parameters a run is started with: the spec's, with the training window the policy chose for it."""
    return {**dict(spec.monitoring.retraining.parameters), **dict(rs.window)}


def evaluation_due(spec: DeploymentSpec, rs: RetrainingStatus, canary_active: bool, now: float) -> bool:
    if canary_active or rs.active:
        return False
    return rs.last_evaluation is None or now - rs.last_evaluation >= spec.monitoring.evaluation_interval_s


def run_prefix(namespace: str | None, name: str, uid: str) -> str:
    """What a deployment's run names start with: unique per deployment object (its uid), stable across restarts."""
    prefix = f"{namespace}-{name}" if namespace else name
    return f"{prefix}-{uid.replace('-', '')[:8]}"


def evaluate(
    spec: DeploymentSpec,
    rs: RetrainingStatus,
    obs: policy.Observation,
    run_prefix: str,
    model_ref: str = "",
    stable: str | None = None,
) -> tuple[RetrainingStatus, tuple[Event, ...]]:
    """Apply the policy to one observation; on a trigger, record the run to start (``run_prefix`` ends in the uid).

    ``stable``: the version serving now; when it is the candidate of this episode's last run, a breach counts against the retraining.
    """
    state = policy.PolicyState(breaches=rs.breaches, last_retraining=rs.last_triggered, attempts=rs.attempts, escalated=rs.escalated)
    retrained_serving = rs.candidate is not None and rs.candidate == stable
    decision = policy.decide(retraining_policy(spec), state, obs, retrained_serving)
    new = replace(
        rs,
        breaches=decision.state.breaches,
        last_triggered=decision.state.last_retraining,
        last_evaluation=obs.time,
        reason=decision.reason,
        attempts=decision.state.attempts,
        escalated=decision.state.escalated,
    )
    if not decision.retrain:
        events: tuple[Event, ...] = ()
        if decision.escalation == "page":
            events = (Event("Warning", "RetrainingIneffective", decision.reason),)
        elif decision.breached and rs.breaches == 0 and not rs.escalated:
            events = (Event("Warning", "DriftDetected", decision.reason),)
        return new, events
    new, key = start_run(new, run_prefix, model_ref, decision.window.parameters() if decision.window is not None else {})
    # the reason names the breaches and the window; the window's own reason (which repeats the breaches) is the run's
    return new, (
        Event("Warning", "RetrainingTriggered", f"Starting pipeline {spec.monitoring.retraining.pipeline} as {key}: {decision.reason}"),
    )


def start_run(rs: RetrainingStatus, run_prefix: str, model_ref: str, window: Mapping[str, str]) -> tuple[RetrainingStatus, str]:
    """A new run to start under its idempotency key, with its training window (empty: the pipeline's defaults)."""
    key = f"{run_prefix}-retrain-{rs.triggers + 1}"
    started = replace(
        rs,
        triggers=rs.triggers + 1,
        pending_key=key,
        run_id=None,
        run_state=None,
        candidate=None,
        started_for=model_ref,
        window=tuple(sorted(window.items())),
    )
    return started, key


def on_run(
    rs: RetrainingStatus, run_id: str, state: str, challenger: str | None, stable: str | None
) -> tuple[RetrainingStatus, tuple[Event, ...]]:
    """Record a run's state; a success with a newer challenger makes it the candidate."""
    new = replace(rs, run_id=run_id, run_state=state)
    if state == rs.run_state or state not in TERMINAL:
        return new, ()
    if state != "SUCCEEDED":
        return new, (Event("Warning", "RetrainingFailed", f"Run {rs.pending_key} ({run_id}) ended {state}"),)
    if challenger is None or (stable is not None and int(challenger) <= int(stable)):
        return replace(new, reason="run succeeded without a new challenger"), (
            Event("Normal", "RetrainingFinished", f"Run {rs.pending_key} succeeded; no challenger newer than {stable}"),
        )
    new = replace(new, candidate=challenger, candidate_for=rs.started_for, reason=f"run produced challenger {challenger}")
    return new, (Event("Normal", "RetrainingFinished", f"Run {rs.pending_key} succeeded with challenger version {challenger}"),)


def run_failed(rs: RetrainingStatus, detail: str) -> tuple[RetrainingStatus, tuple[Event, ...]]:
    """A run that can never start (an unknown pipeline, a rejected request): ended as FAILED, rollouts unaffected."""
    if not rs.active:
        return rs, ()
    new = replace(rs, run_state="FAILED", reason=f"run {rs.pending_key} could not start: {detail}")
    return new, (Event("Warning", "RetrainingFailed", f"Run {rs.pending_key} could not start: {detail}"),)
