"""Training end to end on one table: split, select, search, ensemble, evaluate, gate, register, card.

The KFP pipeline runs the same steps as separate components; this module is
the single-process path (CLI, bring-your-own-data, DVC).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from churnops.monitoring.profile import build_profile, log_profile
from churnops.training import automl, ensemble, equal_opportunity, registry, selection
from churnops.training.config import BusinessConfig, SearchPlan, TrainingConfig, plan_search
from churnops.training.dataset import DatasetSpec, Split, WindowedTraining, cv_folds, time_holdout, training_window, xy
from churnops.training.evaluation import Comparison, Evaluation, ThresholdChoice, bootstrap_auc_delta, choose_threshold, evaluate, fairness
from churnops.training.gates import GateResult, check_gates
from churnops.training.model_card import CardInputs, clear_outputs, plot_evaluation, write_card
from churnops.training.refusal import FairnessColumns, ModelRefusedError
from churnops_contract.policy import TrainingWindow

log = logging.getLogger(__name__)


@dataclass
class TrainingOutcome:
    evaluation: Evaluation
    gates: list[GateResult]
    comparison: Comparison | None
    registered: registry.Registered | None
    card: Path | None
    summary: dict[str, Any]


class SearchProgress(Protocol):
    """Told the plan before the search starts, then each finished trial."""

    def planned(self, plan: SearchPlan) -> None: ...

    def trial(self, number: int, best_cv_auc: float) -> None: ...


@dataclass
class FittedModel:
    model: ensemble.ChurnEnsemble
    spec: DatasetSpec
    split: Split
    decision: ThresholdChoice
    selection: selection.Selection
    search: automl.SearchResult
    choice: ensemble.EnsembleChoice
    plan: SearchPlan
    seconds: float  # selection, search, ensemble and refit
    window: WindowedTraining | None = None  # the training window applied to ``split.train`` (None: every row)

    @property
    def threshold(self) -> float:
        return self.decision.threshold


def fit(frame: pd.DataFrame, spec: DatasetSpec, cfg: TrainingConfig, progress: SearchProgress | None = None) -> FittedModel:
    """Everything up to a fitted, calibrated model and its decision threshold (training rows only).

    ``cfg.window`` narrows the training side of the time split (never the holdout or its label gap): recency
    weights for the member fits, older rows dropped, the calibrator fitted on the most recent rows.
    """
    started = time.perf_counter()
    whole = time_holdout(frame, spec, cfg.holdout_fraction)
    windowed = training_window(whole.train, spec, cfg.window)
    split = replace(whole, train=windowed.train)
    plan = plan_search(cfg.budget, len(split.train), min(len(spec.features), cfg.max_features))
    if progress is not None:
        progress.planned(plan)
    x_all, y = xy(split.train, spec)
    chosen = selection.select(x_all, y, spec, cfg.seed, max_features=cfg.max_features, threads=plan.threads)
    spec_sel = spec.with_features(chosen.selected)
    x, _ = xy(split.train, spec_sel)
    folds = cv_folds(split.train, spec_sel, plan.n_folds, cfg.seed)
    result = automl.search(x, y, spec_sel, folds, plan, cfg.seed, progress.trial if progress is not None else None)
    choice = windowed_choice(
        result.ranked(), x, y, folds, spec_sel, cfg.seed, plan.threads, cfg.top_k, windowed.weights, windowed.calibration
    )
    model = ensemble.fit_final(choice, x, y, spec_sel, cfg.seed, plan.threads, windowed.weights)
    decision = decision_threshold(choice, split.train, spec, cfg.business, windowed.calibration)
    return FittedModel(model, spec_sel, split, decision, chosen, result, choice, plan, time.perf_counter() - started, windowed)


def windowed_choice(
    ranked: list[automl.Candidate],
    x: pd.DataFrame,
    y: np.ndarray,
    folds: list[tuple[np.ndarray, np.ndarray]],
    spec: DatasetSpec,
    seed: int,
    threads: int,
    top_k: int,
    weights: np.ndarray | None,
    calibration: np.ndarray | None,
) -> ensemble.EnsembleChoice:
    """The ensemble (members, combiner, calibrator) under a training window; the KFP pipeline calls it too.

    With recency ``weights`` the members' OOF scores are recomputed from weighted fold fits (the final
    members are fitted weighted); with a ``calibration`` mask the calibrator is refitted on those rows' OOF scores.
    """
    if weights is not None:
        ranked = ensemble.reweighted(ensemble.pool(ranked, top_k)[0], x, y, folds, spec, seed, threads, weights)
    choice = ensemble.choose(ranked, y, folds, top_k)
    return choice if calibration is None else ensemble.recalibrate(choice, y, calibration)


def _revenue_and_segments(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[np.ndarray | None, np.ndarray | None]:
    revenue = frame[spec.revenue_column].to_numpy(float) if spec.revenue_column else None
    segments = frame[spec.segment_column].to_numpy() if spec.segment_column else None
    return revenue, segments


def decision_threshold(
    choice: ensemble.EnsembleChoice,
    train: pd.DataFrame,
    spec: DatasetSpec,
    business: BusinessConfig,
    recent: np.ndarray | None = None,
) -> ThresholdChoice:
    """The campaign threshold and its rule, chosen on the training rows' calibrated OOF scores.

    With ``recent`` (a mask of the calibration rows) on those rows only: the capacity and the savings
    the threshold is chosen for are the current population's.
    """
    rows = np.ones(len(train), dtype=bool) if recent is None else recent
    revenue, _ = _revenue_and_segments(train[rows], spec)
    return choose_threshold(train[spec.target_column].to_numpy(dtype=np.int64)[rows], choice.oof[rows], revenue, business)


def holdout_evaluation(
    model: ensemble.ChurnEnsemble,
    threshold: ThresholdChoice,
    holdout: pd.DataFrame,
    spec: DatasetSpec,
    business: BusinessConfig,
    max_gap: float,
) -> tuple[Evaluation, np.ndarray]:
    """Evaluation of ``model`` on the holdout rows, and its scores there."""
    y = holdout[spec.target_column].to_numpy(dtype=np.int64)
    p = model.predict_proba(holdout)
    revenue, segments = _revenue_and_segments(holdout, spec)
    return evaluate(y, p, threshold, revenue, segments, business, max_gap), p


def assess(
    fitted: FittedModel, cfg: TrainingConfig, champion: ensemble.ChurnEnsemble | None, champion_version: str | None
) -> tuple[Evaluation, Comparison | None, list[GateResult]]:
    """Evaluate on the holdout, compare with the champion, and apply the gates (no side effects)."""
    holdout = fitted.split.holdout
    ev, p = holdout_evaluation(fitted.model, fitted.decision, holdout, fitted.spec, cfg.business, cfg.gates.max_fairness_gap)
    comparison = None
    if champion is not None and champion_version is not None:
        y = holdout[fitted.spec.target_column].to_numpy(dtype=np.int64)
        comparison = bootstrap_auc_delta(y, p, champion.predict_proba(holdout), champion_version, seed=cfg.seed)
    return ev, comparison, check_gates(ev, cfg.gates, comparison)


def summarize(fitted: FittedModel, ev: Evaluation) -> dict[str, Any]:
    s = fitted.search
    return {
        "training_rows": len(fitted.split.train),
        "holdout_rows": len(fitted.split.holdout),
        "holdout_from": str(fitted.split.cutoff),
        "rows_dropped_for_label_gap": fitted.split.dropped_for_gap,
        "features_selected": len(fitted.selection.selected),
        "search_plan": fitted.plan.describe(),
        "trials": {
            "completed": s.trials_completed,
            "pruned": s.trials_pruned,
            "failed": s.trials_failed,
            "stopped_early": s.stopped_early,
            "seconds": round(s.seconds, 1),
        },
        "training_seconds": {"expected": round(fitted.plan.expected_s, 1), "actual": round(fitted.seconds, 1)},
        "cv_auc_by_family": {c.family: round(c.cv_auc, 4) for c in s.ranked()},
        "ensemble": {"kind": fitted.choice.combiner.kind, "members": fitted.model.families, "oof_auc": fitted.choice.oof_scores},
        "threshold": fitted.threshold,
        "threshold_rule": fitted.decision.note,
        "training_window": (fitted.window or training_window(fitted.split.train, fitted.spec, TrainingWindow())).describe(fitted.spec),
        "holdout": ev.headline(),
        "holdout_calibration": ev.calibration_fit,
    }


def train_and_register(
    frame: pd.DataFrame,
    spec: DatasetSpec,
    cfg: TrainingConfig,
    reg: registry.RegistryConfig,
    out_dir: Path,
    lineage: dict[str, Any],
    progress: SearchProgress | None = None,
    fairness_columns: FairnessColumns | None = None,
    register_rejected: bool = False,
) -> TrainingOutcome:
    """Train; if every gate passes, log to MLflow, register as challenger and write the model card.

    The evaluation and the card are written to ``out_dir`` before any gate is enforced. A failed gate
    raises ``ModelRefusedError`` (a ``QualityGateError``) naming them and the settings that change the
    outcome; with ``register_rejected`` the model is registered instead as a rejected candidate for
    inspection, with no alias. ``fairness_columns`` says what the spec's segment column is (the platform's,
    a protected attribute or a business segment), which further columns are reported, and which one
    per-segment thresholds go by. Outputs of an earlier run in ``out_dir`` are removed first, so that
    nothing of it is read or logged as this run's.
    """
    columns = fairness_columns or FairnessColumns(thresholds_by=spec.segment_column)
    clear_outputs(out_dir)
    fitted = fit(frame, spec, cfg, progress)
    champion_version = registry.alias_version(reg, registry.CHAMPION)
    champion = registry.load_model(reg, champion_version) if champion_version else None
    ev, comparison, gates = assess(fitted, cfg, champion, champion_version)
    summary = summarize(fitted, ev)
    holdout, segment = fitted.split.holdout, fitted.spec.segment_column
    per_segment: dict[str, Any] | None = None
    reported: dict[str, dict[str, Any]] = {}
    by = columns.thresholds_by if cfg.gates.per_segment_thresholds else None  # a business segment, never a protected attribute
    if columns.reported or by:
        y_hold, p_hold = holdout[spec.target_column].to_numpy(dtype=np.int64), fitted.model.predict_proba(holdout)
        gap = cfg.gates.max_fairness_gap
        reported = {c: fairness(y_hold, p_hold, holdout[c].to_numpy(), fitted.threshold, gap) for c in columns.reported}
        if by:
            train = fitted.split.train  # thresholds from the training rows' out-of-fold scores, never the holdout
            choice = equal_opportunity.choose_segment_thresholds(
                train[spec.target_column].to_numpy(dtype=np.int64),
                fitted.choice.oof,
                train[by].to_numpy(),
                fitted.threshold,
                cfg.business.max_contact_share,
            )
            per_segment = {"column": by, **equal_opportunity.holdout_report(choice, y_hold, p_hold, holdout[by].to_numpy(), gap)}
    fairness_info = {
        "fairness_column": segment,
        "fairness_role": columns.role,
        "fairness_gated": cfg.gates.gate_fairness,
        "segment_thresholds": per_segment,
        "reported_segments": reported,
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation_path = out_dir / "evaluation.json"
    evaluation_path.write_text(
        json.dumps(
            {"evaluation": ev.to_dict(), "gates": [asdict(g) for g in gates], "summary": summary, "fairness": fairness_info},
            indent=2,
            default=str,
        )
        + "\n"
    )
    (out_dir / "metrics.json").write_text(json.dumps({**ev.headline(), "gates_passed": all(g.passed for g in gates)}, indent=2) + "\n")
    (out_dir / "selection.json").write_text(json.dumps(fitted.selection.to_dict(), indent=2) + "\n")
    plots = plot_evaluation(ev, fitted.selection.importance, out_dir)
    training_info = {
        k: summary[k]
        for k in (
            "training_rows",
            "holdout_rows",
            "holdout_from",
            "features_selected",
            "search_plan",
            "trials",
            "cv_auc_by_family",
            "ensemble",
            "threshold",
            "training_window",
            "holdout_calibration",
        )
    }

    def card_inputs(version: str | None, card_lineage: dict[str, Any]) -> CardInputs:
        return CardInputs(
            reg.model_name,
            version,
            ev,
            gates,
            comparison,
            card_lineage,
            training_info,
            plots,
            segment,
            cfg.gates.gate_fairness,
            per_segment,
            reported,
        )

    card_md, _ = write_card(card_inputs(None, lineage), out_dir)
    failed = tuple(g.name for g in gates if not g.passed)
    if failed and not register_rejected:
        raise ModelRefusedError(gates, evaluation_path, card_md, segment, columns.role)

    params = {
        "seed": cfg.seed,
        "n_trials": fitted.plan.n_trials,
        "n_folds": fitted.plan.n_folds,
        "timeout_s": fitted.plan.timeout_s,
        "families": list(fitted.plan.families),
        "max_features": cfg.max_features,
        "ensemble": fitted.choice.combiner.kind,
        "threshold": fitted.threshold,
        "threshold_rule": fitted.decision.rule,
    }
    metrics = {**ev.headline(), **{f"cv_auc_{k}": v for k, v in summary["cv_auc_by_family"].items()}}
    if comparison is not None:
        metrics["delta_auc_vs_champion"] = comparison.delta_auc
    tags = {k: str(v) for k, v in lineage.items()}
    example = fitted.split.holdout[list(fitted.spec.features)].head(20)
    registered = registry.log_and_register(reg, fitted.model, example, params, metrics, tags, {"evaluation": out_dir}, failed)
    log_reference_profile(fitted.model, fitted.split.holdout, registered.run_id, reg.tracking_uri)
    card, page = write_card(
        card_inputs(registered.version, {**lineage, "mlflow_run": registered.run_id, "model_sha256": registered.sha256}), out_dir
    )
    # the card as registered (with its version number) travels with the run, beside the pre-registration one
    for path in (card, page):
        registry.log_files(reg, registered.run_id, {"model_card": path})
    rejected = {"rejected_gates": list(failed)} if failed else {}
    return TrainingOutcome(
        ev,
        gates,
        comparison,
        registered,
        card,
        {**summary, "model_version": registered.version, "model_uri": registered.model_uri, **rejected},
    )


def log_reference_profile(model: ensemble.ChurnEnsemble, holdout: pd.DataFrame, run_id: str, tracking_uri: str) -> None:
    """The monitoring reference of a version: its features and calibrated scores on the holdout rows.

    Holdout rather than training rows: in-sample scores are sharper than any live score
    would be, and would read as score drift from the first day of serving.
    """
    categorical = set(model.categorical)
    numeric = [f for f in model.feature_names if f not in categorical]
    profile = build_profile(holdout, model.predict_proba(holdout), numeric, [f for f in model.feature_names if f in categorical])
    log_profile(profile, run_id, tracking_uri)


def shuffled(frame: pd.DataFrame, spec: DatasetSpec, seed: int) -> pd.DataFrame:
    """The same table with the target permuted (a model must not learn from it)."""
    out = frame.copy()
    out[spec.target_column] = np.random.default_rng(seed).permutation(out[spec.target_column].to_numpy())
    return out
