"""The embedded rollout runner: the rollout core's pass, driven by a local loop instead of Kubernetes.

One ``step(now)`` is one pass of ``churnops_contract.rollout.core`` with the
I/O edges of one machine (the operator's are in ``churnops_operator.reconcile``):

1. read the deployment (``store``) and scrape the predictor's ``/metrics``;
2. move the world to the *persisted* status: the routing table the predictor
   follows (``churnops.serving.routing_table``), the MLflow ``champion`` alias and
   the tags of every history entry not yet applied, the retraining run the
   status names (started when it has no process yet);
3. ask the core what to observe, fill the contract's named answers from the
   scrapes, the prediction log and the labels, and let ``core.decide`` decide;
4. persist the new status with its new events in one atomic write (and append
   every decision, with its figures, to the timeline), then apply it at once.

A runner killed anywhere therefore either repeats a step from the same
persisted status or applies a status that was fully decided, exactly as the
operator. ``run`` calls ``step`` every tick until stopped, and backs off
(exponentially, with jitter) while steps fail; the decisions keep their own
time (``spec.rollout.interval``). Time is an argument: a demo or a test steps
the runner with its own clock.
"""

from __future__ import annotations

import logging
import random
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

from churnops.errors import ChurnOpsError, ConflictError, InvalidInputError, UnavailableError
from churnops.rollout import scraped as rm
from churnops.rollout.outcomes import OutcomeSource, VersionOutcomes, labels_reader
from churnops.rollout.prometheus import PrometheusMetrics
from churnops.rollout.retraining import Retrainer
from churnops.rollout.store import Deployment, DeploymentStore, checked_spec, deployments
from churnops.serving.routing_table import DEFAULT_ROUTE, RoutingTable, Split, read_table, write_table
from churnops.training import registry
from churnops_contract import metric_names as cm
from churnops_contract import policy, queries
from churnops_contract import registry as names
from churnops_contract.rollout import core, machine, manual, observe, retraining
from churnops_contract.rollout.analysis import Observation, Verdict
from churnops_contract.rollout.machine import Event, RolloutStatus, Transition
from churnops_contract.rollout.retraining import RetrainingStatus
from churnops_contract.rollout.spec import DeploymentSpec
from churnops_contract.rollout.status import Health, rfc3339

log = logging.getLogger(__name__)

SCRAPES_FILE = "scrapes.json"
SETTLED = ("Promoted", "RolledBack")
BUCKETS = len(cm.SCORE_BUCKETS) + 1
MAX_BACKOFF_S = 30.0


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


def event_doc(entry: Mapping[str, Any], st: RolloutStatus) -> dict[str, Any]:
    """A history entry of the core as a timeline event."""
    return {
        "time": entry.get("time"),
        "kind": "event",
        "seq": entry.get("seq"),
        "type": entry.get("type"),
        "reason": entry.get("event"),
        "message": entry.get("message"),
        "stable": st.stable,
        "canary": st.canary,
        "weight": st.weight,
        "rolloutId": st.rollout_id,
    }


def owner_of(data_dir: Path, model: str) -> str | None:
    """The deployment under ``data_dir`` that owns a registered model: the oldest one naming it (as the operator decides)."""
    claims = []
    for name in deployments(data_dir):
        try:
            dep = DeploymentStore(data_dir, name).load()
        except ChurnOpsError:
            continue
        if str((dep.spec.get("model") or {}).get("registeredModel") or names.DEFAULT_MODEL_NAME) == model:
            claims.append((dep.created, dep.uid, name))
    return min(claims)[2] if claims else None


