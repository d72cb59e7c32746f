"""``churnops train``: AutoML on the platform's Feast features or on your own table, gates, MLflow."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from churnops.cli.common import (
    add_economics_args,
    add_settings_arg,
    add_store_args,
    add_tracking_arg,
    apply_settings,
    economics,
    layout,
    registry_config,
)
from churnops.errors import InvalidInputError
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
        help=f"quality gate on the largest segment recall gap (default {gates.max_fairness_gap:g})",
    )
    p.add_argument(
        "--max-auc-regression",
        type=float,
        default=gates.max_auc_regression,
        help=f"AUC a challenger may trail the champion by (default {gates.max_auc_regression:g})",
    )
    add_tracking_arg(p)
    add_economics_args(p)


def training_config(args: argparse.Namespace) -> TrainingConfig:
    gates = replace(
        GateConfig(),
        min_auc=args.min_auc,
        max_brier=args.max_brier,
        max_fairness_gap=args.max_fairness_gap,
        max_auc_regression=args.max_auc_regression,
    )
    business = economics(args)
    # 0 minutes: no time cap, only the trial budget (fully reproducible runs)
    budget = SearchBudget(n_trials=args.trials, timeout_s=args.budget_minutes * 60 if args.budget_minutes > 0 else None)
    return TrainingConfig(seed=args.seed, budget=budget, gates=gates, business=business)


def print_outcome(outcome: TrainingOutcome) -> None:
    print(json.dumps(outcome.summary, indent=2, default=str))
    print(
        f"\nRegistered {outcome.summary['model_uri']} as '{CHALLENGER}': holdout AUC {outcome.evaluation.roc_auc:.3f}, "
        f"Brier {outcome.evaluation.brier:.3f}. Model card: {outcome.card}"
    )
    threshold_note = outcome.summary.get("threshold_rule")
    if threshold_note:
        print(f"Decision threshold: {threshold_note}")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser("train", help="AutoML training, evaluation, quality gates and MLflow registration")
    add_store_args(train)
    add_training_args(train, SearchBudget())
    add_settings_arg(train)
    own = train.add_argument_group("bring your own data (instead of the platform's Feast features)")
    own.add_argument("--data", type=Path, default=None, help="CSV or Parquet file to train on")
    own.add_argument("--id-column")
    own.add_argument("--time-column")
    own.add_argument("--target-column")
    own.add_argument("--segment-column", default=None, help="report fairness across this column's values")
    own.add_argument("--revenue-column", default=None, help="monthly revenue per row, for business metrics")
    own.add_argument("--horizon-days", type=int, default=30, help="label horizon: gap kept before the holdout")
    train.set_defaults(func=run)
    train.set_defaults(defaults={a.dest: a.default for a in train._actions})


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.training import runs

    apply_settings(args, args.defaults, ("search", "gates", "economics"))
    cfg, reg = training_config(args), registry_config(args)
    if args.data is None:
        print_outcome(runs.train_platform(layout(args), args.mode, env, cfg, reg))
        return 0
    for flag in ("id_column", "time_column", "target_column"):
        if getattr(args, flag) is None:
            raise InvalidInputError("required with --data", field=f"--{flag.replace('_', '-')}")
    own = runs.OwnData(
        args.data, args.id_column, args.time_column, args.target_column, args.segment_column, args.revenue_column, args.horizon_days
    )
    print_outcome(runs.train_own_data(own, layout(args).reports / "training", cfg, reg))
    return 0
