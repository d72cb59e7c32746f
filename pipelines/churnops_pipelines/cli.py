"""The ``churnops`` command line."""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import optuna

from churnops_features import store as feast_store
from churnops_features.catalog import render_catalog
from churnops_models import registry
from churnops_models.automl import SearchBudget
from churnops_models.data import GeneratorConfig, with_drift
from churnops_models.gates import GateConfig, QualityGateError
from churnops_models.ingest import IngestError, ingest
from churnops_models.registry import CHALLENGER, CHAMPION, RegistryConfig
from churnops_models.train import TrainingConfig, TrainingOutcome
from churnops_models.validation import DataValidationError
from churnops_pipelines import cli_serving, foundation, scoring_demo, training
from churnops_pipelines.foundation import Layout


def _generator_config(args: argparse.Namespace) -> GeneratorConfig:
    cfg = GeneratorConfig(
        n_customers=args.customers, seed=args.seed, history_days=args.history_days, block_size=args.block_size, end_date=args.end_date
    )
    return with_drift(cfg, args.drift, args.drift_start_day)


def _add_generator_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--customers", type=int, default=50_000, help="number of customers (default 50,000)")
    p.add_argument("--seed", type=int, default=42, help="random seed (same seed, same data)")
    p.add_argument("--history-days", type=int, default=180, help="days of history to simulate (>= 120)")
    p.add_argument("--end-date", type=dt.date.fromisoformat, default=dt.date(2026, 6, 30), help="last day of history (YYYY-MM-DD)")
    p.add_argument("--block-size", type=int, default=50_000, help="customers simulated per block (bounds memory)")
    p.add_argument("--drift", choices=["none", "covariate", "concept", "both"], default="none", help="drift scenario for monitoring tests")
    p.add_argument("--drift-start-day", type=int, default=None, help="day of history at which drift starts")


def _add_store_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mode", choices=["embedded", "cluster"], default="embedded", help="feature store configuration (default embedded)")


def _add_training_args(p: argparse.ArgumentParser, seed: bool = True, trials: int = 40, budget_minutes: float = 10.0) -> None:
    if seed:  # the demo shares --seed with the data generator
        p.add_argument("--seed", type=int, default=42)
    p.add_argument("--trials", type=int, default=trials, help=f"AutoML trial budget (default {trials})")
    p.add_argument("--budget-minutes", type=float, default=budget_minutes, help=f"AutoML wall-clock budget (default {budget_minutes:g})")
    p.add_argument("--min-auc", type=float, default=0.80, help="quality gate on holdout ROC-AUC")
    p.add_argument("--max-brier", type=float, default=0.15, help="quality gate on holdout Brier score")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded SQLite under --data-dir)")


def _training_config(args: argparse.Namespace) -> TrainingConfig:
    # 0 minutes: no time cap, only the trial budget (fully reproducible runs)
    budget = SearchBudget(n_trials=args.trials, timeout_s=args.budget_minutes * 60 if args.budget_minutes > 0 else None)
    return TrainingConfig(seed=args.seed, budget=budget, gates=GateConfig(min_auc=args.min_auc, max_brier=args.max_brier))


def _registry(args: argparse.Namespace) -> RegistryConfig:
    return RegistryConfig(tracking_uri=args.tracking_uri) if args.tracking_uri else RegistryConfig.embedded(args.data_dir)


