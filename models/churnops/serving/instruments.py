"""Prometheus metrics of the predictor, per the metrics contract (names in ``contract``)."""

from __future__ import annotations

from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from churnops_contract import metric_names as c

# holdout metrics logged at training -> their names in churnops_contract.metric_names.PERFORMANCE_METRICS
REFERENCE_METRICS = {"roc_auc": "auc", "pr_auc": "pr_auc", "precision": "precision", "recall": "recall", "brier": "brier"}


class ServingMetrics:
    """Created once per process at the entry point (tests pass their own registry)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        mv = (c.LABEL_MODEL, c.LABEL_VERSION)
        self.requests = Counter(
            c.REQUESTS, "Scoring requests a model version received, answered or failed", [*mv, "protocol"], registry=registry
        )
        self.predictions = Counter(c.PREDICTIONS, "Customers scored", mv, registry=registry)
        self.errors = Counter(c.ERRORS, "Requests answered with an error status", [*mv, c.LABEL_CODE], registry=registry)
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
        self.unseen = Counter(
            c.UNSEEN_CATEGORIES, "Categorical values never seen in training (scored as missing)", [*mv, c.LABEL_FEATURE], registry=registry
        )
        self.performance = Gauge(
            c.PERFORMANCE,
            "Model performance; the predictor exports its version's holdout figures (source=reference)",
            [*mv, c.LABEL_SEGMENT, c.LABEL_METRIC, c.LABEL_SOURCE],
            registry=registry,
        )
        self.drift_skipped = Counter(
            c.DRIFT_SKIPPED, "Predictions the live drift monitor could not count (see the log)", mv, registry=registry
        )
        self.info = Gauge(c.MODEL_INFO, "Served model versions (1 = loaded and ready)", [*mv, "alias"], registry=registry)
        self.store_up = Gauge(
            c.ONLINE_STORE_UP, "Whether the online store answers reads (0 while they fail)", [c.LABEL_STORE], registry=registry
        )
        self.key_files_rejected = Gauge(
            c.KEY_FILES_REJECTED, "Files of the JWT key directory skipped as unusable (see the log)", registry=registry
        )

    def reference(self, model: str, version: str, run_metrics: Mapping[str, float]) -> None:
        """The version's holdout figures: what measured and estimated performance are compared with."""
        for logged, name in REFERENCE_METRICS.items():
            if logged in run_metrics:
                self.performance.labels(model, version, c.ALL_SEGMENTS, name, c.SOURCE_REFERENCE).set(run_metrics[logged])
