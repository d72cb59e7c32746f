"""Prometheus metrics of the predictor, per the metrics contract (names in ``contract``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from churnops_models import contract as c


class ServingMetrics:
    """Created once per process at the entry point (tests pass their own registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        mv = (c.LABEL_MODEL, c.LABEL_VERSION)
        self.requests = Counter(c.REQUESTS, "Scoring requests answered", [*mv, "protocol"], registry=registry)
        self.predictions = Counter(c.PREDICTIONS, "Customers scored", mv, registry=registry)
        self.errors = Counter(c.ERRORS, "Requests answered with an error status", [c.LABEL_MODEL, c.LABEL_CODE], registry=registry)
        self.latency = Histogram(
            c.LATENCY,
            "Latency by stage (features, predict, explain, audit, total)",
            [*mv, c.LABEL_STAGE],
            buckets=c.LATENCY_BUCKETS,
            registry=registry,
        )
        self.score = Histogram(c.SCORE, "Calibrated churn probability", mv, buckets=c.SCORE_BUCKETS, registry=registry)
        self.degraded = Counter(c.DEGRADED, "Predictions made without online features", [*mv, c.LABEL_REASON], registry=registry)
        self.feature_values = Counter(c.FEATURE_VALUES, "Feature values used for predictions", mv, registry=registry)
        self.missing = Counter(c.MISSING_FEATURE_VALUES, "Feature values that were missing (null)", mv, registry=registry)
        self.info = Gauge(c.MODEL_INFO, "Served model versions (1 = loaded and ready)", [*mv, "alias"], registry=registry)