@dataclass
class Seen:
    """What the convergence of one step found: problems, readiness, the run's state, the registry's progress."""

    problems: dict[str, str] = field(default_factory=dict)
    canary_ready: bool = False
    run: core.RunReport | None = None
    synced: int = 0


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

        A failing step (a disk or registry fault outside the decisions) is retried with exponential backoff and jitter.
        Training runs this runner started are stopped when it returns (a runner killed outright leaves them to the next one).
        """
        claim = self.store.claim()
        report = None
        failures = 0
        rng = random.Random()
        try:
            while not stop.is_set():
                try:
                    report = self.step()
                    failures = 0
                except ChurnOpsError as e:
                    failures += 1
                    log.warning("deployment %s: step failed (%d in a row): %s", self.store.name, failures, e)
                    report = None
                if report is not None and on_step is not None:
                    on_step(report)
                if report is not None and until is not None and until(report):
                    break
                wait = tick_s if not failures else min(tick_s * 2.0**failures, MAX_BACKOFF_S) * (0.5 + rng.random())
                stop.wait(wait)
        finally:
            self.retrainer.close()
            claim.close()
        return report

    # --- one step ---------------------------------------------------------------------------------------

    def step(self, now: float | None = None, analyse: bool = True) -> StepReport:
        """One pass (see the module docstring); ``analyse=False`` takes no canary check (nothing to measure)."""
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
        st = core.rollout_of(dep.status)
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

    def _health(self, seen: Observed, st: RolloutStatus, problems: Mapping[str, str]) -> Health:
        ready = None if seen.scrape is None or st.stable is None else st.stable in seen.scrape.served
        return Health(ready, dict(problems))

    def _reconcile(self, dep: Deployment, seen: Observed, analyse: bool) -> StepReport:
        now = seen.now
        raw = dep.status
        try:
            spec = checked_spec(dep.spec)
        except ChurnOpsError as e:
            return self._blocked(dep, seen, {"spec": str(e)})
        owner = owner_of(self.store.data_dir, spec.model.registered_model)
        if owner is not None and owner != self.store.name:
            why = f"registered model {spec.model.registered_model} is deployed by {owner}; one deployment per registered model"
            return self._blocked(dep, seen, {"owner": why})
        journal = Journal()
        found = self._converge(spec, raw, seen, journal)
        if analyse and self.metrics is not None and seen.scrape is None and seen.problems:
            found.problems.setdefault("metrics", seen.problems[0])  # as the operator reports a Prometheus it cannot read
        target, problem = self._target(spec, found.problems)
        due = core.due(spec, raw, now, found.canary_ready)
        observation = self._analysis(spec, due, seen) if analyse and due.check else None
        signals = self._signals(spec, due, seen) if analyse and due.evaluation and due.stable else None
        st_before = core.rollout_of(raw)
        world = core.World(
            target=target,
            target_problem=problem,
            health=self._health(seen, st_before, found.problems),
            canary_ready=found.canary_ready,
            observation=observation,
            signals=signals,
            run=found.run,
            model_ref=core.model_ref(spec),
            run_prefix=retraining.run_prefix(None, self.store.name, dep.uid),
        )
        plan = core.decide(spec, raw, world, dep.generation, now)
        status = core.mark_synced(plan.status, found.synced)
        if plan.verdict is not None:
            journal.add(self._check_entry(st_before, core.rollout_of(status), plan.verdict, now))
        if signals is not None:
            journal.add(self._evaluation_entry(raw, status, signals, now))
        self._run_entry(raw, status, found.run, now, journal)
        dep = self._save(dep, status, journal)
        # apply the decision now rather than on the next step (the persisted status is what is applied)
        found = self._converge(spec, dep.status, Observed(now, seen.scrape, seen.counters), journal)
        dep = self._save(dep, core.mark_synced(dep.status, found.synced), journal)
        return self._report(dep, journal, seen)

    def _save(self, dep: Deployment, status: dict[str, Any], journal: Journal) -> Deployment:
        """Persist the status with its unposted events in one atomic write, then append the decisions to the timeline."""
        entries = core.unposted(status)
        st = core.rollout_of(status)
        docs = [event_doc(e, st) for e in entries]
        if entries:
            status = core.mark_posted(status, int(entries[-1]["seq"]))
            journal.add(*docs)
        if status != dep.status or entries:
            events = [{k: v for k, v in d.items() if k not in ("kind", "seq")} for d in docs]
            dep = replace(dep, status=status).with_events(events)
            self.store.save(dep)
        self.store.record(journal.unsaved())
        journal.saved = len(journal.entries)
        return dep

    def _report(self, dep: Deployment, journal: Journal, seen: Observed) -> StepReport:
        st = core.rollout_of(dep.status)
        return StepReport(
            seen.now, str(dep.status.get("phase")), st.stable, st.canary, st.weight, journal.events(), st.last_verdict, tuple(seen.problems)
        )

    def _blocked(self, dep: Deployment, seen: Observed, problems: dict[str, str]) -> StepReport:
        st = core.rollout_of(dep.status)
        plan = core.blocked(dep.status, self._health(seen, st, problems), dep.generation, seen.now)
        journal = Journal()
        dep = self._save(dep, plan.status, journal)
        return StepReport(
            seen.now,
            str(dep.status.get("phase")),
            st.stable,
            st.canary,
            st.weight,
            journal.events(),
            st.last_verdict,
            tuple(problems.values()),
        )

    # --- the world -------------------------------------------------------------------------------------

    def _converge(self, spec: DeploymentSpec, raw: Mapping[str, Any], seen: Observed, journal: Journal) -> Seen:
        """Make the routing table, the registry and the retraining run match the status; record what that changed."""
        found = Seen(synced=machine.integer(raw, "registrySynced"))
        route = core.routing(raw)
        if route.stable is not None:
            self._route(route, seen.now, journal)
        found.canary_ready = route.canary is not None and seen.scrape is not None and route.canary in seen.scrape.served
        self._sync_registry(spec, raw, found)
        found.run = self._track_run(spec, raw, found)
        return found

    def _route(self, route: core.Routing, now: float, journal: Journal) -> None:
        try:
            have = read_table(self.store.routing_path)
        except ChurnOpsError:
            have = RoutingTable()  # unreadable: replace it
        want = RoutingTable(route.stable, route.canary, route.weight, self.split or have.split, now)
        if have.same_routes(want) and self.store.routing_path.exists():
            return
        write_table(self.store.routing_path, want)
        journal.add({"time": now, "kind": "routing", "stable": route.stable, "canary": route.canary, "weight": want.weight})

    def _sync_registry(self, spec: DeploymentSpec, raw: Mapping[str, Any], found: Seen) -> None:
        """Apply the history entries MLflow has not seen: the champion alias and the why on each version."""
        reg = replace(self.registry, model_name=spec.model.registered_model)
        for entry in core.registry_writes(raw):
            frm, to, why = entry.get("from"), entry.get("to"), str(entry.get("reason") or "")[:500]
            when = float(entry.get("time") or 0.0)
            try:
                if entry["event"] == "RolledBack":
                    mark_rolled_back(reg, str(frm), str(to) if to else None, why, when)
                elif entry["event"] == "Promoted" or (to and registry.alias_version(reg, names.CHAMPION) != to):
                    # a first version that is the champion already keeps the record of how it became champion
                    registry.promote(reg, str(to), why)
            except Exception as e:
                found.problems.setdefault("registry", f"{type(e).__name__}: {e}"[:300])
                return
            found.synced = int(entry["seq"])
        found.synced = max(found.synced, core.history_seq(raw))  # every entry up to here was considered

    def _track_run(self, spec: DeploymentSpec, raw: Mapping[str, Any], found: Seen) -> core.RunReport | None:
        action = core.run_action(raw)
        if action is None:
            return None
        r = spec.monitoring.retraining
        try:
            run_id = action[1] if action[0] == "poll" else self.retrainer.ensure(action[1], r.pipeline, core.run_parameters(spec, raw))
            info = self.retrainer.info(run_id)
        except InvalidInputError as e:  # a run this machine cannot start (another pipeline's name): it failed, once
            return core.RunReport(failure=str(e))
        except ChurnOpsError as e:
            found.problems.setdefault("pipelines", str(e)[:300])
            return None
        return core.RunReport(run_id, info.state, info.challenger)

    def _target(self, spec: DeploymentSpec, problems: dict[str, str]) -> tuple[str | None, str | None]:
        """The spec's version (checked to exist) and, when it cannot be used, why; (None, None) while the registry fails."""
        reg = replace(self.registry, model_name=spec.model.registered_model)
        try:
            if spec.model.version is not None:
                if not registry.version_exists(reg, spec.model.version):
                    return None, f"version {spec.model.version} of {reg.model_name} is not registered"
                version = spec.model.version
            else:
                assert spec.model.alias is not None
                aliased = registry.alias_version(reg, spec.model.alias)
                if aliased is None:
                    return None, f"registered model {reg.model_name} has no alias {spec.model.alias!r}"
                version = aliased
            gates = registry.rejected_gates(reg, version)
        except Exception as e:
            problems.setdefault("registry", f"{type(e).__name__}: {e}"[:300])
            return None, None
        if gates is not None:  # registered for inspection only (`train --register-rejected`)
            return None, names.rejected_reason(reg.model_name, version, gates)
        return version, None

    # --- observations --------------------------------------------------------------------------------------

    def _analysis(self, spec: DeploymentSpec, due: core.Due, seen: Observed) -> Observation:
        assert due.canary is not None and due.stable is not None and due.since is not None
        model = spec.model.registered_model
        step_since = due.step_since or due.since
        limit = spec.rollout.analysis.max_latency_p95_ms
        figures = self.outcomes.versions(model, (due.canary, due.stable), due.since, seen.now, estimates=False)
        outcomes = {v: _sample_outcomes(o) for v, o in figures.items()}
        if isinstance(self.metrics, PrometheusMetrics) and seen.scrape is not None:
            asked = queries.analysis_queries(
                model, due.canary, due.stable, max(seen.now - due.since, 1.0), max(seen.now - step_since, 1.0), limit
            )
            labels = (".auc", ".coverage", ".churn_rate")  # on one machine the prediction log and the labels give these
            answers = self.metrics.answers({k: v for k, v in asked.items() if not k.endswith(labels)}, seen.now)
            for role, version in (("canary", due.canary), ("stable", due.stable)):
                answers.update(rm.label_answers(role, outcomes.get(version, rm.Outcomes(labelled=0.0))))
        else:
            answers = rm.answers(seen.counters, seen.scrape, due.canary, due.stable, due.since, step_since, limit, outcomes)
        return observe.analysis_observation(answers, due.look, BUCKETS, tuple(seen.problems))

    def _signals(self, spec: DeploymentSpec, due: core.Due, seen: Observed) -> policy.Observation:
        """The retraining policy's observation of the stable version: the predictor's drift verdict and the delayed labels."""
        assert due.stable is not None
        model = spec.model.registered_model
        o = self.outcomes.versions(model, (due.stable,), seen.now - self.label_window_s, seen.now)[due.stable]
        answers = rm.drift_answers(seen.scrape, due.stable)
        figures = {
            "auc_measured": o.auc,
            "auc_estimated": o.estimated_auc,
            "calibration_ratio": o.calibration_ratio,
            "calibration_z": o.calibration_z,
        }
        for name, x in figures.items():
            answers[name] = observe.Answer({}) if x is None else observe.value(x)
        answers["labelled"] = observe.value(float(o.labelled))
        return observe.retraining_observation(answers, spec.monitoring.drift.threshold, self._reference(model, due.stable), seen.now)

    @staticmethod
    def _check_entry(before: RolloutStatus, after: RolloutStatus, verdict: Verdict, now: float) -> dict[str, Any]:
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

    @staticmethod
    def _evaluation_entry(raw: Mapping[str, Any], status: Mapping[str, Any], obs: policy.Observation, now: float) -> dict[str, Any]:
        before, after = core.retraining_of(raw), core.retraining_of(status)
        return {
            "time": now,
            "kind": "evaluation",
            "version": core.rollout_of(status).stable,
            "breaches": after.breaches,
            "triggered": after.triggers > before.triggers,
            "reason": after.reason,
            "signals": {
                "driftDetected": obs.drift_detected,
                "driftedShare": obs.drifted_share,
                "measuredAUC": obs.measured_auc,
                "labelled": obs.labelled,
                "estimatedAUC": obs.estimated_auc,
                "referenceAUC": obs.reference_auc,
                "calibrationRatio": obs.calibration_ratio,
                "calibrationZ": obs.calibration_z,
            },
        }

    @staticmethod
    def _run_entry(raw: Mapping[str, Any], status: Mapping[str, Any], run: core.RunReport | None, now: float, journal: Journal) -> None:
        before, after = core.retraining_of(raw), core.retraining_of(status)
        if run is not None and after.run_state != before.run_state:
            detail = run.failure or ""
            journal.add(
                {
                    "time": now,
                    "kind": "run",
                    "run": after.run_id or after.pending_key,
                    "state": after.run_state,
                    "challenger": run.challenger,
                    "detail": detail,
                }
            )

    def _reference(self, model: str, version: str) -> float | None:
        """The version's holdout AUC at training (the policy's reference); versions are immutable, so it is cached."""
        key = (model, version)
        if key not in self._reference_auc:
            try:
                info = registry.version_info(replace(self.registry, model_name=model), version)
            except Exception:
                return None
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
            version, _ = self._target(dep.parsed(), {})
            st = core.rollout_of(dep.status)
            if version is None or (version not in st.rejected and (st.deferred is None or st.deferred.version != version)):
                return None
            transition = machine.allow(st, version)
            plan = core.assemble(
                dep.status, transition.status, core.retraining_of(dep.status), transition.events, Health(), dep.generation, now
            )
            self._save(dep, plan.status, Journal())
            return version

    def promote(self, reason: str, now: float | None = None) -> StepReport:
        return self._manual(lambda spec, st, rs, t: (manual.promote(st, reason), rs, ()), now)

    def rollback(self, reason: str, now: float | None = None) -> StepReport:
        return self._manual(lambda spec, st, rs, t: (manual.rollback(st, reason), rs, ()), now)

    def retrain(self, reason: str, now: float | None = None) -> StepReport:
        def trigger(spec: DeploymentSpec, st: RolloutStatus, rs: RetrainingStatus, t: float) -> Manual:
            dep = self.store.load()
            prefix = retraining.run_prefix(None, self.store.name, dep.uid)
            new, events = manual.retrain(rs, t, reason, prefix, core.model_ref(spec))
            return Transition(st), new, events

        return self._manual(trigger, now)

    def _manual(self, decide: Callable[[DeploymentSpec, RolloutStatus, RetrainingStatus, float], Manual], now: float | None) -> StepReport:
        """A decision taken by hand: persisted, recorded and applied like the runner's own."""
        now = self.clock() if now is None else now
        with self.store.locked():
            dep = self.store.load()
            spec = dep.parsed()
            st, rs = core.rollout_of(dep.status), core.retraining_of(dep.status)
            try:
                transition, rs, extra = decide(spec, st, rs, now)
            except manual.ManualError as e:
                raise ConflictError(str(e)) from None
            plan = core.assemble(dep.status, transition.status, rs, (*transition.events, *extra), Health(), dep.generation, now)
            journal = Journal()
            dep = self._save(dep, plan.status, journal)
            seen = Observed(now)
            found = self._converge(spec, dep.status, seen, journal)
            dep = self._save(dep, core.mark_synced(dep.status, found.synced), journal)
            return self._report(dep, journal, seen)


