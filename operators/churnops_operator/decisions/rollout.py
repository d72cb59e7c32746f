"""The rollout state machine: status, a target version and one verdict in, the next status out.

Pure and deterministic: the handler reads the persisted status, asks
``check_due`` whether to query metrics, and hands the verdict to ``decide``.
The new status is written first; the world (InferenceServices, HTTPRoute,
MLflow aliases) is then moved toward the *persisted* status on the next pass
(``decisions.serving``). An interruption at any line therefore replays the
same decision or converges to one already written: never two canaries, never
a weight that goes back down within one rollout.

Rules:
- the first resolvable version is deployed as stable without a canary;
- a new target starts a canary at ``steps[0]``; a version that was rolled back
  is never retried automatically (a new version, or deleting it from
  ``status.rejectedVersions``, is needed);
- a spec change that alters the analysis (steps, interval, limits, serving
  mode) restarts the analysis from the first step as a new rollout (a new
  ``rollout_id``: the weight only ever rises within one); a new target during
  a canary replaces the canary;
- each check that passes with ``min_samples`` requests in the current step
  moves to the next step; passing at the last step promotes, once no test is
  undecided (the AUC test, when labels exist) — until then the canary holds
  its last step;
- failed checks (a rejecting test, or a missing metric) accumulate;
  ``failure_threshold`` of them roll back; a step still short of samples
  after ``progress_deadline`` counts a failed check at every interval; a last
  step still undecided by then, or one that more canary data cannot decide
  (too few stable labels), is settled for the likelier hypothesis (Wald's
  truncated test): a failed check when "worse" is likelier, else promotion.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from churnops_operator.decisions.analysis import Verdict
from churnops_operator.spec import DeploymentSpec

Phase = Literal["Pending", "Progressing", "Promoted", "RolledBack", "Degraded", "Retraining"]
HISTORY_LIMIT = 20
SLOTS = ("blue", "green")  # Standard mode: the two InferenceServices the stable and canary alternate in


def number(raw: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a status read back from the API server, or None."""
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


@dataclass(frozen=True)
class Event:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class RolloutStatus:
    phase: Phase = "Pending"
    stable: str | None = None
    canary: str | None = None
    weight: int = 0  # canary traffic percent
    step: int = 0  # index into spec.rollout.steps
    failed_checks: int = 0
    checks: int = 0  # checks made in this analysis (the sequential tests' look count)
    rollout_id: int = 0  # increases with every canary started
    analysis_key: str | None = None
    analysis_started: float | None = None
    traffic_since: float | None = None  # when the serving objects were first seen carrying this canary
    step_started: float | None = None
    last_check: float | None = None
    stable_slot: str = SLOTS[0]
    rejected: tuple[str, ...] = ()
    last_verdict: dict[str, Any] | None = None
    history: tuple[dict[str, Any], ...] = ()
    message: str = ""

    @property
    def canary_slot(self) -> str:
        return SLOTS[1] if self.stable_slot == SLOTS[0] else SLOTS[0]

    def to_status(self) -> dict[str, Any]:
        """The fields of ``.status`` this module owns (camelCase, as in the CRD)."""
        return {
            "rolloutPhase": self.phase,
            "stableVersion": self.stable,
            "canaryVersion": self.canary,
            "canaryWeight": self.weight,
            "stepIndex": self.step,
            "failedChecks": self.failed_checks,
            "checks": self.checks,
            "rolloutId": self.rollout_id,
            "analysisKey": self.analysis_key,
            "analysisStartedAt": self.analysis_started,
            "trafficSince": self.traffic_since,
            "stepStartedAt": self.step_started,
            "lastCheckAt": self.last_check,
            "stableSlot": self.stable_slot,
            "rejectedVersions": list(self.rejected),
            "lastVerdict": self.last_verdict,
            "history": list(self.history),
            "message": self.message,
        }

    @classmethod
    def from_status(cls, raw: dict[str, Any] | None) -> RolloutStatus:
        raw = raw or {}
        return cls(
            phase=raw.get("rolloutPhase") or "Pending",
            stable=raw.get("stableVersion"),
            canary=raw.get("canaryVersion"),
            weight=int(raw.get("canaryWeight") or 0),
            step=int(raw.get("stepIndex") or 0),
            failed_checks=int(raw.get("failedChecks") or 0),
            checks=int(raw.get("checks") or 0),
            rollout_id=int(raw.get("rolloutId") or 0),
            analysis_key=raw.get("analysisKey"),
            analysis_started=number(raw, "analysisStartedAt"),
            traffic_since=number(raw, "trafficSince"),
            step_started=number(raw, "stepStartedAt"),
            last_check=number(raw, "lastCheckAt"),
            stable_slot=str(raw.get("stableSlot")) if raw.get("stableSlot") in SLOTS else SLOTS[0],
            rejected=tuple(raw.get("rejectedVersions") or ()),
            last_verdict=raw.get("lastVerdict"),
            history=tuple(raw.get("history") or ()),
            message=raw.get("message") or "",
        )


