"""The embedded rollout runner: the operator's decisions, driven by a local loop instead of Kubernetes.

One ``step(now)`` is one reconcile pass of the operator
(``churnops_operator.reconcile``) with the I/O edges of one machine:

1. read the deployment (``state``) and scrape the predictor's ``/metrics``;
2. move the world to the *persisted* status: the routing table the predictor
   follows (``churnops.serving.routing``), the MLflow ``champion`` alias and
   the promotion or rollback tags of every history entry not yet applied, the
   retraining run the status names (started when it has no process yet);
3. observe and decide with the operator's functions: ``rollout.check_due``,
   ``analysis.judge``, ``rollout.decide``, ``retraining.evaluate`` and
   ``retraining.on_run``, ``status.assemble``;
4. persist the new status (and append every decision, with its figures, to
   the timeline), then apply it at once as in 2.

A runner killed anywhere therefore either repeats a step from the same
persisted status or applies a status that was fully decided, exactly as the
operator: never two canaries, never a weight that goes back down within one
rollout. ``run`` calls ``step`` every tick until stopped; the decisions keep
their own time (``spec.rollout.interval``), so the tick only bounds how late
they are taken. Time is an argument: a demo or a test steps the runner with
its own clock.

The canary's first traffic (``traffic_since``) is when the predictor shows the
canary loaded after the table named it, or, if it never does, once the
progress deadline has passed: the analysis then finds no canary figures and
fails it, so a canary that cannot load is rolled back instead of waiting forever.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from churnops.errors import ChurnOpsError, InvalidInputError, UnavailableError
from churnops.rollout import manual
from churnops.rollout import metrics as rm
from churnops.rollout.outcomes import OutcomeSource, VersionOutcomes, labels_reader
from churnops.rollout.prometheus import PrometheusMetrics
from churnops.rollout.retraining import Retrainer, RunInfo
from churnops.rollout.state import Deployment, DeploymentStore, checked_spec
from churnops.serving.routing import DEFAULT_ROUTE, RoutingTable, Split, read_table, write_table
from churnops.training import registry
from churnops_contract import policy
from churnops_contract import registry as names
from churnops_operator.decisions import analysis, retraining, rollout
from churnops_operator.decisions import status as status_mod
from churnops_operator.decisions.retraining import RetrainingStatus
from churnops_operator.decisions.rollout import Event, RolloutStatus, Transition
from churnops_operator.spec import DeploymentSpec

log = logging.getLogger(__name__)

SCRAPES_FILE = "scrapes.json"
REGISTRY_EVENTS = ("Deployed", "Promoted", "RolledBack")
SETTLED = ("Promoted", "RolledBack")


class MetricSource(Protocol):
    counts_itself: bool  # True: the runner keeps counter snapshots of its scrapes; False: the source answers for windows

    def scrape(self, model: str, now: float) -> rm.Scrape: ...


class PredictorMetrics:
    """The predictor's ``/metrics``, read directly (no Prometheus on this machine)."""

    counts_itself = True

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/") + "/metrics"
        self.timeout_s = timeout_s

    def scrape(self, model: str, now: float) -> rm.Scrape:
        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout_s) as r:
                text = r.read().decode()
        except (OSError, urllib.error.URLError) as e:
            raise UnavailableError(f"predictor metrics at {self.url}: {e}", field="--predictor-url") from None
        try:
            return rm.parse(text, model, now)
        except ValueError as e:
            raise UnavailableError(f"{self.url} did not answer in the Prometheus format: {e}", field="--predictor-url") from None


@dataclass(frozen=True)
class RunnerConfig:
    """Everything a runner needs, built at the entry point."""

    data_dir: Path
    name: str = DEFAULT_ROUTE
    predictor_url: str | None = None  # None: no analysis (manual commands, a step without traffic)
    prometheus_url: str | None = None  # read the windows from this Prometheus (which scrapes the predictor) instead
    tracking_uri: str | None = None  # default: the embedded registry under data_dir
    split: Split | None = None  # how the route splits requests; None keeps the table's (a request draw by default)
    scrape_timeout_s: float = 5.0
    label_window_s: float = 7 * 86_400.0  # predictions whose delayed labels the retraining policy reads
    horizon_days: float = 30.0
    store_mode: str = "embedded"

    def registry(self) -> registry.RegistryConfig:
        return registry.config_for(self.tracking_uri) if self.tracking_uri else registry.RegistryConfig.embedded(self.data_dir)


