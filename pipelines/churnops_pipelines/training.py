"""The training pipeline for Kubeflow Pipelines v2 (and ``kfp.local`` on one machine).

Each component is a small typed function running in the ChurnOps image (the
project and its locked dependencies are installed there, nothing is pip-installed
at run time). Components exchange Datasets, Models and Artifacts; lineage goes
into each artifact's metadata. The pipeline function only wires tasks.
"""

from kfp import compiler, dsl
from kfp.dsl import HTML, Artifact, Dataset, Input, Markdown, Metrics, Model, Output

from churnops.training.config import BusinessConfig, GateConfig, SearchBudget, TrainingConfig
from churnops_contract.policy import TrainingWindow
from churnops_pipelines.cluster import with_store_access

IMAGE = "ghcr.io/churnops/churnops:0.1.0"
PIPELINE_NAME = "churn-training"
# Parameter defaults come from where each setting is defined.
_TRAIN, _BUDGET, _GATES, _BUSINESS, _WINDOW = TrainingConfig(), SearchBudget(), GateConfig(), BusinessConfig(), TrainingWindow()


def _component(func):  # type: ignore[no-untyped-def]
    """Components run in the ChurnOps image, which already has kfp and the project installed."""
    return dsl.component(base_image=IMAGE, install_kfp_package=False)(func)


@_component
def load_training_data(data_dir: str, store_mode: str, dataset: Output[Dataset]) -> None:
    """Labels joined point-in-time with FeatureService churn_v1 (Feast historical retrieval)."""
    import os
    from pathlib import Path

    from churnops.layout import Layout
    from churnops.training.runs import frame_digest, training_frame
    from churnops_feast.definitions import TRAINING_SERVICE

    frame = training_frame(Layout(Path(data_dir)), store_mode, dict(os.environ))  # type: ignore[arg-type]
    frame.to_parquet(dataset.path, index=False)
    dataset.metadata.update({"rows": len(frame), "sha256": frame_digest(frame), "feature_service": TRAINING_SERVICE, "store": store_mode})


@_component
def validate_training_data(dataset: Input[Dataset], report: Output[Metrics]) -> float:
    """Great Expectations on the joined table: labels and every feature domain."""

    from churnops.data.parquet import read_parquet
    from churnops.data.schema import ENTITY, TIMESTAMP
    from churnops.data.validation import ValidationRun, raw_suites, validate
    from churnops.features.catalog import DOMAINS, features_of
    from churnops.features.validation import feature_suite

    frame = read_parquet(dataset.path)
    run = ValidationRun([validate(frame[[ENTITY, TIMESTAMP, "churned_30d"]].assign(mrr=frame["mrr"]), "labels", raw_suites()["labels"])])
    for domain in DOMAINS:
        cols = [ENTITY, TIMESTAMP, *(f.name for f in features_of(domain))]
        run.reports.append(validate(frame[cols], f"features_{domain}", feature_suite(domain)))
    report.log_metric("pass_rate", run.pass_rate)
    report.log_metric("expectations", run.evaluated)
    print(run.render())
    run.raise_for_failures()
    return run.pass_rate


@_component
def split_data(
    dataset: Input[Dataset],
    holdout_fraction: float,
    recency_half_life_days: float,
    window_days: float,
    calibration_days: float,
    window_reason: str,
    train: Output[Dataset],
    holdout: Output[Dataset],
    window: Output[Artifact],
) -> None:
    """Time-based holdout with a label-horizon gap; then the training window (0 days: that part of it is off)."""
    import json

    from churnops.data.parquet import read_parquet
    from churnops.training.dataset import churn_spec, time_holdout, training_window
    from churnops_contract.policy import TrainingWindow

    spec = churn_spec()
    split = time_holdout(read_parquet(dataset.path), spec, holdout_fraction)
    chosen = TrainingWindow(recency_half_life_days or None, window_days or None, calibration_days or None, window_reason)
    windowed = training_window(split.train, spec, chosen)
    windowed.train.to_parquet(train.path, index=False)
    split.holdout.to_parquet(holdout.path, index=False)
    summary = windowed.describe(spec)
    with open(window.path, "w") as f:  # per training row, in the order of ``train``
        weights, calibration = windowed.weights, windowed.calibration
        json.dump(
            {
                "summary": summary,
                "weights": None if weights is None else weights.tolist(),
                "calibration": None if calibration is None else calibration.tolist(),
            },
            f,
        )
    train.metadata.update(
        {"rows": len(windowed.train), "until": str(split.cutoff), "dropped_for_gap": split.dropped_for_gap, "source": dataset.uri}
    )
    holdout.metadata.update({"rows": len(split.holdout), "from": str(split.cutoff), "source": dataset.uri})
    window.metadata.update({k: v for k, v in summary.items() if v is not None})
    print(f"training window: {json.dumps(summary)}")


