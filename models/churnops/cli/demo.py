"""``churnops demo``: the main job, the whole story on one machine with embedded defaults (see ``churnops.demo.story``)."""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping
from dataclasses import replace

from churnops.cli.common import layout


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo",
        help="the whole story end to end on embedded defaults: train, canary, promote, drift, retrain, "
        "a subtly worse canary rolled back by the AUC test, reports",
        description="Replaces the previous demo's outputs under --data-dir. Ctrl-C stops every process it started.",
    )
    demo.add_argument("--fast", action="store_true", help="a small, quick variant (3,000 customers, short searches; what the tests run)")
    demo.add_argument("--customers", type=int, default=None, help="customers to simulate (default 20,000; 3,000 with --fast)")
    demo.add_argument("--seed", type=int, default=None, help="seed of the data and the searches (default 42)")
    demo.add_argument("--challenger-minutes", type=float, default=None, help="wall-clock budget of the challenger's AutoML search")
    demo.add_argument("--traffic-rate", type=float, default=None, help="synthetic requests per second")
    demo.add_argument("--keep-serving", action="store_true", help="leave the predictor and the monitoring page up at the end, until Ctrl-C")
    demo.set_defaults(func=run)


def run(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.demo.story import DemoConfig, Story

    data_dir = layout(args).data_dir
    cfg = DemoConfig.fast(data_dir) if args.fast else DemoConfig(data_dir)
    overrides = {
        "customers": args.customers,
        "seed": args.seed,
        "challenger_minutes": args.challenger_minutes,
        "traffic_rate": args.traffic_rate,
    }
    cfg = replace(cfg, keep_serving=args.keep_serving, **{k: v for k, v in overrides.items() if v is not None})
    summary = Story(cfg, env).run()
    (data_dir / "reports" / "demo_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    counts = summary["counts"]
    print(
        f"\nDone: {counts['Promoted']} promotion(s), {counts['RolledBack']} rollback(s), {counts['DriftDetected']} drift alert(s), "
        f"{counts['RetrainingTriggered']} retraining run(s); champion v{summary['champion']}. Reports in {data_dir / 'reports'}/"
    )
    return 0
