"""Opening the audit trail a writer was configured with: sink, signing key, trusted keys, anchor.

The server and ``churnops score`` build ``AuditSettings`` from their options at
the entry point and open the trail here, so both resolve keys the same way.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from churnops.serving.audit import AuditSink, FileAuditSink, FsyncPolicy, PostgresAuditSink
from churnops.serving.audit_anchor import Anchor
from churnops.serving.audit_keys import Signer, public_keys_for, signer_for


@dataclass(frozen=True)
class AuditSettings:
    log: Path  # the file trail (embedded)
    dsn: str | None = None  # the PostgreSQL trail (cluster); wins over log
    signing_key: Path | None = None  # default: $CHURNOPS_AUDIT_SIGNING_KEY, else the embedded key (created once)
    public_keys: Path | None = None  # keys a last record found on opening may be signed with (older kids after a rotation)
    anchor_dsn: str | None = None  # checkpoints of the file trail in PostgreSQL (rollback detection)
    anchor_name: str | None = None  # the log's name in the checkpoint table (default its resolved path)
    anchor_interval_s: float = 10.0


def open_sink(
    settings: AuditSettings,
    env: Mapping[str, str],
    fsync: FsyncPolicy = "interval",
    lock_wait_s: float = 0.0,
    signer: Signer | None = None,
) -> AuditSink:
    """The configured sink; ``signer``: a key already loaded (and checked) by the caller."""
    signer = signer or signer_for(settings.signing_key, env, settings.log.parent, embedded=settings.dsn is None)
    trusted = public_keys_for(settings.public_keys, env)  # besides its own key, which a writer always trusts
    if settings.dsn:
        return PostgresAuditSink(settings.dsn, signer, trusted)
    anchor = None
    if settings.anchor_dsn:
        anchor = Anchor(settings.anchor_dsn, settings.anchor_name or str(settings.log.resolve()), settings.anchor_interval_s)
    return FileAuditSink(settings.log, signer, fsync=fsync, lock_wait_s=lock_wait_s, trusted=trusted, anchor=anchor)
