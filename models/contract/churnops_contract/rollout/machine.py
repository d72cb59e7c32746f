"""The rollout state machine: status, a target version and one verdict in, the next status and its events out.

Pure and deterministic. A driver (the operator or the embedded runner) reads
the persisted status, moves the world to it, asks ``check_due`` whether to
observe the canary, and hands the verdict to ``decide``. The new status is
written first and the world follows it, so an interruption anywhere replays
the same decision or converges to one already written: never two canaries,
never a weight that goes back down within one rollout.

Rules:
- the first resolvable version is deployed as stable without a canary;
- a new target starts a canary at ``steps[0]``; a target that cannot be
  resolved (a registry outage, a version being registered) leaves a canary
  in progress under analysis: an outage never freezes a rollback;
- a version rolled back on evidence (``rejected``) is never retried
  automatically; a person allows it again (the ``churnops.io/retry``
  annotation, ``churnops rollout start --retry``);
- a spec change that alters the analysis restarts it from the first step as a
  new rollout (a new ``rollout_id``: the weight only rises within one); the
  failed checks of the same canary version carry over, so edits cannot keep a
  failing canary alive;
- a check that passes with ``min_samples`` requests in the step moves to the
  next step; at the last step it promotes once no test is undecided;
- a check that *fails* (a test rejects "within the limit") counts toward
  ``failure_threshold``, which rolls back and rejects the version;
- a check without evidence (*inconclusive*: metrics missing, malformed or
  unreachable, labels expected but not reported) holds the canary where it is.
  ``inconclusive_limit`` of them in a row, or the progress deadline, withdraw
  the canary: traffic returns to the stable version, and the version is
  retried after a backoff (it is not rejected: the fault was not shown to be
  the canary's);
- ``progress_deadline`` bounds every step of every canary: short of samples,
  inconclusive, not ready, or undecided, a step that has not moved by then
  ends; a canary still failing checks below the threshold gets one more
  interval, then its failures roll it back. An undecided AUC test is settled
  for the likelier hypothesis (Wald's truncated test): rollback when "worse"
  is likelier, else promotion (before the deadline, a test more canary data
  cannot decide is settled the same way, "worse" counting one failed check).
  Missing evidence never promotes.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from churnops_contract.rollout.analysis import Verdict
from churnops_contract.rollout.spec import DeploymentSpec

Phase = Literal["Pending", "Progressing", "Promoted", "RolledBack", "Degraded", "Retraining"]
SLOTS = ("blue", "green")  # Standard mode: the two InferenceServices the stable and canary alternate in
REJECTED_LIMIT = 20
MAX_RETRY_BACKOFF_S = 6 * 3600.0


def number(raw: Mapping[str, Any], key: str) -> float | None:
    """A finite number from a status read back from storage, or None."""
    value = raw.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def text(raw: Mapping[str, Any], key: str) -> str | None:
    """A non-empty string from a status read back from storage, or None."""
    value = raw.get(key)
    return value if isinstance(value, str) and value else None


def integer(raw: Mapping[str, Any], key: str) -> int:
    value = number(raw, key)
    return int(value) if value is not None and value >= 0 else 0


@dataclass(frozen=True)
class Event:
    """A decision: posted as a Kubernetes Event (or a timeline entry), kept in the status history."""

    type: Literal["Normal", "Warning"]
    reason: str
    message: str
    frm: str | None = None  # the version traffic moved from (registry events)
    to: str | None = None  # the version traffic moved to
    note: str = ""  # the why, for the history and the registry's tags


@dataclass(frozen=True)
class Deferred:
    """A canary withdrawn without evidence against it: retried once ``until`` has passed."""

    version: str
    until: float
    attempts: int

    def to_status(self) -> dict[str, Any]:
        return {"version": self.version, "until": self.until, "attempts": self.attempts}

    @classmethod
    def from_status(cls, raw: Any) -> Deferred | None:
        if not isinstance(raw, Mapping) or not isinstance(raw.get("version"), str):
            return None
        until = number(raw, "until")
        return None if until is None else cls(raw["version"], until, max(integer(raw, "attempts"), 1))


@dataclass(frozen=True)
class RolloutStatus:
    phase: Phase = "Pending"
    stable: str | None = None
    canary: str | None = None
    weight: int = 0  # canary traffic percent
    step: int = 0  # index into spec.rollout.steps
    failed_checks: int = 0
    inconclusive: int = 0  # consecutive checks without evidence
    checks: int = 0  # checks made in this analysis (the sequential tests' look count)
    rollout_id: int = 0  # increases with every canary started
    analysis_key: str | None = None
    analysis_started: float | None = None
    traffic_since: float | None = None  # when the serving objects were first seen carrying this canary, ready
    step_started: float | None = None
    last_check: float | None = None
    stable_slot: str = SLOTS[0]
    rejected: tuple[str, ...] = ()
    deferred: Deferred | None = None
    retired: str | None = None  # the last canary rolled back or withdrawn (Serverless keeps it pinned at 0 %)
    last_verdict: dict[str, Any] | None = None
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
            "inconclusiveChecks": self.inconclusive,
            "checks": self.checks,
            "rolloutId": self.rollout_id,
            "analysisKey": self.analysis_key,
            "analysisStartedAt": self.analysis_started,
            "trafficSince": self.traffic_since,
            "stepStartedAt": self.step_started,
            "lastCheckAt": self.last_check,
            "stableSlot": self.stable_slot,
            "rejectedVersions": list(self.rejected),
            "deferred": self.deferred.to_status() if self.deferred else None,
            "retiredVersion": self.retired,
            "lastVerdict": self.last_verdict,
            "message": self.message,
        }

    @classmethod
    def from_status(cls, raw: Mapping[str, Any] | None) -> RolloutStatus:
        raw = raw or {}
        phase = raw.get("rolloutPhase")
        return cls(
            phase=phase if phase in ("Pending", "Progressing", "Promoted", "RolledBack") else "Pending",
            stable=text(raw, "stableVersion"),
            canary=text(raw, "canaryVersion"),
            weight=integer(raw, "canaryWeight"),
            step=integer(raw, "stepIndex"),
            failed_checks=integer(raw, "failedChecks"),
            inconclusive=integer(raw, "inconclusiveChecks"),
            checks=integer(raw, "checks"),
            rollout_id=integer(raw, "rolloutId"),
            analysis_key=text(raw, "analysisKey"),
            analysis_started=number(raw, "analysisStartedAt"),
            traffic_since=number(raw, "trafficSince"),
            step_started=number(raw, "stepStartedAt"),
            last_check=number(raw, "lastCheckAt"),
            stable_slot=str(raw.get("stableSlot")) if raw.get("stableSlot") in SLOTS else SLOTS[0],
            rejected=tuple(str(v) for v in raw.get("rejectedVersions") or ()),
            deferred=Deferred.from_status(raw.get("deferred")),
            retired=text(raw, "retiredVersion"),
            last_verdict=raw.get("lastVerdict") if isinstance(raw.get("lastVerdict"), Mapping) else None,
            message=text(raw, "message") or "",
        )


@dataclass(frozen=True)
class Transition:
    status: RolloutStatus
    events: tuple[Event, ...] = field(default=())


def check_due(spec: DeploymentSpec, st: RolloutStatus, now: float) -> bool:
    """Whether a canary is under analysis, receives traffic, and its next check is due.

    The clock starts when the serving objects carry the canary and report it ready
    (``traffic_since``), not when it was decided: a slow pass, a restart or a canary
    still starting must not be judged as a canary without requests.
    """
    if st.canary is None or st.analysis_key != spec.analysis_key() or st.traffic_since is None:
        return False
    since = st.last_check if st.last_check is not None else st.traffic_since
    return now - since >= spec.rollout.interval_s


def traffic_applied(st: RolloutStatus, now: float) -> RolloutStatus:
    """Record that the serving objects now carry the canary and it is ready (called by the driver once it saw that)."""
    if st.canary is None or st.traffic_since is not None:
        return st
    return replace(st, traffic_since=now, step_started=now)


def retry_backoff(spec: DeploymentSpec, version: str, attempts: int) -> float:
    """Seconds before a withdrawn canary is tried again: doubling per attempt, with a deterministic jitter of up to 20 %."""
    base = max(spec.rollout.interval_s * spec.rollout.inconclusive_limit, 1.0) * 2.0 ** max(attempts - 1, 0)
    jitter = int(hashlib.sha256(f"{version}/{attempts}".encode()).hexdigest()[:4], 16) / 0xFFFF * 0.2
    return min(base * (1.0 + jitter), MAX_RETRY_BACKOFF_S)


def _start(spec: DeploymentSpec, st: RolloutStatus, version: str, now: float, reason: str, carry: bool = False) -> RolloutStatus:
    return replace(
        st,
        phase="Progressing",
        retired=None,
        canary=version,
        weight=spec.rollout.steps[0],
        step=0,
        failed_checks=st.failed_checks if carry else 0,
        inconclusive=st.inconclusive if carry else 0,
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
        st,
        canary=None,
        weight=0,
        step=0,
        failed_checks=0,
        inconclusive=0,
        checks=0,
        analysis_key=None,
        analysis_started=None,
        traffic_since=None,
        step_started=None,
    )


def decide(spec: DeploymentSpec, st: RolloutStatus, target: str | None, now: float, verdict: Verdict | None = None) -> Transition:
    """The next status; ``target`` None means the spec's target is unknown right now; ``verdict`` is the check due (or None)."""
    if target is None:
        if st.stable is None:
            return Transition(replace(st, phase="Pending", message=st.message or "waiting for the model reference to resolve"))
        if st.canary is None:
            return Transition(st)
        target = st.canary  # the target cannot be read now: keep judging the canary that runs
    if st.stable is None:
        new = replace(_steady(st), phase="Promoted", stable=target, message=f"version {target} deployed")
        return Transition(
            new, (Event("Normal", "Deployed", f"Serving version {target} (first version, no canary)", None, target, "first version"),)
        )
    if st.canary is None:
        return _idle(spec, st, target, now)
    if target != st.canary:
        if target == st.stable or target in st.rejected:
            new = replace(_steady(st), phase="Promoted", message=f"canary {st.canary} withdrawn: target is {target}")
            return Transition(
                new, (Event("Normal", "CanaryAborted", f"Canary {st.canary} withdrawn; target is {target}", st.canary, st.stable),)
            )
        new = _start(spec, replace(st, deferred=None), target, now, f"canary {st.canary} replaced by {target}")
        return Transition(
            new, (Event("Normal", "CanaryReplaced", f"Canary {st.canary} replaced by {target} at {new.weight}%", st.canary, target),)
        )
    if st.analysis_key != spec.analysis_key():
        new = _start(spec, st, target, now, "analysis restarted: spec changed", carry=True)
        why = f"Spec changed: analysis of {target} restarts at {new.weight}% with {new.failed_checks} failed checks carried over"
        return Transition(new, (Event("Normal", "AnalysisRestarted", why, st.stable, target),))
    if verdict is not None:
        return _judge(spec, st, verdict, now)
    assert st.step_started is not None
    rollout = spec.rollout
    waited = now - st.step_started
    # A check is due within one interval once traffic flows; without traffic (not ready, not applied) none can come.
    if waited >= rollout.progress_deadline_s and (st.traffic_since is None or waited >= rollout.progress_deadline_s + rollout.interval_s):
        if st.failed_checks:  # it has failed on evidence, and time is up: the failures decide
            return _rollback(st, f"progress deadline passed after {st.failed_checks} failed checks: {st.message}")
        cause = "the canary never became ready" if st.traffic_since is None else "no check could be made"
        return _withdraw(spec, st, now, f"progress deadline passed: {cause}")
    return Transition(st)


