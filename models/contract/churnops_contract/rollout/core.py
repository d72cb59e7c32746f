"""The rollout core: one pass of decisions, pure, for both drivers (the kopf operator and the embedded runner).

A driver's pass (compare Flagger's ``advanceCanary`` over router and observer
interfaces):

1. read the persisted status; move the world to it: the routing
   (``routing``), the registry (``registry_writes``, then ``mark_synced``),
   the retraining run (``run_action``); post the events not yet posted
   (``unposted``, then ``mark_posted``);
2. ask ``due`` what to observe, and observe it: the answers to the
   contract's named queries become an ``Observation`` (``observe``);
3. call ``decide`` with what the pass saw (``World``) and persist the status
   it returns; apply it at once or on the next pass.

Every outside answer may be missing: an unresolvable target keeps the canary
under analysis, a failed registry or KFP call is a ``Health`` problem (a
condition and an event when it starts), missing metrics make a check
inconclusive. Nothing here does I/O.

The status history is the record of decisions. Each entry has a sequence
number (``eventSeq``); events are posted from the history with names derived
from it (a re-post after a crash is a duplicate the API server refuses), and
the registry replays the history's Deployed, Promoted and RolledBack entries
up to ``registrySynced``. A driver killed after writing a status posts and
applies what that status says, exactly once.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from churnops_contract import policy
from churnops_contract.rollout import analysis, machine, retraining, status
from churnops_contract.rollout.machine import Event, RolloutStatus
from churnops_contract.rollout.retraining import RetrainingStatus
from churnops_contract.rollout.spec import DeploymentSpec
from churnops_contract.rollout.status import Health

HISTORY_LIMIT = 30
REGISTRY_EVENTS = ("Deployed", "Promoted", "RolledBack")
CORE_KEYS = ("history", "eventSeq", "eventsPosted", "registrySynced", "conditions", "observedGeneration", "phase", "retraining", "message")


@dataclass(frozen=True)
class RunReport:
    """The retraining run the status names, as its system answered (None fields: not known)."""

    run_id: str | None = None
    state: str | None = None
    challenger: str | None = None  # the registry's challenger once the run succeeded
    failure: str | None = None  # the run can never start (an unknown pipeline): it ends FAILED


@dataclass(frozen=True)
class World:
    """What one pass saw; every field may be missing."""

    target: str | None = None  # the spec's model reference resolved to a version; None: unknown now or not resolvable
    target_problem: str | None = None  # why it is None, for the message
    health: Health = field(default_factory=Health)
    canary_ready: bool = False  # the serving objects carry the canary and report it ready
    observation: analysis.Observation | None = None  # the canary analysis's figures, when ``due`` asked for a check
    signals: policy.Observation | None = None  # the retraining policy's, when ``due`` asked for an evaluation
    run: RunReport | None = None
    retry: str | None = None  # a person allows this rejected or deferred version again
    model_ref: str = ""  # the spec's model reference (what a retrained candidate was trained for)
    run_prefix: str = "run"  # ``retraining.run_prefix``: run names are unique per deployment object


@dataclass(frozen=True)
class Due:
    check: bool  # the canary analysis wants figures now
    evaluation: bool  # the retraining policy wants signals now
    canary: str | None
    stable: str | None
    since: float | None  # the analysis window starts (first traffic to the canary)
    step_since: float | None
    look: int


@dataclass(frozen=True)
class Routing:
    """Where requests go: ``weight`` percent to the canary, the rest to stable; ``retired`` stays pinned at 0 % (Serverless)."""

    stable: str | None
    canary: str | None
    weight: int
    retired: str | None
    stable_slot: str
    canary_slot: str


@dataclass(frozen=True)
class Plan:
    status: dict[str, Any]  # the whole status to persist
    events: tuple[dict[str, Any], ...]  # the history entries this pass added (posted from the status, see ``unposted``)
    verdict: analysis.Verdict | None  # the check made in this pass, for the driver's log and timeline


def model_ref(spec: DeploymentSpec) -> str:
    ref = spec.model
    return f"{ref.registered_model}@{ref.version}" if ref.version is not None else f"{ref.registered_model}#{ref.alias}"


def rollout_of(raw: Mapping[str, Any] | None) -> RolloutStatus:
    return RolloutStatus.from_status(raw)


def retraining_of(raw: Mapping[str, Any] | None) -> RetrainingStatus:
    inner = (raw or {}).get("retraining")
    return RetrainingStatus.from_status(inner if isinstance(inner, Mapping) else None)


def history(raw: Mapping[str, Any] | None) -> tuple[dict[str, Any], ...]:
    entries = (raw or {}).get("history")
    return tuple(dict(e) for e in entries or () if isinstance(e, Mapping)) if isinstance(entries, list | tuple) else ()


def _seq(raw: Mapping[str, Any] | None, key: str) -> int:
    return machine.integer(raw or {}, key)


def due(spec: DeploymentSpec, raw: Mapping[str, Any] | None, now: float, canary_ready: bool = False) -> Due:
    """What the next ``decide`` wants observed (``canary_ready``: the pass has just seen the canary ready)."""
    st, rs = rollout_of(raw), retraining_of(raw)
    if canary_ready:
        st = machine.traffic_applied(st, now)
    check = machine.check_due(spec, st, now)
    evaluation = st.stable is not None and retraining.evaluation_due(spec, rs, st.canary is not None, now)
    return Due(check, evaluation, st.canary, st.stable, st.traffic_since, st.step_started or st.traffic_since, st.checks + 1)


def routing(raw: Mapping[str, Any] | None) -> Routing:
    st = rollout_of(raw)
    return Routing(st.stable, st.canary, st.weight if st.canary else 0, st.retired, st.stable_slot, st.canary_slot)


def registry_writes(raw: Mapping[str, Any] | None) -> tuple[dict[str, Any], ...]:
    """History entries the registry has not seen yet (the champion alias and the why on each version), oldest first."""
    synced = _seq(raw, "registrySynced")
    return tuple(e for e in history(raw) if e.get("event") in REGISTRY_EVENTS and machine.integer(e, "seq") > synced)


def history_seq(raw: Mapping[str, Any] | None) -> int:
    """The sequence number of the newest history entry (0 before the first decision)."""
    return _seq(raw, "eventSeq")


def unposted(raw: Mapping[str, Any] | None) -> tuple[dict[str, Any], ...]:
    posted = _seq(raw, "eventsPosted")
    return tuple(e for e in history(raw) if machine.integer(e, "seq") > posted)


def mark_synced(raw: Mapping[str, Any], seq: int) -> dict[str, Any]:
    return {**raw, "registrySynced": max(seq, _seq(raw, "registrySynced"))}


def mark_posted(raw: Mapping[str, Any], seq: int) -> dict[str, Any]:
    return {**raw, "eventsPosted": max(seq, _seq(raw, "eventsPosted"))}


def run_action(raw: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """("start", run name) for a recorded run without an id, ("poll", run id) for one in flight, or None."""
    rs = retraining_of(raw)
    if not rs.active or rs.pending_key is None:
        return None
    return ("poll", rs.run_id) if rs.run_id else ("start", rs.pending_key)


def run_parameters(spec: DeploymentSpec, raw: Mapping[str, Any] | None) -> dict[str, str]:
    """The parameters to start the recorded run with: the spec's and the training window the policy chose."""
    return retraining.run_parameters(spec, retraining_of(raw))


