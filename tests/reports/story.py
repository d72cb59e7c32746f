"""A small real data directory holding the whole loop, for the report tests.

What it holds, written through the platform's own writers:
- an embedded MLflow registry with versions 1 (XGBoost) and 2 (LightGBM),
  each trained on the training rows, evaluated on a time-based holdout and
  logged as training does (``evaluation/evaluation.json`` with the gates as
  applied, the model card, the reference profile), and version 3: logistic
  regression on permuted labels, registered by a "retraining run" the way the
  KFP pipeline registers (no evaluation artifacts, a ``gates`` tag only);
- a prediction log (``PredictionLog``) of hourly traffic scored by the
  versions the routing table names, normal customers first, then the
  generator's covariate drift preset;
- an audit log per prediction (``FileAuditSink``) and a batch record;
- the embedded ModelDeployment ``churn`` driven by the real runner
  (``churnops.rollout.runner.Runner``) with the operator's decisions: version
  1 deployed, version 2 promoted through every step, drift breaches the
  retraining policy, the run yields version 3, which is rolled back;
- delayed labels for the customers of the first hours only;
- the champion's batch scores with their top-5 reasons.

The predictor is simulated where a process would only add waiting: its
metrics are the real ``ServingMetrics`` counters read through the runner's
own parser, its drift gauges the monitoring package's statistic on the hour's
logged inputs, and the retraining run registers version 3 at once.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, generate_latest

from churnops.data.config import with_drift
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.layout import Layout
from churnops.monitoring.drift import detect_drift
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.records import FeatureLayout, PredictionBatch
from churnops.monitoring.predlog.writer import PredictionLog
from churnops.monitoring.profile import ReferenceProfile, load_profile
from churnops.rollout import scraped as rm
from churnops.rollout.outcomes import OutcomeSource, labels_reader
from churnops.rollout.retraining import RESULT_FILE, Retrainer
from churnops.rollout.runner import Runner, StepReport
from churnops.rollout.store import DeploymentStore
from churnops.serving.audit import FileAuditSink, digest
from churnops.serving.batch import score_file
from churnops.serving.explain import CompiledModel
from churnops.serving.instruments import ServingMetrics
from churnops.serving.routing_table import read_table
from churnops.serving.scoring import risk_bands
from churnops.training import registry
from churnops.training.config import BusinessConfig, GateConfig
from churnops.training.dataset import Split, churn_spec, time_holdout
from churnops.training.ensemble import ChurnEnsemble
from churnops.training.evaluation import Evaluation, choose_threshold
from churnops.training.gates import GateResult, check_gates
from churnops.training.model_card import CardInputs, plot_evaluation, write_card
from churnops.training.runs import frame_digest
from churnops.training.train import holdout_evaluation, log_reference_profile
from churnops_contract import metric_names as cm
from tests.monitoring.monitor_fixtures import TRAFFIC, feature_table
from tests.support.audit import file_sink
from tests.support.serving import fit_ensemble

MODEL = "churn-classifier"
ROUTE = "churn"
T0 = dt.datetime(2026, 3, 2, tzinfo=dt.UTC).timestamp()
HOUR = 3600.0
PER_HOUR = 200
SUB_BATCHES = 4  # predictions of an hour are written in a few batches, spread over it
LABELLED_HOURS = 6  # outcomes arrive for the customers of the first hours only
CANARY_AT = 3  # the hour version 2 becomes the target
MAX_HOURS = 40
SPEC: dict[str, Any] = {
    "featureService": "churn_v1",
    "rollout": {"steps": [25, 50, 100], "interval": "1h", "minSamples": 40, "failureThreshold": 2},
    "monitoring": {
        "evaluationInterval": "1h",
        "drift": {"consecutive": 2},
        "retraining": {"enabled": True, "cooldown": "24h", "pipeline": "churn-training"},
    },
}


@dataclass(frozen=True)
class Trained:
    version: str
    model: ChurnEnsemble
    evaluation: Evaluation | None
    gates: list[GateResult]
    run_id: str
    dataset_sha256: str
    card: Path | None = None  # the Markdown model card logged with the run


@dataclass
class Story:
    layout: Layout
    cfg: registry.RegistryConfig
    trained: dict[str, Trained]
    logged: pd.DataFrame  # every prediction written: time, customer_id, version, score, band, segment, mrr
    labels: pd.DataFrame
    reports: list[StepReport]
    audit_log: Path
    batch_log: Path
    drift_from: float  # first prediction time of drifted traffic
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.layout.data_dir


# --- training as the platform does it -------------------------------------------------------------------------


def register_evaluated(cfg: registry.RegistryConfig, model: ChurnEnsemble, split: Split, out_dir: Path) -> Trained:
    """Evaluate on the holdout, apply the gates, write evaluation.json and the model card, register, log the profile."""
    spec = churn_spec()
    business = BusinessConfig()
    train_y = split.train[spec.target_column].to_numpy(dtype=np.int64)
    choice = choose_threshold(train_y, model.predict_proba(split.train), split.train["mrr"].to_numpy(float), business)
    ev, _ = holdout_evaluation(model, choice, split.holdout, spec, business, GateConfig().max_fairness_gap)
    gates = check_gates(ev, GateConfig())
    summary = {"training_rows": len(split.train), "holdout_rows": len(split.holdout), "threshold": choice.threshold}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "evaluation.json").write_text(
        json.dumps({"evaluation": ev.to_dict(), "gates": [asdict(g) for g in gates], "summary": summary}, default=str)
    )
    plots = plot_evaluation(ev, {f: 1.0 / len(model.feature_names) for f in model.feature_names[:5]}, out_dir)
    dataset_sha256 = frame_digest(split.train)
    lineage = {
        "source": "feast:churn_v1 (tests)",
        "feature_service": "churn_v1",
        "rows": str(len(split.train)),
        "dataset_sha256": dataset_sha256,
    }
    card, _ = write_card(CardInputs(MODEL, None, ev, gates, None, dict(lineage), summary, plots), out_dir)
    params = {"threshold": choice.threshold, "threshold_rule": choice.rule}
    example = split.holdout[list(model.feature_names)].head(5)
    reg = registry.log_and_register(cfg, model, example, params, ev.headline(), lineage, {"evaluation": out_dir})
    log_reference_profile(model, split.holdout, reg.run_id, cfg.tracking_uri)
    return Trained(reg.version, model, ev, gates, reg.run_id, dataset_sha256, card)


def register_like_the_pipeline(cfg: registry.RegistryConfig, model: ChurnEnsemble, split: Split) -> Trained:
    """What the KFP pipeline's register step records: lineage tags and ``gates``, no evaluation artifacts."""
    digest_ = frame_digest(split.train)
    tags = {"feature_service": "churn_v1", "dataset_sha256": digest_, "gates": "passed"}
    example = split.holdout[list(model.feature_names)].head(5)
    reg = registry.log_and_register(cfg, model, example, {"threshold": 0.3}, {"roc_auc": 0.5}, tags, {})
    log_reference_profile(model, split.holdout, reg.run_id, cfg.tracking_uri)
    return Trained(reg.version, model, None, [], reg.run_id, digest_)


