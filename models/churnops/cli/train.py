"""``churnops train``: AutoML on the platform's Feast features or on your own table, gates, MLflow."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from churnops.cli.common import (
    DIALECT_OPTIONS,
    add_dialect_args,
    add_economics_args,
    add_settings_arg,
    add_store_args,
    add_tracking_arg,
    apply_settings,
    csv_dialect,
    economics,
    layout,
    registry_config,
)
from churnops.errors import CheckFailedError, InvalidInputError
from churnops.training.config import GateConfig, SearchBudget, TrainingConfig
from churnops_contract.registry import CHALLENGER

if TYPE_CHECKING:
    from churnops.training.train import TrainingOutcome


def add_training_args(p: argparse.ArgumentParser, budget: SearchBudget, seed: bool = True) -> None:
    """Search budget, gates and economics; ``budget`` gives the defaults (the demo uses a smaller one)."""
    gates, minutes = GateConfig(), (budget.timeout_s or 0) / 60
    if seed:  # the demo shares --seed with the data generator
        p.add_argument("--seed", type=int, default=TrainingConfig().seed)
    trials = budget.n_trials or "scaled to the table's size; the plan and its expected time are printed before the search"
    p.add_argument("--trials", type=int, default=budget.n_trials, help=f"AutoML trial budget (default: {trials})")
    p.add_argument("--budget-minutes", type=float, default=minutes, help=f"AutoML wall-clock budget, 0 for none (default {minutes:g})")
    p.add_argument("--min-auc", type=float, default=gates.min_auc, help=f"quality gate on holdout ROC-AUC (default {gates.min_auc:g})")
    p.add_argument(
        "--max-brier", type=float, default=gates.max_brier, help=f"quality gate on holdout Brier score (default {gates.max_brier:g})"
    )
    p.add_argument(
        "--max-fairness-gap",
        type=float,
        default=gates.max_fairness_gap,
        help=f"quality gate on the largest recall gap across the gated fairness column (default {gates.max_fairness_gap:g})",
    )
    p.add_argument(
        "--per-segment-thresholds",
        action="store_true",
        default=gates.per_segment_thresholds,
        help="also evaluate equal opportunity at per-segment thresholds (a threshold per segment, chosen on training rows, "
        "that finds each segment's churners at the overall recall within the contact capacity) and report it in the card; "
        "evaluated and reported only: the served model applies its one threshold, which the fairness gate judges",
    )
    p.add_argument(
        "--max-auc-regression",
        type=float,
        default=gates.max_auc_regression,
        help=f"AUC a challenger may trail the champion by (default {gates.max_auc_regression:g})",
    )
    add_tracking_arg(p)
    add_economics_args(p)


# option -> (lowest, highest) it may take; a limit outside its range would make a gate always pass or always fail
LIMITS = {
    "min_auc": (0.0, 1.0),
    "max_brier": (0.0, 1.0),
    "max_fairness_gap": (0.0, 1.0),
    "max_auc_regression": (0.0, 1.0),
}
# options that describe the user's own table; without --data they would be silently ignored
OWN_DATA_OPTIONS = (
    "id_column",
    "time_column",
    "target_column",
    "protected_column",
    "segment_column",
    "gate_segment",
    "revenue_column",
    "horizon_days",
    *DIALECT_OPTIONS,
)


def check_limits(args: argparse.Namespace) -> None:
    for dest, (low, high) in LIMITS.items():
        value = getattr(args, dest)
        if not low <= value <= high:
            raise InvalidInputError(f"must be between {low:g} and {high:g}, got {value:g}", field=f"--{dest.replace('_', '-')}")
    if args.horizon_days < 0:
        raise InvalidInputError(f"must be 0 or more days, got {args.horizon_days}", field="--horizon-days")


def training_config(args: argparse.Namespace) -> TrainingConfig:
    gates = replace(
        GateConfig(),
        min_auc=args.min_auc,
        max_brier=args.max_brier,
        max_fairness_gap=args.max_fairness_gap,
        per_segment_thresholds=args.per_segment_thresholds,
        max_auc_regression=args.max_auc_regression,
    )
    business = economics(args)
    # 0 minutes: no time cap, only the trial budget (fully reproducible runs)
    budget = SearchBudget(n_trials=args.trials, timeout_s=args.budget_minutes * 60 if args.budget_minutes > 0 else None)
    return TrainingConfig(seed=args.seed, budget=budget, gates=gates, business=business)


def print_outcome(outcome: TrainingOutcome) -> int:
    """Print the outcome; the exit code is non-zero when a gate failed (a rejected candidate was registered)."""
    print(json.dumps(outcome.summary, indent=2, default=str))
    for note in outcome.evaluation.fairness.get("notes", []):
        print(f"note: fairness: {note}")
    failed = outcome.summary.get("rejected_gates")
    status = f"as a rejected candidate (failed {', '.join(failed)}; no alias, cannot be promoted)" if failed else f"as '{CHALLENGER}'"
    print(
        f"\nRegistered {outcome.summary['model_uri']} {status}: holdout AUC {outcome.evaluation.roc_auc:.3f}, "
        f"Brier {outcome.evaluation.brier:.3f}. Model card: {outcome.card}"
    )
    threshold_note = outcome.summary.get("threshold_rule")
    if threshold_note:
        print(f"Decision threshold: {threshold_note}")
    if failed:
        print(
            f"quality gates failed ({', '.join(failed)}): registered v{outcome.summary['model_version']} as a rejected candidate "
            f"for inspection only; see {outcome.card}",
            file=sys.stderr,
        )
        return CheckFailedError.exit_code
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="AutoML training, evaluation, quality gates and MLflow registration")
    add_store_args(train)
    add_training_args(train, SearchBudget())
    add_settings_arg(train)
    train.add_argument(
        "--register-rejected",
        action="store_true",
        help="when a quality gate fails, register the model anyway as a rejected candidate for inspection: tagged with the "
        "failed gates, never given the challenger or champion alias (no rollout picks it up, promotion refuses it)",
    )
    own = train.add_argument_group("bring your own data (instead of the platform's Feast features)")
    own.add_argument("--data", type=Path, default=None, help="CSV or Parquet file to train on")
    own.add_argument("--id-column")
    own.add_argument("--time-column")
    own.add_argument("--target-column")
    own.add_argument(
        "--protected-column",
        default=None,
        help="a protected attribute (e.g. age band): the fairness gate judges the recall gap across its values; "
        "measured, never used as a feature",
    )
    own.add_argument(
        "--segment-column",
        default=None,
        help="a business segment (e.g. contract type): fairness across its values is reported in the card, not gated",
    )
    own.add_argument("--gate-segment", action="store_true", help="gate the --segment-column's recall gap (only without --protected-column)")
    own.add_argument("--revenue-column", default=None, help="monthly revenue per row, for business metrics")
    own.add_argument("--horizon-days", type=int, default=30, help="label horizon: gap kept before the holdout")
    add_dialect_args(train)
    train.set_defaults(func=run)
    train.set_defaults(defaults={a.dest: a.default for a in train._actions})


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.training import runs

    apply_settings(args, args.defaults, ("search", "gates", "economics"))
    check_limits(args)
    cfg, reg = training_config(args), registry_config(args)
    if args.data is None:
        for dest in OWN_DATA_OPTIONS:  # the platform's table has its own columns, segment and format
            if getattr(args, dest) != args.defaults[dest]:
                raise InvalidInputError("applies to your own table: give --data too", field=f"--{dest.replace('_', '-')}")
        return print_outcome(runs.train_platform(layout(args), args.mode, env, cfg, reg, args.register_rejected))
    for flag in ("id_column", "time_column", "target_column"):
        if getattr(args, flag) is None:
            raise InvalidInputError("required with --data", field=f"--{flag.replace('_', '-')}")
    dialect = csv_dialect(args)
    own = runs.OwnData(
        args.data,
        args.id_column,
        args.time_column,
        args.target_column,
        args.segment_column,
        args.revenue_column,
        args.horizon_days,
        args.protected_column,
        args.gate_segment,
        dialect,
    )
    return print_outcome(runs.train_own_data(own, layout(args).reports / "training", cfg, reg, args.register_rejected))
