"""The operator's own Prometheus metrics (``churnops_operator_*``), created once in ``main``."""

from __future__ import annotations

import contextlib

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class OperatorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.reconciles = Counter("churnops_operator_reconciles", "Reconcile passes by result", ["result"], registry=registry)
        self.duration = Histogram(
            "churnops_operator_reconcile_seconds",
            "Time of one reconcile pass",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=registry,
        )
        self.decisions = Counter("churnops_operator_decisions", "Decisions taken, by event reason", ["reason"], registry=registry)
        self.external_errors = Counter(
            "churnops_operator_external_errors", "Failed calls to outside systems", ["system"], registry=registry
        )
        self.canary_weight = Gauge("churnops_operator_canary_weight", "Canary traffic percent", ["namespace", "name"], registry=registry)
        self.failed_checks = Gauge(
            "churnops_operator_failed_checks", "Failed checks in the current analysis", ["namespace", "name"], registry=registry
        )
        self.retraining_runs = Counter("churnops_operator_retraining_runs", "Training runs started", registry=registry)

    def forget(self, namespace: str, name: str) -> None:
        for gauge in (self.canary_weight, self.failed_checks):
            with contextlib.suppress(KeyError):
                gauge.remove(namespace, name)
