"""How pipeline steps reach the stores and the registry on a cluster.

Each step gets the feature store's and MLflow's settings from the ConfigMap
``STORE_SETTINGS`` and the credentials from the Secret ``CREDENTIALS`` (both
created by the Helm chart in the namespace where Kubeflow Pipelines runs the
steps; see ``pipelines.namespace`` in charts/churnops/values.yaml). Locally,
``kfp.local`` ignores these platform settings and the steps read the caller's
environment.
"""

from kfp import dsl, kubernetes

STORE_SETTINGS = "churnops-pipeline-env"  # ConfigMap: CHURNOPS_* settings and MLFLOW_TRACKING_URI, by their env names
CREDENTIALS = "churnops-credentials"  # Secret: the same one the operator and the predictor read
SETTINGS = (
    "CHURNOPS_FEAST_PROJECT",
    "CHURNOPS_PG_HOST",
    "CHURNOPS_PG_PORT",
    "CHURNOPS_PG_DATABASE",
    "CHURNOPS_PG_USER",
    "CHURNOPS_PG_SCHEMA",
    "CHURNOPS_PG_SSLMODE",
    "CHURNOPS_REDIS",
    "MLFLOW_TRACKING_URI",
)
SECRET_KEYS = {"postgres-password": "CHURNOPS_PG_PASSWORD"}


def with_store_access(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """``task`` with the stores' settings and credentials in its environment."""
    kubernetes.use_config_map_as_env(task, config_map_name=STORE_SETTINGS, config_map_key_to_env={k: k for k in SETTINGS})
    kubernetes.use_secret_as_env(task, secret_name=CREDENTIALS, secret_key_to_env=SECRET_KEYS)
    return task
