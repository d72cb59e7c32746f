"""The rollout core both drivers share: the kopf operator (in a cluster) and the embedded runner (on one machine).

Pure and dependency-free (import-linter checks it); each driver adds only I/O.

- ``spec``: the ModelDeployment spec, parsed with field-path errors;
- ``observe``: answers to the contract's named queries -> observations (one builder);
- ``analysis``: the canary checks (sequential tests) and their verdict;
- ``machine``: the rollout state machine (steps, holds, deadline, rollback, withdrawal);
- ``retraining``: the retraining policy's state between evaluations, and runs;
- ``status``: conditions and phase; ``manual``: decisions a person takes;
- ``core``: one pass, ``decide(spec, status, world, now)``, and what a driver applies from a status.
"""