def _print_training(outcome: TrainingOutcome) -> None:
    print(json.dumps(outcome.summary, indent=2, default=str))
    print(
        f"\nRegistered {outcome.summary['model_uri']} as '{CHALLENGER}': holdout AUC {outcome.evaluation.roc_auc:.3f}, "
        f"Brier {outcome.evaluation.brier:.3f}. Model card: {outcome.card}"
    )


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _print_scoring(result: dict[str, Any]) -> None:
    batch = result["batch"]
    print(
        f"\nBatch scoring with {batch['rows']:,} customers' latest features in {batch['seconds']} s, with top-5 exact SHAP reasons: "
        f"{batch['output']} (plot {batch['plot']}); risk bands {result['risk_bands']}"
    )
    print(f"Online predictor (KServe V1, JWT, audit trail verified), champion v{result['model_version']}, the three riskiest customers:")
    for p in result["online"]:
        reasons = ", ".join(f"{r['feature']}={_short(r['value'])} ({r['contribution']:+.2f})" for r in p["reasons"])
        print(f"  customer {p['customer_id']}: {p['churn_probability']:.1%} ({p['risk_band']}) because {reasons}")
    print("Serve it yourself: `make serve`, then `churnops token --subject you --role predictor` for a bearer token.")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnops", description="ChurnOps: churn prediction platform")
    parser.add_argument("--data-dir", type=Path, default=Path("data"), help="where data, features and reports go (default ./data)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run everything end to end on embedded defaults")
    _add_generator_args(demo)
    _add_store_args(demo)
    _add_training_args(demo, seed=False, trials=30, budget_minutes=4.0)

    data = sub.add_parser("data", help="customer data").add_subparsers(dest="action", required=True)
    _add_generator_args(data.add_parser("generate", help="generate synthetic customer data"))
    data.add_parser("validate", help="validate the raw tables (Great Expectations)")
    ing = data.add_parser("ingest", help="check and load your own CSV/Parquet table")
    ing.add_argument("path", type=Path)
    ing.add_argument("--id-column", required=True)
    ing.add_argument("--time-column", required=True)
    ing.add_argument("--target-column", required=True)
    ing.add_argument("--out", type=Path, default=None, help="write the typed table as Parquet here")

    feats = sub.add_parser("features", help="feature engineering and the Feast store").add_subparsers(dest="action", required=True)
    feats.add_parser("build", help="compute point-in-time features from the raw tables")
    feats.add_parser("validate", help="validate the feature tables (Great Expectations)")
    publish = feats.add_parser("publish", help="apply Feast objects and backfill the online store")
    _add_store_args(publish)
    publish.add_argument("--incremental", action="store_true", help="only load rows newer than the last materialization")
    online = feats.add_parser("online", help="read online features of customers")
    _add_store_args(online)
    online.add_argument("customer_ids", type=int, nargs="+")
    train = sub.add_parser("train", help="AutoML training, evaluation, quality gates and MLflow registration")
    _add_store_args(train)
    _add_training_args(train)
    own = train.add_argument_group("bring your own data (instead of the platform's Feast features)")
    own.add_argument("--data", type=Path, default=None, help="CSV or Parquet file to train on")
    own.add_argument("--id-column")
    own.add_argument("--time-column")
    own.add_argument("--target-column")
    own.add_argument("--segment-column", default=None, help="report fairness across this column's values")
    own.add_argument("--revenue-column", default=None, help="monthly revenue per row, for business metrics")
    own.add_argument("--horizon-days", type=int, default=30, help="label horizon: gap kept before the holdout")

    model = sub.add_parser("model", help="the model registry").add_subparsers(dest="action", required=True)
    prom = model.add_parser("promote", help="move the champion alias to a version (default: the challenger)")
    prom.add_argument("--version", default=None)
    prom.add_argument("--reason", default="manual promotion")
    for p in (prom,):
        p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: embedded SQLite under --data-dir)")

    cli_serving.add_commands(sub)

    cat = feats.add_parser("catalog", help="write (or --check) the feature catalog")
    cat.add_argument("--out", type=Path, default=feast_store.default_repo_dir() / "FEATURES.md")
    cat.add_argument("--check", action="store_true", help="fail if the file differs from the catalog")
    return parser