@_component
def select_features(train: Input[Dataset], seed: int, max_features: int, selection: Output[Artifact]) -> int:
    """LightGBM gain and mutual information rankings, with a correlation filter."""
    import json

    from churnops.data.parquet import read_parquet
    from churnops.training.config import model_threads
    from churnops.training.dataset import churn_spec, xy
    from churnops.training.selection import select

    spec = churn_spec()
    x, y = xy(read_parquet(train.path), spec)
    chosen = select(x, y, spec, seed, max_features=max_features, threads=model_threads(len(x), min(len(spec.features), max_features)))
    with open(selection.path, "w") as f:
        json.dump(chosen.to_dict(), f)
    selection.metadata.update({"selected": len(chosen.selected), "methods": "lightgbm_gain,mutual_information,correlation_filter"})
    return len(chosen.selected)


@_component
def automl_search(
    train: Input[Dataset],
    selection: Input[Artifact],
    seed: int,
    n_trials: int,
    timeout_s: float,
    n_folds: int,
    candidates: Output[Artifact],
    metrics: Output[Metrics],
) -> float:
    """Optuna TPE search with pruning over the model families; keeps each family's best trial. 0 trials or folds: scaled to the table."""
    import json

    import joblib

    from churnops.data.parquet import read_parquet
    from churnops.training.automl import search
    from churnops.training.config import SearchBudget, plan_search
    from churnops.training.dataset import churn_spec, cv_folds, xy

    frame = read_parquet(train.path)
    with open(selection.path) as f:
        spec = churn_spec().with_features(json.load(f)["selected"])
    x, y = xy(frame, spec)
    budget = SearchBudget(n_trials=n_trials or None, timeout_s=timeout_s or None, n_folds=n_folds or None)
    plan = plan_search(budget, len(x), len(spec.features))
    print(plan.describe())
    folds = cv_folds(frame, spec, plan.n_folds, seed)
    result = search(x, y, spec, folds, plan, seed)
    joblib.dump({"result": result, "folds": folds, "plan": plan}, candidates.path)
    for c in result.ranked():
        metrics.log_metric(f"cv_auc_{c.family}", c.cv_auc)
    metrics.log_metric("trials_completed", result.trials_completed)
    metrics.log_metric("trials_pruned", result.trials_pruned)
    return result.ranked()[0].cv_auc


@_component
def build_ensemble(
    train: Input[Dataset],
    selection: Input[Artifact],
    candidates: Input[Artifact],
    window: Input[Artifact],
    seed: int,
    top_k: int,
    contact_cost: float,
    save_rate: float,
    months_saved: float,
    max_contact_share: float,
    model: Output[Model],
) -> str:
    """Stacking vs blending vs best single model on OOF predictions, calibrated (on the window's latest rows), refit on all rows."""
    import json

    import joblib
    import numpy as np

    from churnops.data.parquet import read_parquet
    from churnops.training.config import BusinessConfig
    from churnops.training.dataset import churn_spec, xy
    from churnops.training.ensemble import fit_final
    from churnops.training.train import decision_threshold, windowed_choice

    frame = read_parquet(train.path)
    with open(selection.path) as f:
        spec = churn_spec().with_features(json.load(f)["selected"])
    with open(window.path) as f:
        chosen = json.load(f)
    weights = None if chosen["weights"] is None else np.asarray(chosen["weights"], dtype=float)
    recent = None if chosen["calibration"] is None else np.asarray(chosen["calibration"], dtype=bool)
    found = joblib.load(candidates.path)
    x, y = xy(frame, spec)
    threads = found["plan"].threads
    choice = windowed_choice(found["result"].ranked(), x, y, found["folds"], spec, seed, threads, top_k, weights, recent)
    fitted = fit_final(choice, x, y, spec, seed, threads, weights)
    business = BusinessConfig(contact_cost, save_rate, months_saved, max_contact_share)
    decision = decision_threshold(choice, frame, spec, business, recent)
    print(f"decision threshold: {decision.note}")
    joblib.dump({"model": fitted, "threshold": decision.threshold, "decision": decision, "oof_scores": choice.oof_scores}, model.path)
    model.metadata.update(
        {
            "ensemble": choice.combiner.kind,
            "members": ",".join(fitted.families),
            "threshold": decision.threshold,
            "threshold_rule": decision.rule,
            "train": train.uri,
            "calibration_rows": choice.calibration_rows or len(frame),
        }
    )
    return choice.combiner.kind


