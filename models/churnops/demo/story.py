"""The main job: a churn model's life on one machine, with embedded defaults.

1. data, validation, features, Feast (SQLite online store, Parquet offline);
2. a first model trained, registered and made champion, served behind the
   ``churn`` endpoint under synthetic customer traffic;
3. a challenger trained by a fuller search and rolled out 5 → 25 → 50 → 100 %,
   judged by the canary analysis, and promoted;
4. the population shifts (the generator's drift preset) and the outcomes arrive
   late; monitoring raises drift and calibration alerts; the retraining policy
   starts the training pipeline under ``kfp.local`` and its challenger is rolled out;
5. a deliberately worse model is rolled out, failed by the analysis and rolled
   back on its own;
6. batch and online scoring with reasons, the audit trail verified, the HTML
   report and the champion's compliance report.

The decisions are the operator's own (``churnops.rollout`` drives them with a
local loop); every one is recorded with its figures under
``<data-dir>/rollout/churn/``, which the tests read. The story only sets goals
(a target version, outcomes released, the population shifted) and waits for
the runner to reach them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from churnops.data.config import GeneratorConfig, with_drift
from churnops.data.steps import generate
from churnops.demo import outcomes, scoring
from churnops.demo.children import Children
from churnops.demo.traffic import Traffic
from churnops.errors import CheckFailedError, InvalidInputError
from churnops.features import steps
from churnops.layout import Layout
from churnops.processes import free_port, wait_for_http
from churnops.reports.compliance import write_compliance_report
from churnops.reports.demo import write_demo_report
from churnops.rollout.runner import Runner, RunnerConfig, StepReport
from churnops.rollout.store import DeploymentStore
from churnops.serving.audit import read_records, verify_file
from churnops.serving.audit_keys import public_keys_for
from churnops.serving.auth import AuthConfig, issue_token, local_secret
from churnops.training import registry, runs
from churnops.training.config import GateConfig, SearchBudget, TrainingConfig
from churnops.training.dataset import churn_spec
from churnops.training.train import log_reference_profile
from churnops_contract import registry as names

ROUTE = "churn"
MARKER = ".churnops-demo"  # a data directory the demo may clear: it made it
# what the marker says: whether the outputs are a whole run (an interrupted or failed one leaves INCOMPLETE)
INCOMPLETE = "made by `churnops demo`; incomplete: the run has not finished; the next demo replaces this directory\n"
COMPLETE = "made by `churnops demo`; complete; the next demo replaces this directory\n"


@dataclass(frozen=True)
class DemoConfig:
    """Sizes and pace of the story; ``fast()`` is the variant the test suite runs."""

    data_dir: Path
    customers: int = 20_000
    seed: int = 42
    history_days: int = 180
    drift: str = "both"
    drift_start_day: int = 120
    champion_minutes: float = 0.5  # the quick first model: logistic regression only
    challenger_minutes: float = 2.0  # the fuller AutoML search
    retrain_trials: int = 12  # the retraining pipeline's budget
    retrain_minutes: float = 1.5
    traffic_rate: float = 60.0  # requests/s of synthetic customers
    interval_s: float = 3.0  # the canary analysis' check interval
    min_samples: int = 80  # canary requests per step before a verdict
    drift_window: int = 2_000  # predictions in the predictor's live drift window
    stage_timeout_s: float = 600.0
    keep_serving: bool = False  # leave the predictor and the monitoring page up until Ctrl-C

    @staticmethod
    def fast(data_dir: Path) -> DemoConfig:
        return DemoConfig(
            data_dir,
            customers=3_000,
            champion_minutes=0.2,
            challenger_minutes=0.4,
            retrain_trials=4,
            retrain_minutes=0.4,
            traffic_rate=40.0,
            interval_s=2.0,
            min_samples=40,
            drift_window=600,
        )


@dataclass
class Timeline:
    """What happened, in order, as the demo prints it (the recorded truth is the rollout's timeline file)."""

    started: float = field(default_factory=time.monotonic)
    lines: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, text: str) -> None:
        with self._lock:
            line = f"  [{time.monotonic() - self.started:6.0f} s] {text}"
            self.lines.append(line)
            print(line, flush=True)


def stage(n: int, title: str) -> None:
    print(f"\n== {n}/6 {title} ==", flush=True)


