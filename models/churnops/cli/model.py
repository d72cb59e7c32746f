"""``churnops model``: the registry's aliases."""

from __future__ import annotations

import argparse
from collections.abc import Mapping

from churnops.cli.common import add_tracking_arg, registry_config
from churnops.errors import NotFoundError
from churnops_contract.registry import CHALLENGER, CHAMPION


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("model", help="the model registry").add_subparsers(dest="action", required=True)
    promote = group.add_parser("promote", help="move the champion alias to a version (default: the challenger)")
    promote.add_argument("--version", default=None)
    promote.add_argument("--reason", default="manual promotion")
    add_tracking_arg(promote)
    promote.set_defaults(func=run_promote)


def run_promote(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.training import registry

    reg = registry_config(args)
    version = args.version or registry.alias_version(reg, CHALLENGER)
    if version is None:
        raise NotFoundError("no --version given and no challenger registered", field="--version")
    done = registry.promote(reg, version, args.reason)
    print(f"{reg.model_name} v{done.version} is now '{CHAMPION}' (was {done.previous or 'none'}) at {done.time}")
    return 0
