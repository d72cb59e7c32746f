"""``churnops report``: the demo's report with plots, and the compliance report of a model version.

Both are generated from what the data directory holds (registry, prediction
log, labels, rollouts, audit logs), as self-contained HTML with a JSON twin.
A missing piece is named in the report, not an error. ``compliance`` exits 1
when one of its checks failed (a tampered audit log, a model file that no
longer matches its registration, a failed gate): a finding, as with
``churnops audit verify``; a model that does not exist or a registry that
cannot be reached ends with the error model's codes.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

from churnops.cli.audit import add_key_args
from churnops.cli.common import add_tracking_arg, layout
from churnops_contract.registry import CHAMPION


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("report", help="reports: the demo's story with plots, the compliance report of a model version")
    actions = group.add_subparsers(dest="action", required=True)

    demo = actions.add_parser(
        "demo", help="one HTML page (and JSON) with plots of evaluation, SHAP, drift, rollouts, performance, business, fairness"
    )
    demo.add_argument(
        "--out", type=Path, default=None, help="HTML file (default <data-dir>/reports/demo_report.html; the JSON goes beside it)"
    )
    demo.add_argument("--windows", type=int, default=12, help="points over time for drift and performance (default 12)")
    add_tracking_arg(demo)
    demo.set_defaults(func=run_demo)

    comp = actions.add_parser("compliance", help="lineage, digests, gates, fairness, rollout decisions, audit verification and model card")
    comp.add_argument("--model", default=CHAMPION, help="alias, version or models:/ URI (default champion)")
    comp.add_argument(
        "--out", type=Path, default=None, help="directory (default <data-dir>/reports/compliance); writes compliance_<version>.html/.json"
    )
    add_tracking_arg(comp)
    add_key_args(comp, signing=False)
    comp.set_defaults(func=run_compliance)


def quiet_registry() -> None:
    import os

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # the command prints its own summary


def run_demo(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.errors import InvalidInputError
    from churnops.reports.demo import DemoSettings, write_demo_report

    if args.windows < 2:
        raise InvalidInputError(f"must be at least 2, got {args.windows}", field="--windows")
    quiet_registry()
    files = write_demo_report(layout(args), args.out, DemoSettings(tracking_uri=args.tracking_uri, windows=args.windows))
    print(f"demo report: {files.html} (figures in {files.json})")
    for key, section in files.doc["sections"].items():
        missing = f": missing {'; '.join(section['missing'])}" if section["missing"] else ""
        print(f"  {key}: {section['status']}{missing}")
    return 0


def run_compliance(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.reports.compliance import ComplianceSettings, write_compliance_report
    from churnops.serving.audit_keys import public_keys_for

    quiet_registry()
    settings = ComplianceSettings(tracking_uri=args.tracking_uri, audit_keys=public_keys_for(args.audit_public_keys, env))
    files = write_compliance_report(layout(args), args.model, args.out, settings)
    doc = files.doc
    print(f"compliance report of {doc['model']} v{doc['model_version']}: {files.html} (JSON {files.json})")
    for name, ok in doc["sections"]["summary"]["checks"].items():
        print(f"  {name}: {({True: 'passed', False: 'FAILED', None: 'not possible'})[ok]}")
    missing = doc["sections"]["summary"]["missing"]
    if missing:
        print(f"  missing: {len(missing)} piece(s), named in the report")
    return 1 if False in doc["sections"]["summary"]["checks"].values() else 0