def _idle(spec: DeploymentSpec, st: RolloutStatus, target: str, now: float) -> Transition:
    if target == st.stable or target in st.rejected:
        return Transition(st)
    deferred = st.deferred if st.deferred is not None and st.deferred.version == target else None
    if deferred is not None and now < deferred.until:
        message = f"version {target} withdrawn without evidence; retried in {deferred.until - now:.0f} s (attempt {deferred.attempts + 1})"
        return Transition(replace(st, message=message))
    new = _start(spec, replace(st, deferred=deferred), target, now, f"canary {target} started against stable {st.stable}")
    return Transition(
        new, (Event("Normal", "CanaryStarted", f"Canary {target} at {new.weight}% against stable {st.stable}", st.stable, target),)
    )


def _judge(spec: DeploymentSpec, st: RolloutStatus, verdict: Verdict, now: float) -> Transition:
    rollout = spec.rollout
    figures = {**verdict.figures(), "time": now, "step": st.step, "weight": st.weight}
    st = replace(st, checks=st.checks + 1, last_check=now, last_verdict=figures)
    assert st.step_started is not None
    waited = now - st.step_started
    late = waited >= rollout.progress_deadline_s
    reason = verdict.reason
    if verdict.outcome == "fail":
        if waited >= rollout.progress_deadline_s + rollout.interval_s:  # the check after the deadline's: it ends, below the threshold too
            return _rollback(replace(st, inconclusive=0, failed_checks=st.failed_checks + 1), f"progress deadline passed: {reason}")
        return _failed(spec, replace(st, inconclusive=0), now, reason)
    if verdict.outcome == "inconclusive":
        st = replace(st, inconclusive=st.inconclusive + 1)
        if st.inconclusive >= rollout.inconclusive_limit or late:
            cause = "progress deadline passed" if late else f"{st.inconclusive} checks in a row without evidence"
            return _withdraw(spec, st, now, f"{cause}: {reason}")
        message = (
            f"Check {st.inconclusive}/{rollout.inconclusive_limit} without evidence for {st.canary}, holding at {st.weight}%: {reason}"
        )
        return Transition(replace(st, message=f"holding: {reason}"), (Event("Warning", "CheckInconclusive", message),))
    st = replace(st, inconclusive=0)
    if verdict.outcome == "wait" or verdict.step_samples < rollout.min_samples:
        if late:
            return _withdraw(
                spec, st, now, f"progress deadline passed: {verdict.step_samples} of {rollout.min_samples} canary requests at {st.weight}%"
            )
        return Transition(replace(st, message=f"waiting: {verdict.step_samples} of {rollout.min_samples} canary requests at {st.weight}%"))
    final = st.step + 1 >= len(rollout.steps)
    settled = ""
    if final and not verdict.conclusive:
        if not late and verdict.decidable:
            return Transition(replace(st, message=f"holding at {st.weight}% until every test decides: {reason}"))
        when = "at the progress deadline" if late else "as more canary data cannot decide them"
        if not verdict.estimated:  # nothing to lean on (labels the spec requires never came): no promotion
            return _withdraw(spec, st, now, f"progress deadline passed without the evidence the spec requires: {reason}")
        if verdict.leans_worse:  # Wald's truncated test: the likelier hypothesis wins
            why = f"undecided tests lean to worse, settled {when}: {reason}"
            return _rollback(replace(st, failed_checks=st.failed_checks + 1), why) if late else _failed(spec, st, now, why)
        settled = f"; undecided tests settled {when} for as good as stable"
    if final:
        return _promote(st, figures, settled)
    step = st.step + 1
    weight = rollout.steps[step]
    new = replace(st, step=step, weight=weight, step_started=now, message=f"check passed; canary at {weight}%")
    return Transition(new, (Event("Normal", "StepAdvanced", f"Canary {st.canary} passed at {st.weight}%; now {weight}%"),))


