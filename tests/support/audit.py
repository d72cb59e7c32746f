"""The audit trail's keys in tests: every writer signs with the session's key (``CHURNOPS_AUDIT_KEY_DIR``, set in conftest)."""

from __future__ import annotations

import os
from pathlib import Path

from churnops.serving.audit import FileAuditSink, FsyncPolicy
from churnops.serving.audit_keys import PublicKeys, Signer, public_keys_for, signer_for


def signer(log: Path) -> Signer:
    return signer_for(None, os.environ, log.parent)


def audit_keys() -> PublicKeys:
    """The public keys the session's writers sign with."""
    return public_keys_for(None, os.environ)


def file_sink(log: Path, fsync: FsyncPolicy = "interval") -> FileAuditSink:
    return FileAuditSink(log, signer(log), fsync=fsync)