class InstantRetrainer(Retrainer):
    """A retraining run that ends at once, having registered the bad version 3 (the KFP run's outcome, without its minutes)."""

    def __init__(
        self, runs_dir: Path, data_dir: Path, cfg: registry.RegistryConfig, model: ChurnEnsemble, split: Split, trained: dict[str, Trained]
    ) -> None:
        super().__init__(runs_dir, data_dir, cfg.tracking_uri)
        self.cfg, self.model, self.split, self.trained = cfg, model, split, trained

    def ensure(self, key: str, pipeline: str, parameters: Mapping[str, str]) -> str:
        run = self.runs_dir / key
        if run.is_dir():
            return key
        run.mkdir(parents=True)
        done = register_like_the_pipeline(self.cfg, self.model, self.split)
        self.trained[done.version] = done
        (run / RESULT_FILE).write_text(json.dumps({"state": "SUCCEEDED", "challenger": done.version, "detail": ""}))
        return key


# --- the predictor, simulated around its real metrics ---------------------------------------------------------------


class SimulatedPredictor:
    """Serves the versions the routing table names; its ``/metrics`` text is the real ``ServingMetrics``' plus drift gauges."""

    counts_itself = True  # like the live predictor: the runner keeps counter snapshots of its scrapes

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.metrics = ServingMetrics(self.registry)
        self.drift: dict[str, tuple[float, float]] = {}

    def load(self, versions: list[str]) -> None:
        for v in versions:
            self.metrics.info.labels(MODEL, v, "").set(1)

    def serve(self, version: str, scores: np.ndarray) -> None:
        for s in scores:
            self.metrics.requests.labels(MODEL, version, "v1").inc()
            self.metrics.latency.labels(MODEL, version, "total").observe(0.004)
            self.metrics.score.labels(MODEL, version).observe(float(s))

    def scrape(self, model: str, now: float) -> rm.Scrape:
        text = generate_latest(self.registry).decode()
        for name, i in ((cm.DRIFT_DETECTED, 0), (cm.DRIFTED_FEATURES_SHARE, 1)):
            text += f"# TYPE {name} gauge\n" + "".join(f'{name}{{model="{MODEL}",version="{v}"}} {g[i]}\n' for v, g in self.drift.items())
        return rm.parse(text, model, now)