def _failed(spec: DeploymentSpec, st: RolloutStatus, now: float, reason: str) -> Transition:
    rollout = spec.rollout
    st = replace(st, failed_checks=st.failed_checks + 1)
    if st.failed_checks >= rollout.failure_threshold:
        return _rollback(st, reason)
    event = Event("Warning", "CheckFailed", f"Check {st.failed_checks}/{rollout.failure_threshold} failed for {st.canary}: {reason}")
    return Transition(replace(st, message=f"check failed: {reason}"), (event,))


def _promote(st: RolloutStatus, figures: Mapping[str, Any], note: str = "") -> Transition:
    assert st.canary is not None
    why = f"passed every step in {st.checks} checks ({figures.get('samples')} canary requests){note}"
    new = replace(
        _steady(st), phase="Promoted", stable=st.canary, stable_slot=st.canary_slot, deferred=None, message=f"promoted {st.canary}"
    )
    return Transition(
        new, (Event("Normal", "Promoted", f"Version {st.canary} promoted over {st.stable}: {why}", st.stable, st.canary, why),)
    )


def _rollback(st: RolloutStatus, reason: str) -> Transition:
    """Roll back on evidence: the version is rejected until a person allows it again."""
    assert st.canary is not None
    why = f"{st.failed_checks} failed checks: {reason}"
    rejected = (*[v for v in st.rejected if v != st.canary], st.canary)[-REJECTED_LIMIT:]
    new = replace(
        _steady(st), phase="RolledBack", rejected=rejected, deferred=None, retired=st.canary, message=f"rolled back {st.canary}: {why}"
    )
    event = Event("Warning", "RolledBack", f"Canary {st.canary} rolled back to {st.stable}: {why}", st.canary, st.stable, why)
    return Transition(new, (event,))