@dataclass(frozen=True)
class StepReport:
    """What one step saw and decided."""

    time: float
    phase: str
    stable: str | None
    canary: str | None
    weight: int
    events: tuple[dict[str, Any], ...] = ()
    verdict: dict[str, Any] | None = None
    problems: tuple[str, ...] = ()

    @property
    def settled(self) -> bool:
        """No canary under analysis and no retraining run going: nothing will happen without a new target or signal."""
        return self.canary is None and self.phase != "Retraining"


@dataclass
class Observed:
    """The outside world as one step saw it."""

    now: float
    scrape: rm.Scrape | None = None
    counters: rm.Counters = field(default_factory=rm.Counters)
    problems: list[str] = field(default_factory=list)


@dataclass
class Journal:
    """The decisions of one step, in order; ``saved`` counts those already in the timeline."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    saved: int = 0

    def add(self, *entries: dict[str, Any]) -> None:
        self.entries.extend(entries)

    def unsaved(self) -> list[dict[str, Any]]:
        return self.entries[self.saved :]

    def events(self) -> tuple[dict[str, Any], ...]:
        return tuple(e for e in self.entries if e["kind"] == "event")


def event_doc(e: Event, now: float, st: RolloutStatus) -> dict[str, Any]:
    return {
        "time": now,
        "kind": "event",
        "type": e.type,
        "reason": e.reason,
        "message": e.message,
        "stable": st.stable,
        "canary": st.canary,
        "weight": st.weight,
        "rolloutId": st.rollout_id,
    }


class Runner:
    """Drives one deployment; build it with ``Runner.build`` (or pass the edges yourself)."""

    def __init__(
        self,
        store: DeploymentStore,
        reg: registry.RegistryConfig,
        metrics: MetricSource | None,
        outcomes: OutcomeSource,
        retrainer: Retrainer,
        split: Split | None = None,
        label_window_s: float = 7 * 86_400.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.registry = reg
        self.metrics = metrics
        self.outcomes = outcomes
        self.retrainer = retrainer
        self.split = split
        self.label_window_s = label_window_s
        self.clock = clock
        self._reference_auc: dict[tuple[str, str], float | None] = {}

    @classmethod
    def build(cls, cfg: RunnerConfig, clock: Callable[[], float] = time.time) -> Runner:
        store = DeploymentStore(cfg.data_dir, cfg.name)
        reg = cfg.registry()
        source: MetricSource | None = None
        if cfg.prometheus_url:
            source = PrometheusMetrics(cfg.prometheus_url, cfg.scrape_timeout_s)
        elif cfg.predictor_url:
            source = PredictorMetrics(cfg.predictor_url, cfg.scrape_timeout_s)
        outcomes = OutcomeSource(cfg.data_dir / "predictions", labels_reader(cfg.data_dir), cfg.horizon_days)
        retrainer = Retrainer(store.runs_dir, cfg.data_dir, reg.tracking_uri, cfg.store_mode)
        return cls(store, reg, source, outcomes, retrainer, cfg.split, cfg.label_window_s, clock)

    # --- the loop ----------------------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        tick_s: float = 1.0,
        until: Callable[[StepReport], bool] | None = None,
        on_step: Callable[[StepReport], None] | None = None,
    ) -> StepReport | None:
        """Step every ``tick_s`` until ``stop`` is set or ``until(report)`` holds; only one runner drives a deployment.

        Training runs this runner started are stopped when it returns (a runner killed outright leaves them to the next one).
        """
        claim = self.store.claim()
        report = None
        try:
            while not stop.is_set():
                try:
                    report = self.step()
                except ChurnOpsError as e:  # a dependency down (registry, disk): the persisted status is retried next tick
                    log.warning("deployment %s: step failed: %s", self.store.name, e)
                    report = None
                if report is not None and on_step is not None:
                    on_step(report)
                if report is not None and until is not None and until(report):
                    break
                stop.wait(tick_s)
        finally:
            self.retrainer.close()
            claim.close()
        return report

    # --- one step ---------------------------------------------------------------------------------------

    def step(self, now: float | None = None, analyse: bool = True) -> StepReport:
        """One reconcile pass (see the module docstring); ``analyse=False`` takes no canary check (nothing to measure)."""
        now = self.clock() if now is None else now
        with self.store.locked():
            dep = self.store.load()
            seen = self._observe(dep, now) if analyse else Observed(now)
            return self._reconcile(dep, seen, analyse)

    def _observe(self, dep: Deployment, now: float) -> Observed:
        seen = Observed(now)
        if self.metrics is None:
            seen.problems.append("no predictor to read metrics from")
            return seen
        model = self._model(dep)
        try:
            seen.scrape = self.metrics.scrape(model, now)
        except UnavailableError as e:
            seen.problems.append(str(e))
            log.warning("deployment %s: %s", self.store.name, e)
            return seen
        st = RolloutStatus.from_status(dep.status)
        if not self.metrics.counts_itself or st.canary is None:  # counts are only needed while a canary is analysed
            return seen
        counters = rm.Counters.from_doc(self.store.read_aux(SCRAPES_FILE))
        marks = [t for t in (st.traffic_since, st.step_started) if t is not None]
        versions = [v for v in (st.stable, st.canary) if v is not None]
        seen.counters = rm.advance(counters, seen.scrape, marks, versions)
        self.store.write_aux(SCRAPES_FILE, seen.counters.to_doc())
        return seen

    def _model(self, dep: Deployment) -> str:
        model = dep.spec.get("model") or {}
        return str(model.get("registeredModel") or names.DEFAULT_MODEL_NAME)

    def _reconcile(self, dep: Deployment, seen: Observed, analyse: bool) -> StepReport:
        now = seen.now
        old = dep.status
        st = RolloutStatus.from_status(old)
        rs = RetrainingStatus.from_status(old.get("retraining"))
        try:
            spec = checked_spec(dep.spec)
        except ChurnOpsError as e:
            return self._degraded(dep, st, rs, now, str(e))
        journal = Journal()
        synced = rollout.number(old, "registrySyncedAt")
        st, rs, synced = self._converge(spec, st, rs, synced, seen, journal)
        target, problem = self._target(spec)
        target = rollout.choose_target(target, rs.candidate, spec.rollout.auto_promote, st.rejected)
        verdict = None
        if analyse and rollout.check_due(spec, st, now):
            verdict = self._check(spec, st, seen)
        transition = rollout.decide(spec, st, target, now, verdict)
        if verdict is not None:
            journal.add(self._check_entry(st, transition.status, verdict, now))
        st = transition.status
        journal.add(*(event_doc(e, now, st) for e in transition.events))
        if problem and st.stable is None:
            st = replace(st, message=problem)
        if analyse and st.stable is not None and retraining.evaluation_due(spec, rs, st.canary is not None, now):
            rs = self._evaluate(spec, st, rs, seen, journal)
        dep = self._save(dep, st, rs, synced, seen, journal, old)
        # apply the decision now rather than on the next step (the persisted status is what is applied)
        st, rs, synced = self._converge(spec, st, rs, synced, seen, journal)
        dep = self._save(dep, st, rs, synced, seen, journal, dep.status)
        return self._report(dep, st, journal, seen)

    def _save(
        self,
        dep: Deployment,
        st: RolloutStatus,
        rs: RetrainingStatus,
        synced: float | None,
        seen: Observed,
        journal: Journal,
        old: Mapping[str, Any],
    ) -> Deployment:
        """Persist the status (when it changed) and the events, then append the decisions to the timeline."""
        ready = seen.scrape is None or st.stable in seen.scrape.served
        status = status_mod.assemble(st, rs, dep.generation, seen.now, old, serving_ready=ready)
        status["registrySyncedAt"] = synced
        new = journal.unsaved()
        events = [{k: v for k, v in e.items() if k != "kind"} for e in new if e["kind"] == "event"]
        if status != dep.status or events:
            dep = replace(dep, status=status).with_events(events)
            self.store.save(dep)
        self.store.record(new)
        journal.saved = len(journal.entries)
        return dep

    def _report(self, dep: Deployment, st: RolloutStatus, journal: Journal, seen: Observed) -> StepReport:
        return StepReport(
            seen.now, str(dep.status.get("phase")), st.stable, st.canary, st.weight, journal.events(), st.last_verdict, tuple(seen.problems)
        )

    def _degraded(self, dep: Deployment, st: RolloutStatus, rs: RetrainingStatus, now: float, error: str) -> StepReport:
        status = status_mod.assemble(st, rs, dep.generation, now, dep.status, error=error)
        status["registrySyncedAt"] = dep.status.get("registrySyncedAt")
        repeated = dep.status.get("phase") == "Degraded" and dep.status.get("message") == error
        journal = Journal()
        if not repeated:
            journal.add(event_doc(Event("Warning", "Degraded", error), now, st))
        dep = replace(dep, status=status).with_events([{k: v for k, v in e.items() if k != "kind"} for e in journal.entries])
        self.store.save(dep)
        self.store.record(journal.entries)
        return StepReport(now, "Degraded", st.stable, st.canary, st.weight, journal.events(), st.last_verdict, (error,))

    # --- the world -------------------------------------------------------------------------------------

    def _converge(
        self,
        spec: DeploymentSpec,
        st: RolloutStatus,
        rs: RetrainingStatus,
        synced: float | None,
        seen: Observed,
        journal: Journal,
    ) -> tuple[RolloutStatus, RetrainingStatus, float | None]:
        """Make the routing table, the registry and the retraining run match the status; record what that changed."""
        if st.stable is not None:
            self._route(st, seen.now, journal)
        if st.canary is not None and st.traffic_since is None:
            loaded = seen.scrape is not None and st.canary in seen.scrape.served
            overdue = st.analysis_started is not None and seen.now - st.analysis_started >= spec.rollout.progress_deadline_s
            if loaded or overdue:
                st = rollout.traffic_applied(st, seen.now)
        synced = self._sync_registry(spec, st, synced)
        rs = self._track_run(spec, st, rs, seen.now, journal)
        return st, rs, synced

    def _route(self, st: RolloutStatus, now: float, journal: Journal) -> None:
        try:
            have = read_table(self.store.routing_path)
        except ChurnOpsError:
            have = RoutingTable()  # unreadable: replace it
        want = RoutingTable(st.stable, st.canary, st.weight if st.canary else 0, self.split or have.split, now)
        if have.same_routes(want) and self.store.routing_path.exists():
            return
        write_table(self.store.routing_path, want)
        journal.add(
            {"time": now, "kind": "routing", "stable": st.stable, "canary": st.canary, "weight": want.weight, "rolloutId": st.rollout_id}
        )

    def _sync_registry(self, spec: DeploymentSpec, st: RolloutStatus, synced: float | None) -> float | None:
        """Replay the history entries not yet applied to MLflow: the champion alias and the why on each version."""
        reg = replace(self.registry, model_name=spec.model.registered_model)
        last = synced
        for entry in st.history:
            when = entry.get("time")
            if entry.get("event") not in REGISTRY_EVENTS or not isinstance(when, int | float) or (synced is not None and when <= synced):
                continue
            frm, to, why = entry.get("from"), entry.get("to"), str(entry.get("reason") or "")[:500]
            if entry["event"] == "RolledBack":
                mark_rolled_back(reg, str(frm), str(to) if to else None, why, float(when))
            elif entry["event"] == "Promoted" or (to and registry.alias_version(reg, names.CHAMPION) != to):
                # a first version that is the champion already keeps the record of how it became champion
                registry.promote(reg, str(to), why)
            last = float(when)
        return last

    def _track_run(self, spec: DeploymentSpec, st: RolloutStatus, rs: RetrainingStatus, now: float, journal: Journal) -> RetrainingStatus:
        if not rs.active or rs.pending_key is None:
            return rs
        r = spec.monitoring.retraining
        try:
            run_id = rs.run_id or self.retrainer.ensure(rs.pending_key, r.pipeline, dict(r.parameters))
            info = self.retrainer.info(run_id)
        except InvalidInputError as e:  # a run this machine cannot start (another pipeline's name): it failed, once
            run_id, info = rs.pending_key, RunInfo("FAILED", None, str(e))
        new, events = retraining.on_run(rs, run_id, info.state, info.challenger, st.stable)
        if new.run_state != rs.run_state:
            journal.add(
                {"time": now, "kind": "run", "run": run_id, "state": info.state, "challenger": info.challenger, "detail": info.detail}
            )
        journal.add(*(event_doc(e, now, st) for e in events))
        return new

    def _target(self, spec: DeploymentSpec) -> tuple[str | None, str | None]:
        """The spec's version (checked to exist) and, when it cannot be used, why."""
        reg = replace(self.registry, model_name=spec.model.registered_model)
        if spec.model.version is not None:
            if registry.version_exists(reg, spec.model.version):
                return spec.model.version, None
            return None, f"version {spec.model.version} of {reg.model_name} is not registered"
        assert spec.model.alias is not None
        version = registry.alias_version(reg, spec.model.alias)
        if version is None:
            return None, f"registered model {reg.model_name} has no alias {spec.model.alias!r}"
        return version, None

    # --- observations --------------------------------------------------------------------------------------

    def _check(self, spec: DeploymentSpec, st: RolloutStatus, seen: Observed) -> analysis.Verdict:
        assert st.canary is not None and st.stable is not None and st.traffic_since is not None
        figures = self.outcomes.versions(spec.model.registered_model, (st.canary, st.stable), st.traffic_since, seen.now, estimates=False)
        outcomes = {v: _sample_outcomes(o) for v, o in figures.items()}
        windows = (st.canary, st.stable, st.traffic_since, st.step_started or st.traffic_since, spec.rollout.analysis.max_latency_p95_ms)
        look = st.checks + 1
        if isinstance(self.metrics, PrometheusMetrics) and seen.scrape is not None:
            model = spec.model.registered_model
            obs = self.metrics.observe(model, *windows, look, seen.now, outcomes, seen.scrape.served, tuple(seen.problems))
        else:
            obs = rm.observe(seen.counters, seen.scrape, *windows, look, outcomes, tuple(seen.problems))
        return analysis.judge(spec.rollout.analysis, obs, spec.rollout.min_samples)

    @staticmethod
    def _check_entry(before: RolloutStatus, after: RolloutStatus, verdict: analysis.Verdict, now: float) -> dict[str, Any]:
        """A check at the weight it judged, with the failed checks it leaves (the threshold is in the spec)."""
        return {
            "time": now,
            "kind": "check",
            "outcome": verdict.outcome,
            "canary": before.canary,
            "stable": before.stable,
            "weight": before.weight,
            "step": before.step,
            "failedChecks": _failed_after(before, after),
            "rolloutId": before.rollout_id,
            "reason": verdict.reason,
            "stepSamples": verdict.step_samples,  # a passing check advances only with the spec's minSamples in the step
            "figures": verdict.figures(),
        }

    def _evaluate(
        self, spec: DeploymentSpec, st: RolloutStatus, rs: RetrainingStatus, seen: Observed, journal: Journal
    ) -> RetrainingStatus:
        """One evaluation of the retraining policy on the stable version's signals."""
        assert st.stable is not None
        model = spec.model.registered_model
        drift, share = rm.drift_signals(seen.scrape, st.stable)
        o = self.outcomes.versions(model, (st.stable,), seen.now - self.label_window_s, seen.now)[st.stable]
        obs = policy.Observation(
            time=seen.now,
            drift_detected=drift,
            drifted_share=share,
            measured_auc=o.auc,
            labelled=o.labelled,
            estimated_auc=o.estimated_auc,
            reference_auc=self._reference(model, st.stable),
            calibration_ratio=o.calibration_ratio,
        )
        new, events = retraining.evaluate(spec, rs, obs, self.store.name)
        journal.add(
            {
                "time": seen.now,
                "kind": "evaluation",
                "version": st.stable,
                "breaches": new.breaches,
                "triggered": new.triggers > rs.triggers,
                "reason": new.reason,
                "signals": {
                    "driftDetected": drift,
                    "driftedShare": share,
                    "measuredAUC": o.auc,
                    "labelled": o.labelled,
                    "estimatedAUC": o.estimated_auc,
                    "referenceAUC": obs.reference_auc,
                    "calibrationRatio": o.calibration_ratio,
                },
            }
        )
        journal.add(*(event_doc(e, seen.now, st) for e in events))
        return new

    def _reference(self, model: str, version: str) -> float | None:
        """The version's holdout AUC at training (the policy's reference); versions are immutable, so it is cached."""
        key = (model, version)
        if key not in self._reference_auc:
            info = registry.version_info(replace(self.registry, model_name=model), version)
            value = info["metrics"].get("roc_auc")
            self._reference_auc[key] = float(value) if value is not None else None
        return self._reference_auc[key]

    # --- the deployment's target ---------------------------------------------------------------------------

    def apply(self, changes: Mapping[str, Any], retry: bool = False, now: float | None = None) -> StepReport:
        """Create or change the deployment's spec (a JSON merge patch in the CRD's shape) and take a step without analysis.

        A first version is deployed at once; a new target starts a canary. ``retry`` lets a version that was rolled
        back be tried again. The runner's loop (``run``) analyses what this starts.
        """
        with self.store.locked():
            self.store.create_or_update(changes, defaults={"featureService": "churn_v1"}, now=now)
        if retry:
            self.allow_target(now)
        return self.step(now, analyse=False)

    def deployment(self) -> Deployment:
        """The resource as persisted: spec, status (phase, versions, weight, last verdict, history), events."""
        return self.store.load()

    def timeline(self) -> list[dict[str, Any]]:
        """Every decision recorded, oldest first: events, checks with their figures, routing changes, evaluations, runs."""
        return self.store.timeline()

    # --- manual decisions -----------------------------------------------------------------------------------

    def allow_target(self, now: float | None = None) -> str | None:
        """Let the spec's target be tried again although it was rolled back; returns the version allowed."""
        now = self.clock() if now is None else now
        with self.store.locked():
            dep = self.store.load()
            version, _ = self._target(dep.parsed())
            st = RolloutStatus.from_status(dep.status)
            if version is None or version not in st.rejected:
                return None
            st = manual.allow(st, version)
            rs = RetrainingStatus.from_status(dep.status.get("retraining"))
            journal = Journal([event_doc(Event("Normal", "RetryAllowed", f"Version {version} may be rolled out again"), now, st)])
            self._save(dep, st, rs, rollout.number(dep.status, "registrySyncedAt"), Observed(now), journal, dep.status)
            return version

    def promote(self, reason: str, now: float | None = None) -> StepReport:
        return self._manual(lambda spec, st, rs, t: (manual.promote(st, t, reason), rs, ()), now)

    def rollback(self, reason: str, now: float | None = None) -> StepReport:
        return self._manual(lambda spec, st, rs, t: (manual.rollback(st, t, reason), rs, ()), now)

    def retrain(self, reason: str, now: float | None = None) -> StepReport:
        def trigger(spec: DeploymentSpec, st: RolloutStatus, rs: RetrainingStatus, t: float) -> Manual:
            new, events = manual.retrain(rs, t, reason, self.store.name)
            return Transition(st), new, events

        return self._manual(trigger, now)

    def _manual(self, decide: Callable[[DeploymentSpec, RolloutStatus, RetrainingStatus, float], Manual], now: float | None) -> StepReport:
        """A decision taken by hand: persisted, recorded and applied like the runner's own."""
        now = self.clock() if now is None else now
        with self.store.locked():
            dep = self.store.load()
            spec = dep.parsed()
            old = dep.status
            st = RolloutStatus.from_status(old)
            rs = RetrainingStatus.from_status(old.get("retraining"))
            transition, rs, extra = decide(spec, st, rs, now)
            st = transition.status
            journal = Journal([event_doc(e, now, st) for e in (*transition.events, *extra)])
            seen = Observed(now)
            synced = rollout.number(old, "registrySyncedAt")
            dep = self._save(dep, st, rs, synced, seen, journal, old)
            st, rs, synced = self._converge(spec, st, rs, synced, seen, journal)
            dep = self._save(dep, st, rs, synced, seen, journal, dep.status)
            return self._report(dep, st, journal, seen)


