"""``churnops features``: build, validate and publish the point-in-time features; read them online."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from churnops.cli.common import add_engine_args, add_store_args, add_tracking_arg, engine_config, layout, registry_config

CATALOG = Path("feature_repo/FEATURES.md")  # the generated document, relative to a checkout


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("features", help="feature engineering and the Feast store").add_subparsers(dest="action", required=True)
    build = group.add_parser("build", help="compute point-in-time features from the raw tables, one task per raw part")
    add_engine_args(build)
    build.set_defaults(func=run_build)
    group.add_parser("validate", help="validate the feature tables (Great Expectations)").set_defaults(func=run_validate)
    publish = group.add_parser("publish", help="apply Feast objects and backfill the online store")
    add_store_args(publish)
    publish.add_argument("--incremental", action="store_true", help="only load rows newer than the last materialization")
    add_tracking_arg(publish)  # cluster mode: reasons of the registered versions are precomputed for the new snapshot
    publish.set_defaults(func=run_publish)
    online = group.add_parser("online", help="read online features of customers")
    add_store_args(online)
    online.add_argument("customer_ids", type=int, nargs="+")
    online.set_defaults(func=run_online)
    cat = group.add_parser("catalog", help="write (or --check) the feature catalog document")
    cat.add_argument("--out", type=Path, default=CATALOG, help=f"where the catalog goes (default {CATALOG})")
    cat.add_argument("--check", action="store_true", help="fail if the file differs from the catalog")
    cat.set_defaults(func=run_catalog)


def run_build(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.features import steps

    print(json.dumps(steps.features(layout(args), engine_config(args, env)), indent=2))
    return 0


def run_validate(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.data.steps import check
    from churnops.features import steps

    check(steps.validate_features(layout(args)), layout(args), "features")
    return 0


def run_publish(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.features import steps

    if args.incremental:
        seconds = steps.publish_incremental(layout(args), args.mode, env)
        print(f"incremental materialization done in {seconds:.1f} s")
    else:
        seconds, rows = steps.publish(layout(args), args.mode, env)
        print(f"materialized {rows:,} feature rows in {seconds:.1f} s ({rows / seconds:,.0f} rows/s)")
    if args.mode == "cluster":
        precompute_reasons(args, env)
    return 0


def precompute_reasons(args: argparse.Namespace, env: Mapping[str, str]) -> None:
    """Reasons of the registered versions for the snapshot just materialized, kept beside it (the predictor serves them)."""
    from churnops.errors import UnavailableError
    from churnops.serving.reasons import precompute_registered, prune, registered_keys
    from churnops.serving.server import redis_client
    from churnops_feast import store as feast_store
    from churnops_feast.definitions import TRAINING_SERVICE
    from churnops_feast.online import redis_reader

    if not args.tracking_uri and not (layout(args).data_dir / "mlflow" / "mlflow.db").exists():
        print("no model registry yet: the predictor computes reasons when it loads a version")
        return
    store = feast_store.open_store("cluster", env, layout(args).data_dir)
    client = redis_client(env, timeout_s=10.0)
    began = time.perf_counter()
    try:
        reg = registry_config(args)
        served = registered_keys(reg)
        done = precompute_registered(reg, lambda only: redis_reader(store, TRAINING_SERVICE, client, only), served)
        pruned = prune(client, served.values())
    except UnavailableError as e:  # reasons are computed by requests meanwhile: publishing still succeeded
        print(f"reasons not precomputed: {e}", file=sys.stderr)
        return
    took = time.perf_counter() - began
    print(
        "precomputed reasons: "
        + (", ".join(f"v{v} {n:,} computed" for v, n in done.items()) or "no registered version")
        + f"; {pruned:,} entries of versions no longer served deleted ({took:.1f} s)"
    )


def run_online(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.features import steps

    print(json.dumps(steps.lookup(layout(args), args.mode, env, args.customer_ids), indent=2, default=str))
    return 0


def run_catalog(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops_feast.catalog import render_catalog

    text = render_catalog()
    if args.check:
        if not args.out.exists() or args.out.read_text() != text:
            print(f"{args.out} is out of date; run `churnops features catalog`", file=sys.stderr)
            return 1
        print(f"{args.out} is up to date")
        return 0
    args.out.write_text(text)
    print(f"wrote {args.out}")
    return 0