def _record(
    raw: Mapping[str, Any] | None, events: tuple[Event, ...], now: float
) -> tuple[tuple[dict[str, Any], ...], int, tuple[dict[str, Any], ...]]:
    seq = _seq(raw, "eventSeq")
    old = history(raw)
    added = []
    for e in events:
        seq += 1
        added.append(
            {
                "seq": seq,
                "time": now,
                "type": e.type,
                "event": e.reason,
                "message": e.message[:1024],
                "from": e.frm,
                "to": e.to,
                "reason": (e.note or e.message)[:1024],
            }
        )
    kept = (*old, *added)
    # Trim the oldest entries, but never one not yet posted or applied to the registry while the list is not far too long.
    floor = min(_seq(raw, "eventsPosted"), _seq(raw, "registrySynced"))
    while len(kept) > HISTORY_LIMIT and (machine.integer(kept[0], "seq") <= floor or len(kept) > 3 * HISTORY_LIMIT):
        kept = kept[1:]
    return kept, seq, tuple(added)


def _health_events(old: Mapping[str, Any] | None, health: Health) -> tuple[Event, ...]:
    """An event when the deployment becomes degraded (or the cause changes) and when it recovers; none while it stays so."""
    before = next((c for c in (old or {}).get("conditions") or () if isinstance(c, Mapping) and c.get("type") == "Degraded"), None)
    was = before is not None and before.get("status") == "True"
    problems = [k for k in status.PROBLEMS if k in health.problems]
    if problems:
        reason = status.PROBLEMS[problems[0]]
        if not was or before.get("reason") != reason:  # type: ignore[union-attr]
            return (Event("Warning", "Degraded", "; ".join(f"{k}: {health.problems[k]}" for k in problems)),)
        return ()
    return (Event("Normal", "Recovered", "every dependency answers again"),) if was else ()