def _dispatch(args: argparse.Namespace) -> int:
    layout = Layout(args.data_dir)
    env = dict(os.environ)
    if args.command in ("serve", "score", "token", "audit"):
        return cli_serving.dispatch(args, env)
    if args.command == "demo":
        summary = foundation.run_foundation(_generator_config(args), layout, args.mode, env)
        print(json.dumps(summary, indent=2, default=str))
        print(
            f"\nData foundation ready: {summary['customers']:,} customers, {summary['features']} features in service "
            f"'{summary['feature_service']}', 30-day churn rate {summary['churn_rate_30d']:.1%}, "
            f"online store serving {summary['online_features_returned']} features per customer. Reports in {layout.reports}/"
        )
        reg = _registry(args)
        outcome = training.train_platform(layout, args.mode, env, _training_config(args), reg)
        _print_training(outcome)
        if registry.alias_version(reg, CHAMPION) is None and outcome.registered is not None:
            done = registry.promote(reg, outcome.registered.version, "first model to pass the quality gates")
            print(f"{reg.model_name} v{done.version} promoted to '{CHAMPION}' (no champion before).")
        _print_scoring(scoring_demo.run(layout, reg, args.mode))
        return 0
    if args.command == "train":
        cfg, reg = _training_config(args), _registry(args)
        if args.data is not None:
            for flag in ("id_column", "time_column", "target_column"):
                if getattr(args, flag) is None:
                    raise ValueError(f"--data needs --{flag.replace('_', '-')}")
            out = layout.reports / "training"
            outcome = training.train_own_data(
                args.data,
                args.id_column,
                args.time_column,
                args.target_column,
                args.segment_column,
                args.revenue_column,
                args.horizon_days,
                out,
                cfg,
                reg,
            )
        else:
            outcome = training.train_platform(layout, args.mode, env, cfg, reg)
        _print_training(outcome)
        return 0
    if args.command == "model":
        reg = _registry(args)
        version = args.version or registry.alias_version(reg, CHALLENGER)
        if version is None:
            raise ValueError("no --version given and no challenger registered")
        done = registry.promote(reg, version, args.reason)
        print(f"{reg.model_name} v{done.version} is now '{CHAMPION}' (was {done.previous or 'none'}) at {done.time}")
        return 0
    if args.command == "data":
        if args.action == "generate":
            counts = foundation.generate(_generator_config(args), layout)
            print(json.dumps(counts, indent=2))
        elif args.action == "validate":
            foundation.check(foundation.validate_raw(layout), layout, "raw")
        elif args.action == "ingest":
            table = ingest(args.path, args.id_column, args.time_column, args.target_column)
            s = table.schema
            print(
                f"{len(table.frame):,} rows; target rate {table.frame[s.target_column].mean():.1%}; "
                f"{len(s.numeric)} numeric and {len(s.categorical)} categorical features"
            )
            print(f"numeric: {', '.join(s.numeric) or '-'}\ncategorical: {', '.join(s.categorical) or '-'}")
            if args.out is not None:
                args.out.parent.mkdir(parents=True, exist_ok=True)
                table.frame.to_parquet(args.out, index=False)
                print(f"written to {args.out}")
        return 0
    if args.action == "build":
        print(json.dumps(foundation.features(layout), indent=2))
    elif args.action == "validate":
        foundation.check(foundation.validate_features(layout), layout, "features")
    elif args.action == "publish":
        if args.incremental:
            seconds = foundation.publish_incremental(layout, args.mode, env)
            print(f"incremental materialization done in {seconds:.1f} s")
        else:
            seconds, rows = foundation.publish(layout, args.mode, env)
            print(f"materialized {rows:,} feature rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    elif args.action == "online":
        print(json.dumps(foundation.lookup(layout, args.mode, env, args.customer_ids), indent=2, default=str))
    elif args.action == "catalog":
        text = render_catalog()
        if args.check:
            if not args.out.exists() or args.out.read_text() != text:
                print(f"{args.out} is out of date; run `churnops features catalog`", file=sys.stderr)
                return 1
            print(f"{args.out} is up to date")
        else:
            args.out.write_text(text)
            print(f"wrote {args.out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Optuna logs every trial at INFO on its own handler; the progress bar already shows them.
    optuna.logging.set_verbosity(optuna.logging.DEBUG if args.verbose else optuna.logging.WARNING)
    try:
        return _dispatch(args)
    except (
        IngestError,
        DataValidationError,
        QualityGateError,
        FileNotFoundError,
        LookupError,
        ValueError,
    ) as e:  # ConfigError is a ValueError
        print(f"churnops: error: {e}", file=sys.stderr)
        return 2
    finally:
        # Free Arrow readers (Feast's file offline store) while Arrow is still alive: a parquet
        # worker thread torn down during interpreter exit aborts the process (apache/arrow#34314).
        gc.collect()


if __name__ == "__main__":
    sys.exit(main())