def _withdraw(spec: DeploymentSpec, st: RolloutStatus, now: float, reason: str) -> Transition:
    """Roll back without evidence against the canary: traffic returns to stable, the version is retried after a backoff."""
    assert st.canary is not None
    attempts = (st.deferred.attempts if st.deferred is not None and st.deferred.version == st.canary else 0) + 1
    until = now + retry_backoff(spec, st.canary, attempts)
    why = f"withdrawn without a verdict ({reason}); retried after {until - now:.0f} s"
    deferred = Deferred(st.canary, until, attempts)
    new = replace(_steady(st), phase="RolledBack", deferred=deferred, retired=st.canary, message=f"withdrew {st.canary}: {why}")
    event = Event("Warning", "RolledBack", f"Canary {st.canary} withdrawn, traffic back on {st.stable}: {why}", st.canary, st.stable, why)
    return Transition(new, (event,))


def allow(st: RolloutStatus, version: str) -> Transition:
    """Let a rejected or deferred version be rolled out again (a person's decision)."""
    if version not in st.rejected and (st.deferred is None or st.deferred.version != version):
        return Transition(st)
    new = replace(
        st,
        rejected=tuple(v for v in st.rejected if v != version),
        deferred=None if st.deferred is not None and st.deferred.version == version else st.deferred,
    )
    return Transition(new, (Event("Normal", "RetryAllowed", f"Version {version} may be rolled out again"),))


def choose_target(spec_target: str | None, candidate: str | None, auto_promote: bool, rejected: tuple[str, ...]) -> str | None:
    """The version to run: the spec's, or a newer retrained challenger when auto-promotion is on.

    The candidate is only offered while the spec's model reference is the one it was
    trained against (``retraining.candidate_for``): a person's later edit wins.
    """
    if spec_target is None or candidate is None or not auto_promote or candidate in rejected:
        return spec_target
    if int(candidate) > int(spec_target):
        return candidate
    return spec_target
