"""``churnops rollout``: canary rollouts on one machine, decided by the operator's own code.

``start`` writes the deployment's target (the spec of an embedded
ModelDeployment) and takes one step, so a first version is served at once and
a new one starts as a canary; ``run`` is the runner's loop, reading the
predictor's metrics; ``status`` shows what the operator would show;
``promote``, ``rollback`` and ``retrain`` are decisions taken by hand, recorded
and applied like the runner's. ``churnops serve --route churn`` serves the
endpoint that the routing table splits.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import signal
import sys
import threading
from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from churnops.cli.common import add_tracking_arg
from churnops.errors import InvalidInputError

if TYPE_CHECKING:
    from churnops.rollout.runner import Runner

DEFAULT_NAME = "churn"  # churnops.serving.routing_table.DEFAULT_ROUTE: `churnops serve --route churn` reads its table


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    group = sub.add_parser("rollout", help="canary rollouts on one machine: start, run, status, promote, rollback, retrain")
    actions = group.add_subparsers(dest="action", required=True)

    start = actions.add_parser("start", help="roll out a version (the first one is served at once, later ones as canaries)")
    which = start.add_mutually_exclusive_group(required=True)
    which.add_argument("--version", default=None, help="registered version number")
    which.add_argument("--alias", default=None, help="an alias to follow, e.g. challenger (re-resolved at every step)")
    add_name_arg(start)
    start.add_argument("--registered-model", default=None, help="MLflow registered model (default churn-classifier)")
    start.add_argument("--feature-service", default=None, help="Feast feature service (default churn_v1)")
    g = start.add_argument_group("rollout (unset options keep the deployment's current value, or the CRD's default)")
    g.add_argument("--steps", default=None, help="canary weights in percent, ascending, ending at 100 (default 5,25,50,100)")
    g.add_argument("--interval", default=None, help="time between checks, e.g. 10s, 5m (default 5m)")
    g.add_argument("--min-samples", type=int, default=None, help="canary requests per step before it may advance (default 200)")
    g.add_argument("--failure-threshold", type=int, default=None, help="failed checks that roll back (default 2)")
    g.add_argument(
        "--progress-deadline",
        default=None,
        help="a step that has not moved by then ends: withdrawn without evidence, rolled back on it (1h)",
    )
    g.add_argument("--max-error-rate", type=float, default=None, help="allowed excess of the canary's 5xx rate over the stable's")
    g.add_argument("--max-latency-p95-ms", type=float, default=None, help="p95 latency objective of the canary")
    g.add_argument("--max-score-psi", type=float, default=None, help="allowed PSI between the two versions' score histograms")
    g.add_argument("--min-auc-delta", type=float, default=None, help="AUC drop (negative) a rollout must catch, once labels exist")
    g.add_argument("--no-auto-promote", action="store_true", help="do not roll out challengers from retraining runs by themselves")
    g.add_argument("--retry", action="store_true", help="allow a version that was rolled back before")
    r = start.add_argument_group("monitoring and retraining")
    r.add_argument("--retraining", choices=["on", "off"], default=None, help="the retraining policy starts training runs (default on)")
    r.add_argument("--cooldown", default=None, help="at most one retraining run per this long (default 24h)")
    r.add_argument("--evaluation-interval", default=None, help="how often the retraining policy looks at the signals (5m)")
    r.add_argument("--drift-consecutive", type=int, default=None, help="breached evaluations in a row before retraining (3)")
    r.add_argument(
        "--retrain-param", action="append", default=None, metavar="NAME=VALUE", help="a training pipeline parameter, e.g. n_trials=6"
    )
    add_tracking_arg(start)
    start.set_defaults(func=run_start)

    status = actions.add_parser("status", help="phase, versions, weight, checks and history of a deployment")
    add_name_arg(status)
    status.add_argument("--json", action="store_true", help="the whole resource as JSON (with --timeline: and every decision)")
    status.add_argument("--timeline", action="store_true", help="every decision recorded, with its figures")
    status.set_defaults(func=run_status)

    for action, text in (
        ("promote", "make the canary the stable version now (moves the champion alias)"),
        ("rollback", "send all traffic back to the stable version and reject the canary"),
        ("retrain", "start a retraining run now (the KFP training pipeline under kfp.local)"),
    ):
        p = actions.add_parser(action, help=text)
        add_name_arg(p)
        p.add_argument("--reason", default=f"{action} requested", help="why (recorded in the history and on the model versions)")
        add_tracking_arg(p)
        p.set_defaults(func=run_manual)

    run = actions.add_parser("run", help="the runner's loop: read the predictor's metrics and decide, until stopped")
    add_name_arg(run)
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--predictor-url", help="the predictor serving the route, e.g. http://127.0.0.1:8080 (its /metrics is read)")
    source.add_argument("--prometheus-url", help="or a Prometheus scraping it, e.g. http://127.0.0.1:9090 (the operator's queries)")
    run.add_argument("--tick", default="1s", help="time between steps (the checks keep the spec's interval; default 1s)")
    run.add_argument(
        "--split", choices=["request", "customer"], default=None, help="draw per request (default), or keep each customer on one version"
    )
    run.add_argument("--until-settled", action="store_true", help="stop once no canary and no retraining run is in progress")
    run.add_argument("--label-window", default="168h", help="predictions whose delayed labels the retraining policy reads (7 days)")
    add_tracking_arg(run)
    run.set_defaults(func=run_loop)


def add_name_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--name", default=DEFAULT_NAME, help=f"the deployment (and route) name (default {DEFAULT_NAME})")


def seconds(text: str, field: str) -> float:
    from churnops_contract.rollout.spec import SpecError, parse_duration

    try:
        return parse_duration(text, field)
    except SpecError as e:
        raise InvalidInputError(str(e).partition(": ")[2], field=field) from None


def steps(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InvalidInputError(f"expected percentages separated by commas such as 5,25,50,100, got {text!r}", field="--steps") from None


def given(doc: dict[str, Any]) -> dict[str, Any]:
    """The options given: unset ones (None) and sections left empty are dropped, so they keep the current values."""
    out = {}
    for key, value in doc.items():
        inner = given(value) if isinstance(value, dict) else value
        if inner is not None and inner != {}:
            out[key] = inner
    return out


def spec_changes(args: argparse.Namespace) -> dict[str, Any]:
    """The spec fields the options set, as a JSON merge patch over the current spec."""
    params = {}
    for item in args.retrain_param or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise InvalidInputError(f"expected NAME=VALUE, got {item!r}", field="--retrain-param")
        params[name] = value
    analysis = {
        "maxErrorRate": args.max_error_rate,
        "maxLatencyP95Ms": args.max_latency_p95_ms,
        "maxScorePSI": args.max_score_psi,
        "minAUCDelta": args.min_auc_delta,
    }
    changes = given(
        {
            "model": {"registeredModel": args.registered_model},
            "featureService": args.feature_service,
            "rollout": {
                "steps": steps(args.steps) if args.steps else None,
                "interval": args.interval,
                "minSamples": args.min_samples,
                "failureThreshold": args.failure_threshold,
                "progressDeadline": args.progress_deadline,
                "autoPromote": False if args.no_auto_promote else None,
                "analysis": analysis,
            },
            "monitoring": {
                "evaluationInterval": args.evaluation_interval,
                "drift": {"consecutive": args.drift_consecutive},
                "retraining": {
                    "enabled": None if args.retraining is None else args.retraining == "on",
                    "cooldown": args.cooldown,
                    "parameters": params or None,
                },
            },
        }
    )
    # version and alias exclude each other: the one not given is removed (None in a merge patch)
    changes.setdefault("model", {}).update({"version": args.version, "alias": args.alias})
    return changes


def runner_config(args: argparse.Namespace, predictor_url: str | None = None) -> Any:
    from churnops.rollout.runner import RunnerConfig

    return RunnerConfig(args.data_dir, args.name, predictor_url=predictor_url, tracking_uri=args.tracking_uri)


def run_start(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.rollout.runner import Runner

    runner = Runner.build(runner_config(args))
    if args.version is not None:
        refuse_rejected(runner, args.registered_model, args.version)
    report = runner.apply(spec_changes(args), retry=args.retry)
    target = f"version {args.version}" if args.version else f"alias {args.alias!r}"
    print(f"deployment {args.name} (generation {runner.deployment().generation}): target {target}")
    print_report(report)
    rejected = runner.store.load().status.get("rejectedVersions") or []
    if args.version in rejected and report.canary != args.version:
        print(f"version {args.version} was rolled back before: no canary (pass --retry to roll it out again)")
    elif report.canary is not None:
        print(f"run `churnops rollout run --name {args.name} --predictor-url URL` to analyse it (or let a running runner pick it up)")
    return 0


def refuse_rejected(runner: Runner, model: str | None, version: str) -> None:
    """A rejected candidate (``train --register-rejected``) is for inspection: no rollout starts from it."""
    from churnops.training import registry
    from churnops_contract import registry as names

    persisted = runner.deployment().spec.get("model") or {} if runner.store.exists() else {}
    name = model or str(persisted.get("registeredModel") or names.DEFAULT_MODEL_NAME)
    reg = replace(runner.registry, model_name=name)
    if registry.version_exists(reg, version) and (gates := registry.rejected_gates(reg, version)) is not None:
        raise InvalidInputError(names.rejected_reason(name, version, gates), field="--version")


def run_status(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.rollout.store import DeploymentStore

    store = DeploymentStore(args.data_dir, args.name)
    dep = store.load()
    if args.json:
        doc = dep.to_doc()
        if args.timeline:
            doc["timeline"] = store.timeline()
        print(json.dumps(doc, indent=1))
        return 0
    print("\n".join(describe(dep.to_doc())))
    if args.timeline:
        print("\n".join(timeline_lines(store.timeline())))
    return 0


def run_manual(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.rollout.runner import Runner

    runner = Runner.build(runner_config(args))
    report = {"promote": runner.promote, "rollback": runner.rollback, "retrain": runner.retrain}[args.action](args.reason)
    print_report(report)
    return 0


def run_loop(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.rollout.runner import Runner, RunnerConfig, StepReport

    cfg = RunnerConfig(
        args.data_dir,
        args.name,
        predictor_url=args.predictor_url,
        prometheus_url=args.prometheus_url,
        tracking_uri=args.tracking_uri,
        split=args.split,
        label_window_s=seconds(args.label_window, "--label-window"),
    )
    runner = Runner.build(cfg)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    source = f"predictor {args.predictor_url}" if args.predictor_url else f"Prometheus {args.prometheus_url}"
    print(f"runner of deployment {args.name}: {source}, a step every {args.tick}", flush=True)

    def show(report: StepReport) -> None:
        for e in report.events:
            print(f"{stamp(e['time'])} {e['type']:<7} {e['reason']:<20} {e['message']}", flush=True)

    until = (lambda r: r.settled) if args.until_settled else None
    runner.run(stop, seconds(args.tick, "--tick"), until=until, on_step=show)
    return 0


# --- printing ---------------------------------------------------------------------------------------


def stamp(t: Any) -> str:
    if not isinstance(t, int | float):
        return "-"
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def print_report(report: Any) -> None:
    canary = f", canary v{report.canary} at {report.weight}%" if report.canary else ""
    print(f"phase {report.phase}: stable {('v' + report.stable) if report.stable else 'none'}{canary}")
    for e in report.events:
        print(f"  {e['reason']}: {e['message']}")
    sys.stdout.flush()


def describe(doc: Mapping[str, Any]) -> list[str]:
    """The status as a person reads it: versions, weight, checks, the last verdict, retraining, conditions, history."""
    st = doc.get("status") or {}
    meta = doc["metadata"]
    spec = doc["spec"]
    target = spec["model"].get("version") or f"alias {spec['model'].get('alias')}"
    lines = [
        f"deployment {meta['name']} (generation {meta['generation']}, observed {st.get('observedGeneration', '-')}): "
        f"{st.get('phase', 'Pending')} - {st.get('message') or ''}".rstrip(" -"),
        f"  target {target}; stable {st.get('stableVersion') or 'none'}; "
        + (
            f"canary {st['canaryVersion']} at {st.get('canaryWeight')}% (step {int(st.get('stepIndex') or 0) + 1} of "
            f"{len(spec.get('rollout', {}).get('steps') or [5, 25, 50, 100])}), "
            f"failed checks {st.get('failedChecks', 0)}/{spec.get('rollout', {}).get('failureThreshold', 2)}"
            if st.get("canaryVersion")
            else "no canary"
        ),
    ]
    if st.get("rejectedVersions"):
        lines.append(f"  rejected versions: {', '.join(st['rejectedVersions'])}")
    verdict = st.get("lastVerdict")
    if verdict:
        lines.append(
            f"  last check {stamp(verdict.get('time'))} at {verdict.get('weight')}%: {verdict.get('outcome')} - {verdict.get('reason')}"
        )
        for name in ("error_rate", "latency_p95_ms", "score_psi", "auc_delta"):
            r = verdict.get(name)
            if isinstance(r, Mapping):
                lines.append(
                    f"    {name:<15} {r.get('outcome'):<12} canary {r.get('canary')}  stable {r.get('stable')}  limit {r.get('limit')}  "
                    f"evidence {r.get('evidence')}"
                )
    rs = st.get("retraining") or {}
    run = f"run {rs.get('runName')} {rs.get('runState') or 'starting'}" if rs.get("runName") else "no run yet"
    lines.append(
        f"  retraining: {run}; breaches {rs.get('breaches', 0)}, triggers {rs.get('triggers', 0)}; {rs.get('reason') or ''}".rstrip("; ")
    )
    conditions = " ".join(f"{c['type']}={c['status']}" for c in st.get("conditions") or [])
    if conditions:
        lines.append(f"  conditions: {conditions}")
    history = st.get("history") or []
    if history:
        lines.append(f"  {'time':<19}  {'event':<18} {'from':>5} {'to':>5}  reason")
        lines += [
            f"  {stamp(h.get('time'))}  {h.get('event', ''):<18} {h.get('from') or '-':>5} {h.get('to') or '-':>5}  {h.get('reason', '')}"
            for h in history
        ]
    return lines


def timeline_lines(entries: list[dict[str, Any]]) -> list[str]:
    out = ["timeline:"]
    for e in entries:
        kind = e.get("kind")
        if kind == "check":
            what = (
                f"check {e['outcome']:<4} canary v{e['canary']} at {e['weight']}% ({e.get('stepSamples', 0)} requests in the step, "
                f"failed {e['failedChecks']}): {e.get('reason', '')}"
            )
        elif kind == "event":
            what = f"{e['reason']}: {e['message']}"
        elif kind == "routing":
            what = f"routing: stable v{e['stable']}" + (f", canary v{e['canary']} at {e['weight']}%" if e.get("canary") else "")
        elif kind == "evaluation":
            what = f"retraining policy on v{e['version']}: {e['reason']}"
        elif kind == "run":
            what = f"run {e['run']}: {e['state']}" + (f" (challenger v{e['challenger']})" if e.get("challenger") else "")
        else:
            what = json.dumps(e)
        out.append(f"  {stamp(e.get('time'))}  {what}")
    return out