Manual = tuple[Transition, RetrainingStatus, tuple[Event, ...]]


def _failed_after(before: RolloutStatus, after: RolloutStatus) -> int:
    """Failed checks of the canary once a check was counted (a rollback ends the canary at its last failed check)."""
    if after.canary == before.canary:
        return after.failed_checks
    rolled_back = after.phase == "RolledBack" and before.canary in after.rejected
    return before.failed_checks + 1 if rolled_back else before.failed_checks


def _sample_outcomes(o: VersionOutcomes) -> rm.Outcomes:
    """The label figures of a version; an unreadable label source is unknown, not zero."""
    if not o.readable:
        return rm.Outcomes(labelled=None)
    return rm.Outcomes(auc=o.auc, labelled=float(o.labelled), positive_rate=o.positive_rate)


def mark_rolled_back(reg: registry.RegistryConfig, version: str, stable: str | None, reason: str, when: float) -> None:
    """The rollback's why on the rejected version; the champion alias stays on (or returns to) the stable version."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - the registry module owns MLflow; this is its rollback tag

    client = MlflowClient(reg.tracking_uri, registry_uri=reg.tracking_uri)
    stamp = rfc3339(when)
    client.set_model_version_tag(reg.model_name, version, names.TAG_ROLLED_BACK_AT, stamp)
    client.set_model_version_tag(reg.model_name, version, names.TAG_ROLLBACK_REASON, reason)
    if stable is not None and registry.alias_version(reg, names.CHAMPION) != stable:
        client.set_registered_model_alias(reg.model_name, names.CHAMPION, stable)