# --- the story -------------------------------------------------------------------------------------------------------


def latest_snapshot(frame: pd.DataFrame) -> pd.DataFrame:
    """Every customer active at the latest snapshot: the population the holdout (and so the reference profile) describes."""
    latest: pd.DataFrame = frame[frame[TIMESTAMP] == frame[TIMESTAMP].max()]
    return latest


def pools() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Customers of another sample than the training table at its latest snapshot, as generated and under covariate drift.

    Enough of them that the hours before the shift never score a customer twice.
    """
    cfg = replace(TRAFFIC, n_customers=6_000, block_size=6_000)
    normal = latest_snapshot(feature_table(cfg))
    drifted = latest_snapshot(feature_table(with_drift(cfg, "covariate", start_day=0)))
    return normal.sample(frac=1.0, random_state=4).reset_index(drop=True), drifted.sample(frac=1.0, random_state=5).reset_index(drop=True)


@dataclass
class Traffic:
    """One hour's customers split between the stable version and the canary by the routing table's weight."""

    plog: PredictionLog
    audit: FileAuditSink
    predictor: SimulatedPredictor
    models: dict[str, ChurnEnsemble]
    thresholds: dict[str, float]
    written: list[pd.DataFrame] = field(default_factory=list)

    def hour(self, start: float, rows: pd.DataFrame, stable: str, canary: str | None, weight: int) -> None:
        n_canary = round(len(rows) * weight / 100) if canary else 0
        parts = [(canary, rows.iloc[:n_canary]), (stable, rows.iloc[n_canary:])] if canary else [(stable, rows)]
        self.predictor.load([v for v in (stable, canary) if v])
        for version, part in parts:
            if version is None or part.empty:
                continue
            self.score(version, part, start)

    def score(self, version: str, rows: pd.DataFrame, start: float) -> None:
        model = self.models[version]
        features = list(model.feature_names)
        p = model.predict_proba(rows[features])
        bands = risk_bands(p, self.thresholds[version])
        layout = FeatureLayout(tuple(features), frozenset(model.categorical))
        for i, chunk in enumerate(np.array_split(np.arange(len(rows)), SUB_BATCHES)):
            if chunk.size == 0:
                continue
            at = start + i * HOUR / SUB_BATCHES
            part = rows.iloc[chunk]
            ids = [f"{version}-{int(at)}-{j}" for j in range(chunk.size)]
            batch = PredictionBatch(
                MODEL,
                version,
                layout,
                part[ENTITY].astype("int64").tolist(),
                p[chunk],
                bands[chunk],
                ids,
                part[features].reset_index(drop=True),
                at,
            )
            assert self.plog.record_many(batch, timeout_s=30) == chunk.size
            self.audit.append(
                [
                    {
                        "request_id": rid,
                        "time": at,
                        "caller": "tester",
                        "model": MODEL,
                        "model_version": version,
                        "customer_id": int(cid),
                        "features_sha256": digest(rec),
                        "score": float(s),
                        "risk_band": str(b),
                    }
                    for rid, cid, rec, s, b in zip(
                        ids,
                        part[ENTITY],
                        part[features].astype(object).where(part[features].notna(), None).to_dict("records"),
                        p[chunk],
                        bands[chunk],
                        strict=True,
                    )
                ]
            )
            self.written.append(
                pd.DataFrame(
                    {
                        "time": pd.to_datetime(at, unit="s", utc=True),
                        "customer_id": part[ENTITY].to_numpy(),
                        "model_version": version,
                        "score": p[chunk],
                        "risk_band": bands[chunk],
                        "segment": part["segment"].to_numpy(),
                        "mrr": part["mrr"].to_numpy(),
                    }
                )
            )
        self.predictor.serve(version, p)


class Profiles(dict[str, ReferenceProfile]):
    """Reference profiles by version, read from the registry once each."""

    def __init__(self, cfg: registry.RegistryConfig) -> None:
        super().__init__()
        self.cfg = cfg

    def __missing__(self, version: str) -> ReferenceProfile:
        self[version] = load_profile(self.cfg.tracking_uri, MODEL, version)
        return self[version]


def judge_drift(predictor: SimulatedPredictor, profiles: Profiles, version: str, rows: pd.DataFrame, model: ChurnEnsemble) -> None:
    """The predictor's live drift gauges for the stable version, from the hour's inputs (the monitoring package's statistic)."""
    profile = profiles[version]
    result = detect_drift(profile, rows[list(profile.names)], model.predict_proba(rows[list(model.feature_names)]), list(profile.names))
    predictor.drift = {version: (1.0 if result.drift_detected else 0.0, float(result.drifted_share or 0.0))}


def target(store: DeploymentStore, version: str, now: float) -> None:
    with store.locked():
        store.create_or_update({**SPEC, "model": {"version": version}}, now=now)


def build_story(root: Path, churn_table: pd.DataFrame) -> Story:
    layout = Layout(root / "data")
    cfg = registry.RegistryConfig.embedded(layout.data_dir)
    split = time_holdout(churn_table, churn_spec(), 0.25)
    trained = {}
    for family, name in (("xgboost", "v1"), ("lightgbm", "v2")):
        done = register_evaluated(cfg, fit_ensemble(split.train, [family], "single"), split, root / name / "training")
        trained[done.version] = done
    permuted = split.train.assign(churned_30d=np.random.default_rng(5).permutation(split.train["churned_30d"].to_numpy()))
    bad = fit_ensemble(permuted, ["logistic_regression"], "single")

    store = DeploymentStore(layout.data_dir, ROUTE)
    predictor = SimulatedPredictor()
    retrainer = InstantRetrainer(store.runs_dir, layout.data_dir, cfg, bad, split, trained)
    runner = Runner(store, cfg, predictor, OutcomeSource(layout.predictions, labels_reader(layout.data_dir)), retrainer)
    models = {"1": trained["1"].model, "2": trained["2"].model, "3": bad}
    thresholds = {v: registry.version_info(cfg, v)["threshold"] for v in ("1", "2")} | {"3": 0.3}
    plog = PredictionLog(ParquetStore(layout.predictions), CollectorRegistry(), flush_interval_s=0.2)
    audit_log = layout.audit / "predictions.jsonl"
    audit = file_sink(audit_log, fsync="never")
    traffic = Traffic(plog, audit, predictor, models, thresholds)
    normal, drifted = pools()
    profiles = Profiles(cfg)
    reports: list[StepReport] = []
    drift_from: float | None = None
    served = 0
    rolled_back_at: int | None = None
    try:
        target(store, "1", T0)
        reports.append(runner.step(T0))
        for hour in range(1, MAX_HOURS):
            start = T0 + (hour - 1) * HOUR
            if drift_from is None and any(r.stable == "2" for r in reports):
                drift_from, served = start, 0  # the population shifts once version 2 serves everyone
            pool = normal if drift_from is None else drifted
            rows = pool.take(np.arange(served, served + PER_HOUR) % len(pool))
            served += PER_HOUR
            table = read_table(store.routing_path)
            assert table.stable is not None
            traffic.hour(start, rows, table.stable, table.canary, table.weight)
            plog.flush()  # the runner reads the log for its delayed-label figures: the hour is there before it steps
            judge_drift(predictor, profiles, table.stable, rows, models[table.stable])
            if hour == CANARY_AT:
                target(store, "2", start)
            reports.append(runner.step(T0 + hour * HOUR))
            if reports[-1].phase == "RolledBack" and rolled_back_at is None:
                rolled_back_at = hour
            if rolled_back_at is not None and hour >= rolled_back_at + 2:  # two quiet hours after the rollback
                break
        else:
            raise AssertionError(f"no rollback within {MAX_HOURS} hours; last step {reports[-1]}")
        plog.flush()
    finally:
        plog.close()
        audit.close()
    assert drift_from is not None
    logged = pd.concat(traffic.written, ignore_index=True)
    labels = write_labels(layout, logged, normal)
    batch_log = write_batch_scores(layout, trained["2"].model, thresholds["2"], normal.head(400))
    return Story(layout, cfg, trained, logged, labels, reports, audit_log, batch_log, drift_from)


def write_labels(layout: Layout, logged: pd.DataFrame, normal: pd.DataFrame) -> pd.DataFrame:
    """Outcomes of the customers scored in the first hours: one observation window starting before the first prediction."""
    early = logged[logged["time"] < pd.Timestamp(T0 + LABELLED_HOURS * HOUR, unit="s", tz="UTC")]
    outcomes = normal[normal[ENTITY].isin(early["customer_id"].unique())]
    labels = pd.DataFrame(
        {
            "customer_id": outcomes[ENTITY].astype("int64").to_numpy(),
            "event_timestamp": pd.Timestamp(T0 - 86_400, unit="s", tz="UTC"),
            "churned_30d": outcomes["churned_30d"].astype(int).to_numpy(),
        }
    )
    (layout.data_dir / "labels").mkdir(parents=True, exist_ok=True)
    labels.to_parquet(layout.data_dir / "labels" / "outcomes.parquet", index=False)
    return labels


def write_batch_scores(layout: Layout, model: ChurnEnsemble, threshold: float, customers: pd.DataFrame) -> Path:
    """The champion's batch scores with top-5 reasons, and the chained batch record that binds the file to the version."""
    layout.reports.mkdir(parents=True, exist_ok=True)
    snapshot = layout.reports / "latest_snapshot.parquet"
    customers.to_parquet(snapshot, index=False)
    report = score_file(CompiledModel(model), threshold, snapshot, layout.reports / "scores.parquet", top_k=5)
    path = layout.audit / "batch.jsonl"
    sink = file_sink(path, fsync="always")
    try:
        sink.append(
            [
                {
                    "kind": "batch",
                    "time": T0,
                    "caller": "tester",
                    "model": MODEL,
                    "model_version": "2",
                    "input": str(snapshot),
                    "output": str(report.output),
                    "output_sha256": registry.sha256_file(report.output),
                    "rows": report.rows,
                    "reasons": report.explained,
                }
            ]
        )
    finally:
        sink.close()
    return path