@_component
def evaluate_model(
    model: Input[Model],
    holdout: Input[Dataset],
    tracking_uri: str,
    artifact_location: str,
    contact_cost: float,
    save_rate: float,
    months_saved: float,
    max_contact_share: float,
    max_fairness_gap: float,
    evaluation: Output[Artifact],
    metrics: Output[Metrics],
) -> float:
    """Holdout metrics, business value, fairness, and a bootstrap comparison with the champion."""
    import json
    from dataclasses import asdict

    import joblib

    from churnops.data.parquet import read_parquet
    from churnops.training import registry
    from churnops.training.config import BusinessConfig
    from churnops.training.dataset import churn_spec
    from churnops.training.evaluation import bootstrap_auc_delta
    from churnops.training.train import holdout_evaluation

    bundle = joblib.load(model.path)
    frame = read_parquet(holdout.path)
    spec = churn_spec()
    business = BusinessConfig(contact_cost, save_rate, months_saved, max_contact_share)
    y = frame[spec.target_column].to_numpy()
    ev, p = holdout_evaluation(bundle["model"], bundle["decision"], frame, spec, business, max_fairness_gap)
    reg = registry.config_for(tracking_uri, artifact_location or None)
    champion = registry.alias_version(reg, registry.CHAMPION)
    comparison = None
    if champion is not None:
        comparison = asdict(bootstrap_auc_delta(y, p, registry.load_model(reg, champion).predict_proba(frame), champion))
    with open(evaluation.path, "w") as f:
        json.dump({"evaluation": ev.to_dict(), "comparison": comparison}, f, default=str)
    for k, v in ev.headline().items():
        metrics.log_metric(k, v)
    return ev.roc_auc


@_component
def quality_gates(
    evaluation: Input[Artifact],
    min_auc: float,
    max_brier: float,
    max_fairness_gap: float,
    max_auc_regression: float,
    max_calibration_drift: float,
    max_calibration_slope_drift: float,
    gate_report: Output[Artifact],
) -> str:
    """Fail the run, with the reasons, when any gate fails; the results go to ``gate_report`` for the model card.

    A calibration limit of 0 leaves that gate off (a band of 0 would refuse every model).
    """
    import json
    from dataclasses import asdict

    from churnops.training.config import GateConfig
    from churnops.training.evaluation import Comparison, Evaluation
    from churnops.training.gates import check_gates, enforce

    with open(evaluation.path) as f:
        doc = json.load(f)
    ev = Evaluation(**doc["evaluation"])
    comparison = Comparison(**doc["comparison"]) if doc["comparison"] else None
    gate_cfg = GateConfig(
        min_auc=min_auc,
        max_brier=max_brier,
        max_fairness_gap=max_fairness_gap,
        max_auc_regression=max_auc_regression,
        max_calibration_drift=max_calibration_drift or None,
        max_calibration_slope_drift=max_calibration_slope_drift or None,
    )
    results = check_gates(ev, gate_cfg, comparison)
    for r in results:
        print(("PASS " if r.passed else "FAIL ") + f"{r.name}: {r.reason}")
    with open(gate_report.path, "w") as f:
        json.dump([asdict(r) for r in results], f)
    enforce(results)
    return "passed"