class Story:
    def __init__(self, cfg: DemoConfig, env: Mapping[str, str]) -> None:
        self.cfg = cfg
        self.env = dict(env)
        self.layout = Layout(cfg.data_dir)
        self.timeline = Timeline()
        self.children = Children()
        self.traffic: Traffic | None = None
        self.runner: Runner | None = None
        self._stop = threading.Event()
        self._runner_thread: threading.Thread | None = None
        self._seen_events = 0
        self.serve_day = 0
        self.predictor_url = ""
        self.page_url = ""
        self.token = ""

    # --- the story --------------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        prepare(self.layout)
        try:
            self.data()
            champion = self.champion()
            challenger = self.challenger(champion)
            self.drift()
            self.worse()
            summary = self.finish(challenger)
            (self.layout.data_dir / MARKER).write_text(COMPLETE)
            return summary
        except KeyboardInterrupt:
            print(f"\nInterrupted: {self.layout.data_dir} holds an incomplete run; the next `churnops demo` replaces it.", flush=True)
            raise
        finally:
            self.stop()

    def data(self) -> None:
        stage(1, "Data, validation, features, Feast")
        gen = GeneratorConfig(n_customers=self.cfg.customers, seed=self.cfg.seed, history_days=self.cfg.history_days)
        self.serve_day = gen.calendar.labelled_snapshot_days()[-1]
        summary = steps.run_foundation(gen, self.layout, "embedded", self.env, self.serve_day)
        self.timeline.say(
            f"{summary['customers']:,} customers, {summary['features']} features in '{summary['feature_service']}', "
            f"30-day churn {summary['churn_rate_30d']:.1%}, validation pass rate {summary['validation_pass_rate']}; "
            f"serving the snapshot of day {self.serve_day}"
        )

    def champion(self) -> str:
        stage(2, "A first model: trained, registered, champion, served under traffic")
        reg = self.registry()
        quick = TrainingConfig(
            seed=self.cfg.seed, budget=SearchBudget(timeout_s=self.cfg.champion_minutes * 60, families=("logistic_regression",))
        )
        outcome = runs.train_platform(self.layout, "embedded", self.env, quick, reg)
        assert outcome.registered is not None  # train_platform raises when a gate fails
        version = outcome.registered.version
        registry.promote(reg, version, "first model to pass the quality gates")
        self.timeline.say(f"v{version} (logistic regression) registered, holdout AUC {outcome.evaluation.roc_auc:.3f}; champion")
        self.start_servers()
        self.deploy(version)
        self.wait(lambda r: r.stable == version and r.canary is None, f"v{version} serving the '{ROUTE}' endpoint")
        # the runner has written the routing table; the predictor loads the version on its own thread
        wait_for_http(f"{self.predictor_url}/v2/health/ready", self.children.process("predictor"), self.cfg.stage_timeout_s)
        customers = steps.active_customers(self.layout, None, self.serve_day)
        self.traffic = Traffic(self.predictor_url, self.token, customers, self.cfg.traffic_rate, seed=self.cfg.seed).start()
        self.timeline.say(f"synthetic traffic: {self.cfg.traffic_rate:g} requests/s over {len(customers):,} customers")
        return version

    def challenger(self, champion: str) -> str:
        stage(3, "A challenger from a fuller search, rolled out as a canary")
        reg = self.registry()
        full = TrainingConfig(seed=self.cfg.seed + 1, budget=SearchBudget(timeout_s=self.cfg.challenger_minutes * 60))
        outcome = runs.train_platform(self.layout, "embedded", self.env, full, reg)
        assert outcome.registered is not None
        version = outcome.registered.version
        self.timeline.say(
            f"v{version} ({', '.join(outcome.summary['ensemble']['members'])}) registered as challenger, "
            f"holdout AUC {outcome.evaluation.roc_auc:.3f} (champion v{champion})"
        )
        self.target(version)
        report = self.wait(
            lambda r: r.canary is None and r.stable in (champion, version) and r.phase in ("Promoted", "RolledBack"),
            f"the rollout of v{version}",
            after=version,
        )
        self.timeline.say(f"rollout of v{version} ended: {report.phase}; stable v{report.stable}; {self.traffic_line()}")
        return str(report.stable)

    def drift(self) -> None:
        stage(4, "The population shifts; outcomes arrive late; monitoring alerts; retraining")
        traffic_start = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
        base = outcomes.served_outcomes(self.layout.raw, self.serve_day)
        shifted = with_drift(
            GeneratorConfig(n_customers=self.cfg.customers, seed=self.cfg.seed, history_days=self.cfg.history_days),
            self.cfg.drift,
            self.cfg.drift_start_day,
        )
        generate(shifted, self.layout)
        steps.features(self.layout)
        steps.publish(self.layout, "embedded", self.env, self.serve_day)
        shift_time = dt.datetime.now(dt.UTC)
        self.timeline.say(
            f"population shifted ('{self.cfg.drift}' drift from day {self.cfg.drift_start_day}): "
            "the online store now serves the shifted customers"
        )
        # Outcomes arrive late: only after the monitoring alert, so the retraining policy sees the drift it is about.
        # The alert is the live drift verdict, or the label-free AUC estimate the shift pulls down: when that breach
        # comes first, the policy starts the retraining run before the verdict (and the retrained champion's
        # reference is the shifted population, so the verdict may never come).
        self.wait(lambda r: self.drift_seen() or self.recorded("RetrainingTriggered"), "a drift alert")
        outcomes.release(base, traffic_start, self.layout.data_dir / "labels", "outcomes_before_shift")
        self.timeline.say(
            f"the outcomes of {len(base):,} customers served before the shift arrived ({base['churned_30d'].mean():.1%} churned)"
        )
        late = outcomes.served_outcomes(self.layout.raw, self.serve_day)
        outcomes.release(late, shift_time, self.layout.data_dir / "labels", "outcomes_after_shift")
        self.timeline.say(f"the outcomes after the shift arrived ({late['churned_30d'].mean():.1%} churned)")
        self.wait(lambda r: self.recorded("RetrainingTriggered"), "the retraining policy to start a run")
        self.wait(
            lambda r: self.recorded("RetrainingFinished") or self.recorded("RetrainingFailed"),
            "the retraining run (KFP, kfp.local)",
            timeout_s=self.cfg.stage_timeout_s * 2,
        )
        self.wait(lambda r: r.settled and r.phase != "Retraining", "the retrained challenger's rollout")
        status = self.store().load().status
        self.timeline.say(f"after retraining: stable v{status.get('stableVersion')}; {self.traffic_line()}")

    def worse(self) -> None:
        stage(5, "A deliberately worse model is rolled out and rolled back on its own")
        reg = self.registry()
        frame = runs.training_frame(self.layout, "embedded", self.env)
        spec = churn_spec()
        model = outcomes.learned_nothing(frame, spec, self.cfg.seed)
        example = frame[list(spec.features)].head(20)
        registered = registry.log_and_register(
            reg,
            model,
            example,
            {"threshold": 0.5},
            {},
            {"purpose": "demo: learned nothing (permuted labels), registered without gates"},
            {},
        )
        log_reference_profile(model, frame.tail(5_000), registered.run_id, reg.tracking_uri)
        self.timeline.say(f"v{registered.version}: a logistic regression fitted on permuted labels, registered without its gates")
        self.target(registered.version)
        report = self.wait(
            lambda r: r.canary is None and r.phase in ("Promoted", "RolledBack"),
            f"the rollout of v{registered.version}",
            after=registered.version,
        )
        self.timeline.say(f"rollout of v{registered.version} ended: {report.phase}; stable v{report.stable}")

    def finish(self, challenger: str) -> dict[str, Any]:
        stage(6, "Batch and online scoring, audit, reports")
        reg = self.registry()
        champion = registry.resolve_version(reg, names.CHAMPION)
        at = self.calendar_day(self.serve_day)
        report, scores, plot = scoring.batch_scores(self.layout, reg, champion, at)
        self.timeline.say(f"batch: {report.rows:,} customers scored by v{champion} with top-5 reasons in {report.seconds:.1f} s ({plot})")
        riskiest = [int(c) for c in scores.sort_values("churn_probability", ascending=False)["customer_id"].head(3)]
        with httpx.Client(base_url=self.predictor_url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30) as client:
            answer = client.post(f"/v1/models/{ROUTE}:predict", json={"instances": [{"customer_id": c} for c in riskiest]})
        answer.raise_for_status()
        for p in answer.json()["predictions"]:
            reasons = ", ".join(f"{r['feature']} ({r['contribution']:+.2f})" for r in p["reasons"][:3])
            self.timeline.say(
                f"online: customer {p['customer_id']} {p['churn_probability']:.1%} ({p['risk_band']}) by v{p['model_version']} because {reasons}"
            )
        if self.traffic is not None:
            self.traffic.stop()
        self.stop_runner()
        audited = self.check_audit()
        demo = write_demo_report(self.layout)
        compliance = write_compliance_report(self.layout, names.CHAMPION)
        self.timeline.say(f"reports: {demo.html} and {compliance.html}")
        summary = self.summary(champion, audited)
        print("\nTimeline of decisions:", flush=True)
        for line in summary["decisions"]:
            print(f"  {line}", flush=True)
        if not self.cfg.keep_serving:
            print(f"\nThe predictor and the monitoring page ({self.page_url}) stop now; --keep-serving leaves them up.", flush=True)
        return summary

    # --- the machinery ------------------------------------------------------------------------------

    def registry(self) -> registry.RegistryConfig:
        return registry.RegistryConfig.embedded(self.layout.data_dir)

    def store(self) -> DeploymentStore:
        return DeploymentStore(self.layout.data_dir, ROUTE)

    def calendar_day(self, day: int) -> Any:
        from churnops.data.raw import read_calendar  # noqa: PLC0415 - one call

        return read_calendar(self.layout.raw).day_timestamp(day)

    def start_servers(self) -> None:
        secret = self.layout.secrets / "jwt.key"
        key = local_secret(secret)  # the embedded mode's secret, created once
        self.token = issue_token(AuthConfig(key=key), "demo-traffic", ["predictor"], ttl_s=24 * 3600)
        churnops = str(Path(sys.executable).parent / "churnops")
        env = {**self.env, "OMP_NUM_THREADS": "1"}
        port, page = free_port(), free_port()
        self.predictor_url = f"http://127.0.0.1:{port}"
        serve = [churnops, "--data-dir", str(self.layout.data_dir), "serve", "--route", ROUTE, "--port", str(port)]
        serve += ["--jwt-secret-file", str(secret), "--drift-window", str(self.cfg.drift_window), "--route-seed", str(self.cfg.seed)]
        self.children.start("predictor", serve, self.layout.reports / "predictor.log", f"{self.predictor_url}/v2/health/live", env)
        monitor = [churnops, "--data-dir", str(self.layout.data_dir), "monitor", "serve", "--port", str(page)]
        self.page_url = f"http://127.0.0.1:{page}/"
        self.children.start("monitoring page", monitor, self.layout.reports / "monitor.log", f"{self.page_url}healthz", env)
        (self.layout.reports / "urls.json").write_text(f'{{"predictor": "{self.predictor_url}", "page": "{self.page_url}"}}\n')
        self.timeline.say(f"predictor on {self.predictor_url} (endpoint '{ROUTE}'); monitoring page on {self.page_url}")

    def spec(self, version: str) -> dict[str, Any]:
        c = self.cfg
        gates = GateConfig()
        return {
            "model": {"registeredModel": names.DEFAULT_MODEL_NAME, "version": version},
            "featureService": "churn_v1",
            "rollout": {
                "steps": [5, 25, 50, 100],
                "interval": f"{c.interval_s:g}s",
                "minSamples": c.min_samples,
                "failureThreshold": 2,
                "progressDeadline": "10m",
                # a retrained model on shifted data legitimately scores differently from the old champion
                "analysis": {"maxErrorRate": 0.01, "maxLatencyP95Ms": 250, "maxScorePSI": 0.5, "minAUCDelta": -0.05, "minLabelled": 200},
            },
            "monitoring": {
                "evaluationInterval": f"{c.interval_s:g}s",
                "drift": {"consecutive": 2},
                "retraining": {
                    "enabled": True,
                    "pipeline": "churn-training",
                    "cooldown": "1h",
                    "parameters": {
                        "n_trials": str(c.retrain_trials),
                        "timeout_s": str(c.retrain_minutes * 60),
                        "min_auc": str(min(gates.min_auc, 0.75)),
                        "max_fairness_gap": str(max(gates.max_fairness_gap, 0.35)),
                        "max_auc_regression": "0.05",
                    },
                },
            },
        }

    def deploy(self, version: str) -> None:
        store = self.store()
        with store.locked():
            store.create_or_update(self.spec(version), now=time.time())
        self.runner = Runner.build(RunnerConfig(self.layout.data_dir, ROUTE, predictor_url=self.predictor_url))
        self._runner_thread = threading.Thread(target=self._drive, name="rollout-runner", daemon=True)
        self._runner_thread.start()

    def target(self, version: str) -> None:
        store = self.store()
        with store.locked():
            store.create_or_update({"model": {"version": version}}, now=time.time())

    def _drive(self) -> None:
        """The runner's own loop (one step a second; the analysis keeps its own interval), as `churnops rollout run` runs it."""
        assert self.runner is not None
        self.runner.run(self._stop, tick_s=1.0, on_step=self._on_step)

    def _on_step(self, report: StepReport) -> None:
        self.last = report
        for event in report.events:
            self.timeline.say(f"{event.get('type', 'Normal')} {event.get('reason')}: {event.get('message')}")

    last: StepReport | None = None

    def wait(self, done: Callable[[StepReport], bool], what: str, after: str | None = None, timeout_s: float | None = None) -> StepReport:
        """Until the runner's last report satisfies ``done`` (after it has seen ``after`` as its canary, if given)."""
        deadline = time.monotonic() + (timeout_s or self.cfg.stage_timeout_s)
        seen_after = after is None
        while time.monotonic() < deadline:
            report = self.last
            if report is not None:
                seen_after = seen_after or report.canary == after or self.recorded_about(after)
                if seen_after and done(report):
                    return report
            time.sleep(0.5)
        raise CheckFailedError(f"the demo waited {timeout_s or self.cfg.stage_timeout_s:.0f} s for {what}; see {self.store().dir}")

    def recorded(self, reason: str) -> bool:
        return any(e.get("kind") == "event" and e.get("reason") == reason for e in self.store().timeline())

    def drift_seen(self) -> bool:
        """An evaluation of the retraining policy found the serving version's live drift verdict set."""
        return any(e.get("kind") == "evaluation" and (e.get("signals") or {}).get("driftDetected") for e in self.store().timeline())

    def recorded_about(self, version: str | None) -> bool:
        return version is not None and any(e.get("canary") == version for e in self.store().timeline())

    def traffic_line(self) -> str:
        return "traffic: " + (self.traffic.stats.line() if self.traffic is not None else "none")

    def check_audit(self) -> int:
        """Every online prediction has an audit record with reasons, and every trail verifies."""
        total = 0
        keys = public_keys_for(None, self.env)  # the servers and `churnops score` signed with the same default key
        for log in sorted(self.layout.audit.glob("*.jsonl")):
            check = verify_file(log, keys)
            if not check.ok:
                raise RuntimeError(f"audit trail {log} does not verify: {check.problems}")
            records = [r for r in read_records(log) if r.get("kind") != "batch"]
            if any(not r.get("reasons") for r in records):
                raise RuntimeError(f"{log}: a prediction without reasons")
            total += len(records)
        self.timeline.say(f"audit: {total:,} predictions audited, each with its reasons; every trail verifies")
        return total

    def summary(self, champion: str, audited: int) -> dict[str, Any]:
        entries = [e for e in self.store().timeline() if e.get("kind") == "event"]
        count = {
            reason: sum(1 for e in entries if e.get("reason") == reason)
            for reason in ("Promoted", "RolledBack", "DriftDetected", "RetrainingTriggered")
        }
        decisions = [f"{e.get('reason')}: {e.get('message')}" for e in entries]
        traffic = self.traffic.stats.summary() if self.traffic is not None else {}
        return {
            "champion": champion,
            "counts": count,
            "decisions": decisions,
            "audited_predictions": audited,
            "traffic": traffic,
            "page": self.page_url,
        }

    def stop_runner(self) -> None:
        self._stop.set()
        if self._runner_thread is not None:
            self._runner_thread.join(timeout=60)  # the runner stops the training run it started

    def stop(self) -> None:
        if self.traffic is not None:
            self.traffic.stop()
        self.stop_runner()
        if self.cfg.keep_serving and self.children.started:
            with contextlib.suppress(KeyboardInterrupt):
                print(f"Serving on {self.predictor_url} and {self.page_url}; Ctrl-C stops.", flush=True)
                threading.Event().wait()
        self.children.stop_all()


def prepare(layout: Layout) -> None:
    """Replace the previous demo's outputs; refuse to clear a directory the demo did not make."""
    d = layout.data_dir
    if d.exists() and any(d.iterdir()) and not (d / MARKER).exists():
        raise InvalidInputError("holds data the demo did not make; give the demo an empty or new directory", field=f"--data-dir {d}")
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)
    (d / MARKER).write_text(INCOMPLETE)
