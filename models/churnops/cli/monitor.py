"""``churnops monitor``: drift reports, performance with delayed labels, privacy erasure, and the local monitoring page.

The registry is resolved here (aliases, thresholds, reference profiles) and
handed to ``churnops.monitoring``, which sits below training in the package
layers. Findings are not errors: a drifted window exits 0 like a clean one;
only bad input or a missing dependency ends with a non-zero code (see
``churnops.errors``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from churnops.cli.common import add_economics_args, add_tracking_arg, registry_config
from churnops.cli.privacy import ERASE_HELP, add_erase_args
from churnops.errors import CheckFailedError, InvalidInputError, NotFoundError
from churnops.training.config import GateConfig
from churnops_contract.registry import CHAMPION

if TYPE_CHECKING:
    from churnops.monitoring.page import VersionFacts
    from churnops.monitoring.predlog.records import LogStore
    from churnops.monitoring.windows import OutcomeSettings, Window
    from churnops.training.registry import RegistryConfig

DEFAULT_DRIFT_WINDOW = "24h"
DEFAULT_PERFORMANCE_WINDOW = "90d"
DEFAULT_PAGE_PORT = 8765


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("monitor", help="monitoring: drift, delayed-label performance, privacy erasure, the local page")
    actions = group.add_subparsers(dest="action", required=True)

    drift = actions.add_parser("drift", help="drift of a window of the prediction log against the version's reference profile")
    add_window_args(drift, DEFAULT_DRIFT_WINDOW)
    drift.add_argument("--model", default=CHAMPION, help="alias, version or models:/ URI (default champion)")
    drift.add_argument("--out", type=Path, default=None, help="report directory (default <data-dir>/reports/monitoring/drift-v<N>-<end>)")
    drift.add_argument("--no-evidently", action="store_true", help="skip Evidently's report (it takes seconds)")
    drift.add_argument("--max-plots", type=int, default=None, help="at most this many feature plots in the HTML (the table lists all)")
    add_log_args(drift)
    add_tracking_arg(drift)
    drift.set_defaults(func=run_drift)

    perf = actions.add_parser("performance", help="delayed labels joined to the prediction log: measured and estimated figures")
    perf.add_argument("--labels", type=Path, required=True, help="CSV or Parquet: customer_id, event_timestamp (window start), churned_30d")
    add_window_args(perf, DEFAULT_PERFORMANCE_WINDOW)
    perf.add_argument(
        "--model", action="append", dest="models", help="alias or version to report on; repeat (default: every version logged)"
    )
    perf.add_argument("--threshold", type=float, default=None, help="campaign threshold for every version (default: each version's own)")
    perf.add_argument("--horizon-days", type=float, default=30.0, help="label horizon: an outcome covers [event_timestamp, +horizon)")
    perf.add_argument("--period", default="1D", help="figures over time per period (pandas offset, e.g. 1D, 1W; 'none' to skip)")
    perf.add_argument("--segment-column", default="segment", help="feature whose values are the segments (fairness, per-segment figures)")
    gates = GateConfig()
    perf.add_argument(
        "--max-fairness-gap", type=float, default=gates.max_fairness_gap, help=f"the training gate's gap (default {gates.max_fairness_gap})"
    )
    perf.add_argument("--out", type=Path, default=None, help="report directory (default <data-dir>/reports/monitoring/performance-<end>)")
    perf.add_argument("--allow-unknown-customers", action="store_true", help="exit 0 although labels name customers never scored")
    add_economics_args(perf)
    add_log_args(perf)
    add_tracking_arg(perf)
    perf.set_defaults(func=run_performance)

    # the former name of `churnops privacy erase`, kept for existing runbooks: the same options and the same erasure
    add_erase_args(actions.add_parser("erase", help=f"the same as `churnops privacy erase`: {ERASE_HELP}"))

    serve = actions.add_parser("serve", help="local monitoring page (embedded mode), refreshed every two seconds")
    serve.add_argument("--port", type=int, default=DEFAULT_PAGE_PORT, help=f"HTTP port (default {DEFAULT_PAGE_PORT})")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: a local tool)")
    serve.add_argument("--max-rows", type=int, default=20_000, help="latest predictions summarised per refresh (bounds the work)")
    serve.add_argument("--labels-dir", type=Path, default=None, help="labels files (default <data-dir>/labels)")
    add_economics_args(serve)
    add_log_args(serve)
    add_tracking_arg(serve)
    serve.set_defaults(func=run_serve)


def add_window_args(p: argparse.ArgumentParser, default: str) -> None:
    g = p.add_argument_group("window (UTC; times in ISO 8601, a time without a zone is UTC)")
    g.add_argument("--window", default=None, help=f"length: 90s, 30m, 1h, 24h, 7d, 2w (default {default}, ending now or at --until)")
    g.add_argument("--since", default=None, help="start of the window (inclusive); alone: up to now")
    g.add_argument("--until", default=None, help="end of the window (exclusive; default now)")
    p.set_defaults(default_window=default)


def add_log_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prediction log")
    g.add_argument("--prediction-log", type=Path, default=None, help="Parquet segments directory (default <data-dir>/predictions)")
    g.add_argument("--prediction-log-dsn", default=None, help="PostgreSQL prediction log instead (cluster)")


# --- shared steps -------------------------------------------------------------------------------------


def window_of(args: argparse.Namespace, now: dt.datetime) -> Window:
    from churnops.monitoring.windows import parse_duration, parse_time, window_bounds

    since = parse_time(args.since, "--since") if args.since else None
    until = parse_time(args.until, "--until") if args.until else None
    text = args.window if args.window is not None else (None if since else args.default_window)
    duration = parse_duration(text) if text is not None else None
    return window_bounds(duration, since, until, now)


def store_of(args: argparse.Namespace) -> LogStore:
    from churnops.monitoring.windows import open_store

    return open_store(args.prediction_log, args.prediction_log_dsn, args.data_dir)


def quiet_registry() -> None:
    """No download progress bars from MLflow on the terminal: the command prints its own short verdict."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def stamp(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")