@dataclass(frozen=True)
class Transition:
    status: RolloutStatus
    events: tuple[Event, ...] = field(default=())


def _record(st: RolloutStatus, now: float, event: str, frm: str | None, to: str | None, reason: str) -> tuple[dict[str, Any], ...]:
    entry = {"time": now, "event": event, "from": frm, "to": to, "reason": reason}
    return (*st.history, entry)[-HISTORY_LIMIT:]


def check_due(spec: DeploymentSpec, st: RolloutStatus, now: float) -> bool:
    """Whether a canary is under analysis, receives traffic, and its next check is due.

    The clock starts when the serving objects were first applied for this canary
    (``traffic_since``), not when it was decided: a slow pass or a restart between the
    two must not be judged as a canary without requests.
    """
    if st.canary is None or st.analysis_key != spec.analysis_key() or st.traffic_since is None:
        return False
    since = st.last_check if st.last_check is not None else st.traffic_since
    return now - since >= spec.rollout.interval_s


def traffic_applied(st: RolloutStatus, now: float) -> RolloutStatus:
    """Record that the serving objects now carry the canary (called after they were applied)."""
    if st.canary is None or st.traffic_since is not None:
        return st
    return replace(st, traffic_since=now, step_started=now)


def _start(spec: DeploymentSpec, st: RolloutStatus, version: str, now: float, reason: str) -> RolloutStatus:
    first = spec.rollout.steps[0]
    return replace(
        st,
        phase="Progressing",
        canary=version,
        weight=first,
        step=0,
        failed_checks=0,
        checks=0,
        rollout_id=st.rollout_id + 1,
        analysis_key=spec.analysis_key(),
        analysis_started=now,
        traffic_since=None,
        step_started=now,
        last_check=None,
        last_verdict=None,
        message=reason,
    )


def _steady(st: RolloutStatus) -> RolloutStatus:
    return replace(
        st, canary=None, weight=0, step=0, failed_checks=0, checks=0, analysis_key=None, analysis_started=None, traffic_since=None
    )


def decide(spec: DeploymentSpec, st: RolloutStatus, target: str | None, now: float, verdict: Verdict | None = None) -> Transition:
    """The next status; ``verdict`` is the check ``check_due`` asked for (None: no check now)."""
    if target is None:
        if st.stable is None:
            return Transition(replace(st, phase="Pending", message="waiting for the model reference to resolve"))
        return Transition(st)
    if st.stable is None:
        new = replace(_steady(st), phase="Promoted", stable=target, message=f"version {target} deployed")
        new = replace(new, history=_record(st, now, "Deployed", None, target, "first version"))
        return Transition(new, (Event("Normal", "Deployed", f"Serving version {target} (first version, no canary)"),))
    if st.canary is None:
        if target == st.stable or target in st.rejected:
            return Transition(st)
        new = _start(spec, st, target, now, f"canary {target} started against stable {st.stable}")
        new = replace(new, history=_record(st, now, "CanaryStarted", st.stable, target, f"new target {target}"))
        return Transition(new, (Event("Normal", "CanaryStarted", f"Canary {target} at {new.weight}% against stable {st.stable}"),))
    # A canary is in progress.
    if target != st.canary:
        if target == st.stable or target in st.rejected:
            new = replace(_steady(st), phase="Promoted", message=f"canary {st.canary} withdrawn: target is {target}")
            new = replace(new, history=_record(st, now, "CanaryAborted", st.canary, st.stable, f"target changed to {target}"))
            return Transition(new, (Event("Normal", "CanaryAborted", f"Canary {st.canary} withdrawn; target is {target}"),))
        new = _start(spec, st, target, now, f"canary {st.canary} replaced by {target}")
        new = replace(new, history=_record(st, now, "CanaryReplaced", st.canary, target, "new target during analysis"))
        return Transition(new, (Event("Normal", "CanaryReplaced", f"Canary {st.canary} replaced by {target} at {new.weight}%"),))
    if st.analysis_key != spec.analysis_key():
        new = _start(spec, st, target, now, "analysis restarted: spec changed")
        new = replace(new, history=_record(st, now, "AnalysisRestarted", st.stable, target, "rollout or analysis spec changed"))
        return Transition(new, (Event("Normal", "AnalysisRestarted", f"Spec changed: analysis of {target} restarts at {new.weight}%"),))
    if verdict is None:
        return Transition(st)
    return _judge(spec, st, verdict, now)


