"""The engine for work that outgrows one process: Dask, or the calling process for small inputs.

Heavy steps (raw data generation, the feature build, batch scoring) are written
as independent tasks over partitions. An ``Engine`` runs them: ``InProcess``
one after another in the caller, ``DaskEngine`` on a Dask cluster (a
``LocalCluster`` of worker processes on this machine, or a running scheduler
such as a ``DaskCluster`` of the Dask Kubernetes operator). The task code is
the same on both, so results are the same; ``choice`` decides which engine a
command gets from the options and the input's size.
"""
