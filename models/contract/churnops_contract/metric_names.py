"""Prometheus metric names and label keys (the metrics contract).

The predictor and the monitoring jobs export these; Prometheus rules, Grafana
dashboards, the embedded rollout runner and the operator read them. Counter
names are given without ``_total`` (the client library adds it); use
``total(name)`` where a query needs the exported name.
"""

from __future__ import annotations

METRIC_PREFIX = "churnops_"

# --- serving ---------------------------------------------------------------------------------
REQUESTS = "churnops_requests"  # counter {model, version, protocol}
PREDICTIONS = "churnops_predictions"  # counter {model, version}
ERRORS = "churnops_errors"  # counter {model, version, code}: every status >= 400 the server sends ("-" outside a model)
LATENCY = "churnops_latency_seconds"  # histogram {model, version, stage}
SCORE = "churnops_score"  # histogram {model, version}: calibrated churn probability
DEGRADED = "churnops_degraded_predictions"  # counter {model, version, reason}
FEATURE_VALUES = "churnops_feature_values"  # counter {model, version}
MISSING_FEATURE_VALUES = "churnops_missing_feature_values"  # counter {model, version}
UNSEEN_CATEGORIES = "churnops_unseen_categories"  # counter {model, version, feature}
MODEL_INFO = "churnops_model_info"  # gauge {model, version, alias}: 1 while loaded and ready
ONLINE_STORE_UP = "churnops_online_store_up"  # gauge {store}: 0 while the online store's reads fail (sqlite, redis)
KEY_FILES_REJECTED = "churnops_auth_key_files_rejected"  # gauge: files of the JWT key directory skipped as unusable

# --- drift (live in the predictor, and from the window job) ------------------------------------
DRIFT_SCORE = "churnops_drift_score"  # gauge {model, version, feature, method}
DRIFT_PVALUE = "churnops_drift_pvalue"  # gauge {model, version, feature, method}: tests with a p-value (ks, chi2)
DRIFTED_FEATURES_SHARE = "churnops_drifted_features_share"  # gauge {model, version}: after multiple-testing control
DRIFT_DETECTED = "churnops_drift_detected"  # gauge {model, version}: 1 when the window is judged drifted
SCORE_DRIFT = "churnops_score_drift"  # gauge {model, version, method}: prediction (score) drift
FEATURE_QUALITY = "churnops_feature_quality"  # gauge {model, version, feature, check}: missing / out_of_range / unseen rate
DRIFT_WINDOW_SIZE = "churnops_drift_window_size"  # gauge {model, version}: predictions in the live window
DRIFT_SKIPPED = "churnops_drift_skipped_predictions"  # counter {model, version}: rows the live monitor could not count

# --- performance from delayed labels, and estimated before they arrive --------------------------
PERFORMANCE = "churnops_performance"  # gauge {model, version, segment, metric, source}
LABEL_COVERAGE = "churnops_label_coverage"  # gauge {model, version}: share of predictions with a label
LABELLED_PREDICTIONS = "churnops_labelled_predictions"  # gauge {model, version}: predictions with a label behind the measured figures

# --- business and fairness -------------------------------------------------------------------------
CHURN_RATE = "churnops_churn_rate"  # gauge {model, version, segment, source}
REVENUE_AT_RISK = "churnops_revenue_at_risk"  # gauge {model, version, segment, band}: monthly revenue x probability
EXPECTED_SAVINGS = "churnops_expected_savings"  # gauge {model, version, segment}: campaign net savings
CAMPAIGN_ROI = "churnops_campaign_roi"  # gauge {model, version, segment}
SATISFACTION = "churnops_satisfaction"  # gauge {model, version, band, metric}: csat / nps by risk band
FAIRNESS_GAP = "churnops_fairness_gap"  # gauge {model, version, metric, source}

# --- prediction log ---------------------------------------------------------------------------------
PREDICTION_LOG_RECORDS = "churnops_prediction_log_records"  # counter {sink}
PREDICTION_LOG_DROPPED = "churnops_prediction_log_dropped"  # counter {sink, reason}
PREDICTION_LOG_LAST_FLUSH = "churnops_prediction_log_last_flush_timestamp_seconds"  # gauge {sink}
PREDICTION_LOG_QUEUE = "churnops_prediction_log_queue"  # gauge {sink}: records waiting to be written

# --- label keys ------------------------------------------------------------------------------------
LABEL_MODEL = "model"
LABEL_VERSION = "version"
LABEL_STAGE = "stage"
LABEL_CODE = "code"
LABEL_REASON = "reason"
LABEL_STORE = "store"
LABEL_FEATURE = "feature"
LABEL_METHOD = "method"
LABEL_SEGMENT = "segment"
LABEL_BAND = "band"
LABEL_METRIC = "metric"
LABEL_SOURCE = "source"  # measured (delayed labels) or estimated (from calibrated scores)
LABEL_CHECK = "check"
LABEL_SINK = "sink"
LABEL_PROTOCOL = "protocol"
LABEL_ALIAS = "alias"

SOURCE_MEASURED = "measured"
SOURCE_ESTIMATED = "estimated"
SOURCE_REFERENCE = "reference"  # churnops_performance{source="reference"}: the served version's holdout figure, exported at load
ALL_SEGMENTS = "all"  # the segment label's value for figures over every segment
SCORE_FEATURE = "__score__"  # the feature label's value for prediction (score) drift

# reason values of the drop counter (erased: rows of customers erased on request, dropped on purpose)
PREDICTION_LOG_DROP_REASONS = ("queue_full", "closed", "invalid", "rejected", "unwritten_at_close", "erased")
PREDICTOR_JOB = "churnops-predictor"  # Prometheus job of predictor targets (ChurnOpsPredictorDown selects job=~"churnops-predictor.*")

STAGES = ("features", "predict", "explain", "audit", "total")
DRIFT_METHODS = ("psi", "js", "ks", "chi2")
QUALITY_CHECKS = ("missing", "out_of_range", "unseen")
PERFORMANCE_METRICS = ("auc", "pr_auc", "precision", "recall", "brier", "ece", "calibration_ratio", "calibration_z")
LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
SCORE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def total(counter: str) -> str:
    """The exported name of a counter (the client library appends ``_total``)."""
    return f"{counter}_total"