def assemble(
    raw: Mapping[str, Any] | None,
    st: RolloutStatus,
    rs: RetrainingStatus,
    events: tuple[Event, ...],
    health: Health,
    generation: int,
    now: float,
) -> Plan:
    events = (*events, *_health_events(raw, health))
    kept, seq, added = _record(raw, events, now)
    extra = {k: v for k, v in (raw or {}).items() if k not in CORE_KEYS and k not in RolloutStatus().to_status()}
    blocked = health.blocked
    doc = {
        **extra,
        **st.to_status(),
        "phase": status.phase(st, rs, health),
        "observedGeneration": generation,
        "conditions": status.conditions(st, rs, health, generation, now, raw),
        "retraining": rs.to_status(),
        "message": blocked or st.message,
        "history": list(kept),
        "eventSeq": seq,
        "eventsPosted": _seq(raw, "eventsPosted"),
        "registrySynced": _seq(raw, "registrySynced"),
    }
    return Plan(doc, added, None)


def blocked(raw: Mapping[str, Any] | None, health: Health, generation: int, now: float) -> Plan:
    """A pass that cannot act (an invalid spec, a model owned elsewhere): the status says why, nothing moves."""
    return assemble(raw, rollout_of(raw), retraining_of(raw), (), health, generation, now)


def decide(spec: DeploymentSpec, raw: Mapping[str, Any] | None, world: World, generation: int, now: float) -> Plan:
    """The next status from the persisted one and what the pass saw (see the module docstring)."""
    st, rs = rollout_of(raw), retraining_of(raw)
    events: list[Event] = []
    if world.retry is not None:
        allowed = machine.allow(st, world.retry)
        st, events = allowed.status, [*events, *allowed.events]
    if world.canary_ready:
        st = machine.traffic_applied(st, now)
    if world.run is not None:
        if world.run.failure is not None:
            rs, run_events = retraining.run_failed(rs, world.run.failure)
        elif world.run.run_id is not None and world.run.state is not None:
            rs, run_events = retraining.on_run(rs, world.run.run_id, world.run.state, world.run.challenger, st.stable)
        else:
            run_events = ()
        events += run_events
    target = machine.choose_target(world.target, rs.candidate_under(world.model_ref), spec.rollout.auto_promote, st.rejected)
    verdict = None
    if world.observation is not None and machine.check_due(spec, st, now):
        verdict = analysis.judge(spec.rollout.analysis, world.observation, spec.rollout.min_samples)
    transition = machine.decide(spec, st, target, now, verdict)
    st = transition.status
    events += transition.events
    if world.target_problem and st.canary is None:  # what the spec asks for cannot be used: say why, whatever serves
        st = replace(st, message=world.target_problem)
    if world.signals is not None and st.stable is not None and retraining.evaluation_due(spec, rs, st.canary is not None, now):
        rs, eval_events = retraining.evaluate(spec, rs, world.signals, world.run_prefix, world.model_ref, st.stable)
        events += eval_events
    plan = assemble(raw, st, rs, tuple(events), world.health, generation, now)
    return replace(plan, verdict=verdict)