Manual = tuple[Transition, RetrainingStatus, tuple[Event, ...]]


def _failed_after(before: RolloutStatus, after: RolloutStatus) -> int:
    """Failed checks of the canary once a check was counted (a rollback ends the canary at its last failed check)."""
    if after.canary == before.canary:
        return after.failed_checks
    rolled_back = after.phase == "RolledBack" and before.canary in after.rejected
    return before.failed_checks + 1 if rolled_back else before.failed_checks


def _sample_outcomes(o: VersionOutcomes) -> rm.Outcomes:
    return rm.Outcomes(auc=o.auc, labelled=float(o.labelled) if o.predictions else None, positive_rate=o.positive_rate)


def mark_rolled_back(reg: registry.RegistryConfig, version: str, stable: str | None, reason: str, when: float) -> None:
    """The rollback's why on the rejected version; the champion alias stays on (or returns to) the stable version."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - the registry module owns MLflow; this is its rollback tag

    client = MlflowClient(reg.tracking_uri, registry_uri=reg.tracking_uri)
    stamp = status_mod.rfc3339(when)
    client.set_model_version_tag(reg.model_name, version, names.TAG_ROLLED_BACK_AT, stamp)
    client.set_model_version_tag(reg.model_name, version, names.TAG_ROLLBACK_REASON, reason)
    if stable is not None and registry.alias_version(reg, names.CHAMPION) != stable:
        client.set_registered_model_alias(reg.model_name, names.CHAMPION, stable)