@_component
def register_model(
    model: Input[Model],
    holdout: Input[Dataset],
    evaluation: Input[Artifact],
    gate_report: Input[Artifact],
    dataset: Input[Dataset],
    tracking_uri: str,
    artifact_location: str,
    gates: str,
) -> str:
    """Log the run to MLflow (with the evaluation and the gates as applied) and register the model as the new challenger."""
    import json
    import tempfile
    from pathlib import Path

    import joblib

    from churnops.data.parquet import read_parquet
    from churnops.training import registry
    from churnops.training.train import log_reference_profile

    bundle = joblib.load(model.path)
    with open(evaluation.path) as f:
        doc = json.load(f)
    ev = doc["evaluation"]
    with open(gate_report.path) as f:
        applied = json.load(f)
    # the same record the single-process path logs: evaluation/training/evaluation.json on the run
    record = Path(tempfile.mkdtemp()) / "training"
    record.mkdir()
    (record / "evaluation.json").write_text(json.dumps({**doc, "gates": applied}, default=str))
    rows = read_parquet(holdout.path)
    example = rows[bundle["model"].feature_names].head(20)
    metrics = {k: ev[k] for k in ("roc_auc", "pr_auc", "precision", "recall", "f1", "brier", "log_loss")}
    tags = {
        "feature_service": str(dataset.metadata.get("feature_service")),
        "dataset_sha256": str(dataset.metadata.get("sha256")),
        "dataset_uri": dataset.uri,
        "gates": gates,
    }
    # an explicit artifact location: without one MLflow writes into ./mlruns of the component's directory
    reg = registry.config_for(tracking_uri, artifact_location or None)
    registered = registry.log_and_register(
        reg,
        bundle["model"],
        example,
        {"threshold": bundle["threshold"], "threshold_rule": bundle["decision"].rule, "ensemble": bundle["model"].combiner.kind},
        metrics,
        tags,
        {"evaluation": record},
    )
    log_reference_profile(bundle["model"], rows, registered.run_id, reg.tracking_uri)  # what monitoring compares live inputs with
    return registered.version


@_component
def write_model_card(
    evaluation: Input[Artifact],
    gate_report: Input[Artifact],
    selection: Input[Artifact],
    dataset: Input[Dataset],
    window: Input[Artifact],
    version: str,
    tracking_uri: str,
    artifact_location: str,
    card: Output[HTML],
    card_markdown: Output[Markdown],
) -> None:
    """Model card (Markdown and HTML with plots) for the registered version."""
    import json
    import tempfile
    from pathlib import Path

    from churnops.training import registry
    from churnops.training.evaluation import Comparison, Evaluation
    from churnops.training.gates import GateResult
    from churnops.training.model_card import CardInputs, plot_evaluation, render_html, render_markdown

    with open(evaluation.path) as f:
        doc = json.load(f)
    with open(selection.path) as f:
        chosen = json.load(f)
    with open(gate_report.path) as f:
        gates = [GateResult(**g) for g in json.load(f)]  # as applied, with the run's thresholds
    with open(window.path) as f:
        training_window = json.load(f)["summary"]
    ev = Evaluation(**doc["evaluation"])
    comparison = Comparison(**doc["comparison"]) if doc["comparison"] else None
    plots = plot_evaluation(ev, chosen["importance"], Path(tempfile.mkdtemp()))
    lineage = {
        "feature_service": dataset.metadata.get("feature_service"),
        "dataset_sha256": dataset.metadata.get("sha256"),
        "dataset": dataset.uri,
    }
    inputs = CardInputs(
        "churn-classifier",
        version,
        ev,
        gates,
        comparison,
        lineage,
        {"features_selected": len(chosen["selected"]), "training_window": training_window, "holdout_calibration": ev.calibration_fit},
        plots,
    )
    text = render_markdown(inputs)
    Path(card_markdown.path).write_text(text)
    Path(card.path).write_text(render_html(text, plots))
    # the card travels with the registered version's run too, as the single-process path does
    reg = registry.config_for(tracking_uri, artifact_location or None)
    run_id = registry.version_info(reg, version)["run_id"]
    folder = Path(tempfile.mkdtemp())
    (folder / "model_card.md").write_text(text)
    (folder / "model_card.html").write_text(render_html(text, plots))
    for name in ("model_card.md", "model_card.html"):
        registry.log_files(reg, run_id, {"model_card": folder / name})


