-- MLflow's backend store, next to the feature store, owned by the same user.
CREATE DATABASE mlflow OWNER churnops;
