"""The contract between the ChurnOps model side and the operator.

Everything here is plain Python with no dependencies: the predictor, the
monitoring jobs, the embedded rollout runner and the kopf operator all import
it, and the operator image installs it without the ML stack.

- ``metrics``: Prometheus metric names, label keys and buckets;
- ``registry``: MLflow registered-model name, aliases and tag keys;
- ``policy``: when drift or a performance drop should start a retraining run;
- ``queries``: every PromQL question the deciders ask, by name;
- ``rollout``: the pure rollout core (spec, analysis, state machine, status, one pass) both drivers import.
"""