@dsl.pipeline(
    name=PIPELINE_NAME,
    description="Feast features -> validation -> split -> selection -> AutoML -> ensemble -> evaluation -> gates -> MLflow -> model card",
)
def churn_training(
    data_dir: str = "/data",
    store_mode: str = "cluster",
    tracking_uri: str = "http://mlflow.churnops:5000",
    artifact_location: str = "",  # empty: the tracking server's default (a SQLite store keeps artifacts next to its file)
    seed: int = _TRAIN.seed,
    holdout_fraction: float = _TRAIN.holdout_fraction,
    max_features: int = _TRAIN.max_features,
    n_trials: int = _BUDGET.n_trials or 0,  # 0: scaled to the table (churnops.training.config.plan_search)
    timeout_s: float = _BUDGET.timeout_s or 0.0,
    n_folds: int = _BUDGET.n_folds or 0,  # 0: scaled to the table
    top_k: int = _TRAIN.top_k,
    min_auc: float = _GATES.min_auc,
    max_brier: float = _GATES.max_brier,
    max_fairness_gap: float = _GATES.max_fairness_gap,
    max_auc_regression: float = _GATES.max_auc_regression,
    max_calibration_drift: float = _GATES.max_calibration_drift or 0.0,  # 0: not gated
    max_calibration_slope_drift: float = _GATES.max_calibration_slope_drift or 0.0,  # 0: not gated
    # The training window (churnops_contract.policy.TrainingWindow); 0 leaves a part off. A retraining run
    # started by the policy after a calibration or drift breach sets them and says why in window_reason.
    recency_half_life_days: float = _WINDOW.recency_half_life_days or 0.0,
    window_days: float = _WINDOW.window_days or 0.0,
    calibration_days: float = _WINDOW.calibration_days or 0.0,
    window_reason: str = _WINDOW.reason,
    contact_cost: float = _BUSINESS.contact_cost,
    save_rate: float = _BUSINESS.save_rate,
    months_saved: float = _BUSINESS.months_saved,
    max_contact_share: float = _BUSINESS.max_contact_share,
) -> None:
    data = with_store_access(load_training_data(data_dir=data_dir, store_mode=store_mode))
    checked = validate_training_data(dataset=data.outputs["dataset"])
    split = split_data(
        dataset=data.outputs["dataset"],
        holdout_fraction=holdout_fraction,
        recency_half_life_days=recency_half_life_days,
        window_days=window_days,
        calibration_days=calibration_days,
        window_reason=window_reason,
    ).after(checked)
    chosen = select_features(train=split.outputs["train"], seed=seed, max_features=max_features)
    searched = automl_search(
        train=split.outputs["train"],
        selection=chosen.outputs["selection"],
        seed=seed,
        n_trials=n_trials,
        timeout_s=timeout_s,
        n_folds=n_folds,
    )
    built = build_ensemble(
        train=split.outputs["train"],
        selection=chosen.outputs["selection"],
        candidates=searched.outputs["candidates"],
        window=split.outputs["window"],
        seed=seed,
        top_k=top_k,
        contact_cost=contact_cost,
        save_rate=save_rate,
        months_saved=months_saved,
        max_contact_share=max_contact_share,
    )
    evaluated = evaluate_model(
        model=built.outputs["model"],
        holdout=split.outputs["holdout"],
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        contact_cost=contact_cost,
        save_rate=save_rate,
        months_saved=months_saved,
        max_contact_share=max_contact_share,
        max_fairness_gap=max_fairness_gap,
    )
    with_store_access(evaluated)
    gated = quality_gates(
        evaluation=evaluated.outputs["evaluation"],
        min_auc=min_auc,
        max_brier=max_brier,
        max_fairness_gap=max_fairness_gap,
        max_auc_regression=max_auc_regression,
        max_calibration_drift=max_calibration_drift,
        max_calibration_slope_drift=max_calibration_slope_drift,
    )
    registered = register_model(
        model=built.outputs["model"],
        holdout=split.outputs["holdout"],
        evaluation=evaluated.outputs["evaluation"],
        gate_report=gated.outputs["gate_report"],
        dataset=data.outputs["dataset"],
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
        gates=gated.outputs["Output"],
    )
    with_store_access(registered)
    carded = write_model_card(
        evaluation=evaluated.outputs["evaluation"],
        gate_report=gated.outputs["gate_report"],
        selection=chosen.outputs["selection"],
        dataset=data.outputs["dataset"],
        window=split.outputs["window"],
        version=registered.output,
        tracking_uri=tracking_uri,
        artifact_location=artifact_location,
    )
    with_store_access(carded)


def compile_pipeline(path: str) -> None:
    compiler.Compiler().compile(churn_training, package_path=path)
