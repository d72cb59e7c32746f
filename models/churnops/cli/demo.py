"""``churnops demo``: the main job, end to end on embedded defaults."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from typing import Any

from churnops.cli.common import add_store_args, layout, registry_config
from churnops.cli.data import add_generator_args, generator_config
from churnops.cli.train import add_training_args, print_outcome, training_config
from churnops.training.config import SearchBudget
from churnops_contract.registry import CHAMPION

# The demo's search is smaller than `churnops train`'s so that the whole story runs in minutes.
DEMO_BUDGET = SearchBudget(n_trials=30, timeout_s=240.0)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser("demo", help="run everything end to end on embedded defaults")
    add_generator_args(demo)
    add_store_args(demo)
    add_training_args(demo, DEMO_BUDGET, seed=False)
    demo.set_defaults(func=run)


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def print_scoring(result: dict[str, Any]) -> None:
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


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.features import steps
    from churnops.serving import demo as scoring_demo
    from churnops.training import registry, runs

    lay = layout(args)
    summary = steps.run_foundation(generator_config(args), lay, args.mode, env)
    print(json.dumps(summary, indent=2, default=str))
    print(
        f"\nData foundation ready: {summary['customers']:,} customers, {summary['features']} features in service "
        f"'{summary['feature_service']}', 30-day churn rate {summary['churn_rate_30d']:.1%}, "
        f"online store serving {summary['online_features_returned']} features per customer. Reports in {lay.reports}/"
    )
    reg = registry_config(args)
    outcome = runs.train_platform(lay, args.mode, env, training_config(args), reg)
    print_outcome(outcome)
    if registry.alias_version(reg, CHAMPION) is None and outcome.registered is not None:
        done = registry.promote(reg, outcome.registered.version, "first model to pass the quality gates")
        print(f"{reg.model_name} v{done.version} promoted to '{CHAMPION}' (no champion before).")
    print_scoring(scoring_demo.run(lay, reg, args.mode))
    return 0