def threshold(reg: RegistryConfig, version: str) -> float:
    from churnops.training import registry

    if not registry.version_exists(reg, version):
        raise NotFoundError(
            f"version {version} is in the prediction log but not in the registry {reg.tracking_uri}; give --threshold", field="--threshold"
        )
    value: float = registry.version_info(reg, version)["threshold"]
    return value


def outcome_settings(args: argparse.Namespace, period: str | None, fairness_gap: float) -> OutcomeSettings:
    from churnops.monitoring.business import CampaignConfig
    from churnops.monitoring.fairness import FairnessConfig
    from churnops.monitoring.windows import OutcomeSettings

    gates = GateConfig()
    campaign = CampaignConfig(args.contact_cost, args.save_rate, args.months_saved, args.max_contact_share)
    fairness = FairnessConfig(max_gap=fairness_gap, gate_metrics=gates.fairness_gate_metrics)
    return OutcomeSettings(campaign, fairness, getattr(args, "horizon_days", 30.0), period, getattr(args, "segment_column", "segment"))


# --- the commands ------------------------------------------------------------------------------------------


def run_drift(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Exit 0 whether the window drifted or not (a finding, not an error)."""
    from churnops.monitoring.profile import load_profile
    from churnops.reports.window_jobs import drift_verdict
    from churnops.reports.window_jobs import run_drift as drift_job
    from churnops.training import registry

    if args.max_plots is not None and args.max_plots < 0:
        raise InvalidInputError(f"must not be negative, got {args.max_plots}", field="--max-plots")
    window = window_of(args, dt.datetime.now(dt.UTC))
    quiet_registry()
    reg = registry_config(args)
    version = registry.resolve_version(reg, args.model)
    profile = load_profile(reg.tracking_uri, reg.model_name, version)
    out = args.out or args.data_dir / "reports" / "monitoring" / f"drift-v{version}-{stamp(window.end)}"
    store = store_of(args)
    try:
        job = drift_job(store, profile, reg.model_name, version, window, out, evidently=not args.no_evidently, max_plots=args.max_plots)
    finally:
        store.close()
    for line in drift_verdict(job):
        print(line)
    for kind, path in job.paths().items():
        print(f"{kind:>9}: {path}")
    return 0


def run_performance(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    """Exit 0 with the report; 4 (after writing it) when labels name customers no prediction mentions, unless allowed."""
    from churnops.monitoring.labels import read_labels
    from churnops.reports.window_jobs import performance_summary
    from churnops.reports.window_jobs import run_performance as performance_job
    from churnops.training import registry

    if args.threshold is not None and not 0 < args.threshold < 1:
        raise InvalidInputError(f"must be in (0, 1), got {args.threshold}", field="--threshold")
    window = window_of(args, dt.datetime.now(dt.UTC))
    period = None if args.period.lower() == "none" else args.period
    settings = outcome_settings(args, period, args.max_fairness_gap)
    labels = read_labels(args.labels)
    reg = registry_config(args)
    versions = [registry.resolve_version(reg, m) for m in args.models] if args.models else None
    out = args.out or args.data_dir / "reports" / "monitoring" / f"performance-{stamp(window.end)}"
    store = store_of(args)
    try:
        job = performance_job(
            store,
            window,
            reg.model_name,
            versions,
            None,
            labels,
            settings,
            out,
            threshold_of=(lambda _v: float(args.threshold)) if args.threshold is not None else (lambda v: threshold(reg, v)),
        )
    finally:
        store.close()
    for line in performance_summary(job.report):
        print(line)
    print(f"     json: {job.json_path}")
    print(f"  metrics: {job.metrics_path}")
    unknown = job.report.unknown_customer_labels
    if unknown and not args.allow_unknown_customers:
        ids = ", ".join(str(c) for c in (job.report.doc["join"] or {}).get("unknown_customers", []))
        raise CheckFailedError(
            f"{unknown} label(s) name customers that no prediction in the window mentions (first: {ids}); "
            "check the labels feed's customer ids (the report is written; --allow-unknown-customers accepts them)",
            field="--labels",
        )
    return 0


@dataclass
class RegistryCatalog:
    """The page's view of the MLflow registry (``churnops.monitoring.page.Catalog``)."""

    reg: RegistryConfig

    def champion(self) -> str | None:
        from churnops.training import registry

        return registry.alias_version(self.reg, CHAMPION)

    def facts(self, version: str) -> VersionFacts | None:
        from churnops.monitoring.page import VersionFacts
        from churnops.monitoring.profile import load_profile
        from churnops.serving.instruments import REFERENCE_METRICS
        from churnops.training import registry

        if not version.isdigit() or not registry.version_exists(self.reg, version):
            return None
        info = registry.version_info(self.reg, version)
        try:
            profile = load_profile(self.reg.tracking_uri, self.reg.model_name, version)
        except NotFoundError:
            profile = None
        reference = {name: float(info["metrics"][logged]) for logged, name in REFERENCE_METRICS.items() if logged in info["metrics"]}
        return VersionFacts(version, float(info["threshold"]), tuple(info["aliases"]), profile, reference)


def run_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.monitoring.page import CachedCatalog, PageSettings, SummarySource, make_server

    if args.max_rows < 1:
        raise InvalidInputError(f"must be at least 1, got {args.max_rows}", field="--max-rows")
    quiet_registry()
    reg = registry_config(args)
    settings = PageSettings(
        model=reg.model_name,
        labels_dir=args.labels_dir or args.data_dir / "labels",
        max_rows=args.max_rows,
        outcomes=outcome_settings(args, None, GateConfig().max_fairness_gap),
    )
    store = store_of(args)
    source = SummarySource(store, CachedCatalog(RegistryCatalog(reg)), settings)
    try:
        server = make_server(source, args.host, args.port)
    except OSError as e:
        raise InvalidInputError(f"cannot listen on {args.host}:{args.port} ({e.strerror})", field="--port") from None
    print(f"ChurnOps monitoring page on http://{args.host}:{server.server_address[1]}/ (Ctrl-C to stop)", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        store.close()
    return 0
