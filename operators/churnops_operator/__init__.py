"""The ChurnOps operator: reconciles ``ModelDeployment`` resources into KServe serving, canary rollouts and retraining.

- ``spec``: the resource's spec as frozen dataclasses;
- ``decisions``: pure functions (analysis, rollout, serving objects, retraining, status);
- ``kube``, ``prom``, ``mlflow``, ``kfp``: one module per outside system, over HTTP;
- ``reconcile``: one pass for one resource, wiring the two together;
- ``handlers``: kopf registration; ``main``: the entry point.

Importing this package starts nothing and imports no ML library.
"""
