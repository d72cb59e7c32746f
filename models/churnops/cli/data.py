"""``churnops data``: generate synthetic customers, validate raw tables, ingest your own table."""

from __future__ import annotations

import argparse
import datetime as dt
import json
from collections.abc import Mapping
from pathlib import Path

from churnops.cli.common import add_dialect_args, add_engine_args, add_settings_arg, apply_settings, csv_dialect, engine_config, layout
from churnops.data.config import DRIFT_PRESETS, GeneratorConfig, with_drift


def add_generator_args(p: argparse.ArgumentParser) -> None:
    d = GeneratorConfig()
    p.add_argument("--customers", type=int, default=d.n_customers, help=f"number of customers (default {d.n_customers:,})")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (same seed, same data)")
    p.add_argument("--history-days", type=int, default=d.history_days, help=f"days of history to simulate (default {d.history_days})")
    p.add_argument("--end-date", type=dt.date.fromisoformat, default=d.end_date, help="last day of history (YYYY-MM-DD)")
    p.add_argument("--block-size", type=int, default=d.block_size, help="customers simulated per block (bounds memory)")
    p.add_argument("--drift", choices=list(DRIFT_PRESETS), default="none", help="drift scenario for monitoring tests")
    p.add_argument("--drift-start-day", type=int, default=None, help="day of history at which drift starts")


def generator_config(args: argparse.Namespace) -> GeneratorConfig:
    cfg = GeneratorConfig(
        n_customers=args.customers, seed=args.seed, history_days=args.history_days, block_size=args.block_size, end_date=args.end_date
    )
    return with_drift(cfg, args.drift, args.drift_start_day)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("data", help="customer data").add_subparsers(dest="action", required=True)
    gen = group.add_parser("generate", help="generate synthetic customer data")
    add_generator_args(gen)
    add_settings_arg(gen)
    add_engine_args(gen)
    gen.set_defaults(func=run_generate)
    gen.set_defaults(defaults={a.dest: a.default for a in gen._actions})
    group.add_parser("validate", help="validate the raw tables (Great Expectations)").set_defaults(func=run_validate)
    ing = group.add_parser("ingest", help="check and load your own CSV/Parquet table")
    ing.add_argument("path", type=Path)
    ing.add_argument("--id-column", required=True)
    ing.add_argument("--time-column", required=True)
    ing.add_argument("--target-column", required=True)
    ing.add_argument("--out", type=Path, default=None, help="write the typed table as Parquet here")
    add_dialect_args(ing)
    ing.set_defaults(func=run_ingest)


def run_generate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.data import steps

    apply_settings(args, args.defaults, ("data",))
    print(json.dumps(steps.generate(generator_config(args), layout(args), engine_config(args, env)), indent=2))
    return 0


def run_validate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.data import steps

    steps.check(steps.validate_raw(layout(args)), layout(args), "raw")
    return 0


def run_ingest(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.data.ingest import ingest_table

    table = ingest_table(args.path, args.id_column, args.time_column, args.target_column, csv_dialect(args))
    s = table.schema
    print(
        f"{len(table.frame):,} rows; target rate {table.frame[s.target_column].mean():.1%}; "
        f"{len(s.numeric)} numeric and {len(s.categorical)} categorical features"
    )
    print(f"numeric: {', '.join(s.numeric) or '-'}\ncategorical: {', '.join(s.categorical) or '-'}")
    for note in table.notes:
        print(f"note: {note}")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.frame.to_parquet(args.out, index=False)
        print(f"written to {args.out}")
    return 0
