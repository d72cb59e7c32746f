"""Entry point: ``churnops-operator`` (or ``python -m churnops_operator``).

Configuration comes from flags, each with an environment default (``CHURNOPS_*``),
and is built here and passed down: nothing is read at import time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
from collections.abc import Mapping, Sequence

import kopf
from prometheus_client import CollectorRegistry, start_http_server

from churnops_operator.handlers import Config, State, register
from churnops_operator.telemetry import OperatorMetrics


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    env = os.environ.get
    p = argparse.ArgumentParser(prog="churnops-operator", description="Reconcile ChurnOps ModelDeployments.")
    p.add_argument("--prometheus-url", default=env("CHURNOPS_PROMETHEUS_URL", "http://prometheus-operated.monitoring:9090"))
    p.add_argument("--mlflow-url", default=env("CHURNOPS_MLFLOW_URL", "http://mlflow.churnops:5000"))
    p.add_argument("--kfp-url", default=env("CHURNOPS_KFP_URL"), help="Kubeflow Pipelines API (retraining is off without it)")
    p.add_argument("--namespace", action="append", default=None, help="watch this namespace (repeatable); default: all")
    p.add_argument("--tick", type=float, default=float(env("CHURNOPS_OPERATOR_TICK", "10")), help="seconds between reconcile passes")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds for each call to Prometheus, MLflow and KFP")
    p.add_argument("--metrics-port", type=int, default=int(env("CHURNOPS_OPERATOR_METRICS_PORT", "8080")), help="0 disables")
    p.add_argument("--health-port", type=int, default=int(env("CHURNOPS_OPERATOR_HEALTH_PORT", "8081")), help="0 disables")
    p.add_argument("--peering", default=env("CHURNOPS_OPERATOR_PEERING", "churnops-operator"), help="leader-election peering name")
    p.add_argument("--priority", type=int, default=int(env("CHURNOPS_OPERATOR_PRIORITY", "0")), help="higher wins the peering")
    p.add_argument(
        "--peering-lifetime",
        type=int,
        default=int(env("CHURNOPS_OPERATOR_PEERING_LIFETIME", "6")),
        help="seconds a replica counts as alive after its last keep-alive: a standby takes over at most this long after the"
        " leader died (kopf renews every lifetime - 5..10 s, at least every 1 s)",
    )
    p.add_argument("--standalone", action="store_true", help="no peering (a single replica, or tests)")
    p.add_argument("--log-format", choices=("json", "full", "plain"), default=env("CHURNOPS_OPERATOR_LOG_FORMAT", "json"))
    p.add_argument("--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.peering_lifetime < 2:
        p.error("--peering-lifetime must be at least 2 seconds (kopf renews the keep-alive every second at best)")
    return args


def build_config(args: argparse.Namespace, environ: Mapping[str, str]) -> Config:
    return Config(
        prometheus_url=args.prometheus_url,
        mlflow_url=args.mlflow_url,
        kfp_url=args.kfp_url,
        tick_s=args.tick,
        request_timeout_s=args.timeout,
        peering=args.peering,
        standalone=args.standalone,
        priority=args.priority,
        peering_lifetime_s=args.peering_lifetime,
        identity=environ.get("POD_ID") or f"{socket.gethostname()}/{os.getpid()}",  # POD_ID: kopf's own peer identity
        # MLflow's own variable names (its basic-auth app); environment only, never flags (visible in `ps`)
        mlflow_username=environ.get("MLFLOW_TRACKING_USERNAME") or None,
        mlflow_password=environ.get("MLFLOW_TRACKING_PASSWORD") or None,
    )


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    kopf.configure(verbose=args.verbose, log_format=kopf.LogFormat[args.log_format.upper()])
    config = build_config(args, os.environ)
    metrics_registry = CollectorRegistry()
    state = State(config, OperatorMetrics(metrics_registry))
    if args.metrics_port:
        start_http_server(args.metrics_port, registry=metrics_registry)
    registry = kopf.OperatorRegistry()
    register(registry, state)
    liveness = f"http://0.0.0.0:{args.health_port}/healthz" if args.health_port else None
    asyncio.run(
        kopf.operator(
            registry=registry,  # peering (leader election) is set by the startup handler from Config
            liveness_endpoint=liveness,
            clusterwide=not args.namespace,
            namespaces=args.namespace or (),
        )
    )


if __name__ == "__main__":
    main()
