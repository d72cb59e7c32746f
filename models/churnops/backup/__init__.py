"""Snapshots of a running embedded data directory, and their restore elsewhere.

What must survive a lost machine lives in one data directory (``churnops.layout``)
plus the audit key directory outside it. A snapshot is taken while servers, the
prediction-log writer and a rollout runner keep writing, so no file is copied
blindly:

- SQLite databases (MLflow's registry, Feast's online store, the privacy store,
  any other file with the SQLite header) through SQLite's online backup API: one
  read transaction, so the copy is a state the database committed, never a page
  mix a file copy of a live database can produce;
- the rollout state (``rollout/<name>/``) and the MLflow database are taken while
  every deployment's lock is held, the lock a runner holds for each step: a step
  moves routing, status and registry aliases together, so the snapshot holds
  them as one step left them;
- the audit trail: its head file first, then the log up to its last signed
  record. The writer appends a batch before it moves the head and holds its
  lock for its whole life (a backup waiting for it would wait for the server to
  stop), so a log read after its head always reaches that head, and a cut at
  the last signature leaves no unsigned tail;
- other append-only JSON lines files are cut at their last complete line;
- the prediction log's Parquet segments and MLflow's artifacts are never
  modified in place, so they are copied (or hard-linked with ``--link``) while
  the prediction log's maintenance lock keeps erasure and compaction still;
- the audit keys: private keys stay 0600, the snapshot directory is 0700.

``manifest.json`` (written last: a snapshot without it is incomplete) lists
every file with its size, sha256, kind and mode, plus what the registry and
the deployments served at snapshot time. ``restore`` checks every digest before
it writes anything, restores into any path (MLflow's absolute ``file://``
artifact locations are rewritten) and adds the keys to a key directory without
replacing a different key.
"""