def _judge(spec: DeploymentSpec, st: RolloutStatus, verdict: Verdict, now: float) -> Transition:
    rollout = spec.rollout
    figures = {**verdict.figures(), "time": now, "step": st.step, "weight": st.weight}
    st = replace(st, checks=st.checks + 1, last_check=now, last_verdict=figures)
    failed = verdict.outcome == "fail"
    reason = verdict.reason
    final = st.step + 1 >= len(rollout.steps)
    undecided = final and verdict.outcome == "pass" and not verdict.conclusive
    assert st.step_started is not None
    late = now - st.step_started >= rollout.progress_deadline_s
    if verdict.outcome == "wait" and late:
        failed, reason = True, f"progress deadline passed: {reason}"
    settled = ""
    if undecided and (late or not verdict.decidable):  # Wald's truncated test: the likelier hypothesis wins
        undecided, when = False, "at the progress deadline" if late else "as more canary data cannot decide them"
        if verdict.leans_worse:
            failed, reason = True, f"undecided tests lean to worse, settled {when}: {reason}"
        else:
            settled = f"; undecided tests settled {when} for as good as stable"
    if failed:
        st = replace(st, failed_checks=st.failed_checks + 1)
        if st.failed_checks >= rollout.failure_threshold:
            return _rollback(st, now, reason)
        event = Event("Warning", "CheckFailed", f"Check {st.failed_checks}/{rollout.failure_threshold} failed for {st.canary}: {reason}")
        return Transition(replace(st, message=f"check failed: {reason}"), (event,))
    if verdict.outcome == "wait" or verdict.step_samples < rollout.min_samples:
        msg = f"waiting: {verdict.step_samples} of {rollout.min_samples} canary requests at {st.weight}%"
        return Transition(replace(st, message=msg))
    if undecided:
        return Transition(replace(st, message=f"holding at {st.weight}% until every test decides: {reason}"))
    if final:
        return _promote(st, now, figures, settled)
    step = st.step + 1
    weight = rollout.steps[step]
    new = replace(st, step=step, weight=weight, step_started=now, message=f"check passed; canary at {weight}%")
    return Transition(new, (Event("Normal", "StepAdvanced", f"Canary {st.canary} passed at {st.weight}%; now {weight}%"),))


def _promote(st: RolloutStatus, now: float, figures: dict[str, Any], note: str = "") -> Transition:
    assert st.canary is not None
    reason = f"passed every step in {st.checks} checks ({figures.get('samples')} canary requests){note}"
    new = replace(_steady(st), phase="Promoted", stable=st.canary, stable_slot=st.canary_slot, message=f"promoted {st.canary}")
    new = replace(new, history=_record(st, now, "Promoted", st.stable, st.canary, reason))
    return Transition(new, (Event("Normal", "Promoted", f"Version {st.canary} promoted over {st.stable}: {reason}"),))


def _rollback(st: RolloutStatus, now: float, reason: str) -> Transition:
    assert st.canary is not None
    why = f"{st.failed_checks} failed checks: {reason}"
    rejected = (*[v for v in st.rejected if v != st.canary], st.canary)[-HISTORY_LIMIT:]
    new = replace(_steady(st), phase="RolledBack", rejected=rejected, message=f"rolled back {st.canary}: {why}")
    new = replace(new, history=_record(st, now, "RolledBack", st.canary, st.stable, why))
    return Transition(new, (Event("Warning", "RolledBack", f"Canary {st.canary} rolled back to {st.stable}: {why}"),))


def choose_target(spec_target: str | None, candidate: str | None, auto_promote: bool, rejected: tuple[str, ...]) -> str | None:
    """The version to run: the spec's, or a newer retrained challenger when auto-promotion is on."""
    if candidate is None or not auto_promote or candidate in rejected:
        return spec_target
    if spec_target is None or int(candidate) > int(spec_target):
        return candidate
    return spec_target
