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
# Present only in some installs, so referenced as optional: TLS to PostgreSQL with a CA bundle (EKS and RDS),
# MLflow behind its basic-auth app (the chart's mlflow.bundled.auth), where steps sign in as the pipeline user,
# and the engine's Dask scheduler (the chart's engine.enabled), where heavy steps run their tasks.
OPTIONAL_SETTINGS = ("PGSSLMODE", "PGSSLROOTCERT", "MLFLOW_TRACKING_USERNAME", "DASK_SCHEDULER_ADDRESS")
OPTIONAL_SECRET_KEYS = {"mlflow-pipeline-password": "MLFLOW_TRACKING_PASSWORD"}
POSTGRES_CA = "churnops-postgresql-ca"  # ConfigMap with the server's CA bundle (PGSSLROOTCERT points into it)
POSTGRES_CA_DIR = "/etc/churnops/postgresql-ca"


def with_store_access(task: dsl.PipelineTask) -> dsl.PipelineTask:
    """``task`` with the stores' settings and credentials in its environment."""
    kubernetes.use_config_map_as_env(task, config_map_name=STORE_SETTINGS, config_map_key_to_env={k: k for k in SETTINGS})
    kubernetes.use_secret_as_env(task, secret_name=CREDENTIALS, secret_key_to_env=SECRET_KEYS)
    kubernetes.use_config_map_as_env(
        task, config_map_name=STORE_SETTINGS, config_map_key_to_env={k: k for k in OPTIONAL_SETTINGS}, optional=True
    )
    kubernetes.use_secret_as_env(task, secret_name=CREDENTIALS, secret_key_to_env=OPTIONAL_SECRET_KEYS, optional=True)
    kubernetes.use_config_map_as_volume(task, config_map_name=POSTGRES_CA, mount_path=POSTGRES_CA_DIR, optional=True)
    return task
