"""Names shared by the serving, monitoring and rollout components (defined once, here).

This module imports nothing: the operator, which must not pull in the ML
stack, reads metric names and label keys from it too.
"""

from __future__ import annotations

METRIC_PREFIX = "churnops_"

# Prometheus metric names (the suffixes _total/_bucket are added by the client library)
REQUESTS = "churnops_requests"
PREDICTIONS = "churnops_predictions"
ERRORS = "churnops_errors"
LATENCY = "churnops_latency_seconds"
SCORE = "churnops_score"
DEGRADED = "churnops_degraded_predictions"
FEATURE_VALUES = "churnops_feature_values"
MISSING_FEATURE_VALUES = "churnops_missing_feature_values"
MODEL_INFO = "churnops_model_info"

# label keys
LABEL_MODEL = "model"
LABEL_VERSION = "version"
LABEL_STAGE = "stage"
LABEL_CODE = "code"
LABEL_REASON = "reason"

STAGES = ("features", "predict", "explain", "audit", "total")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)

# MLflow aliases
CHAMPION = "champion"
CHALLENGER = "challenger"
