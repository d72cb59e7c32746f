"""The snapshot's manifest and the pure rules around it: which files are what, and what a snapshot must hold.

Kept free of I/O so the rules (what is skipped, what is copied how, what a
restore refuses) can be read and tested on their own.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any, Literal

from churnops.errors import IntegrityError

FORMAT = "churnops.backup/v1"
MANIFEST = "manifest.json"
DATA = "data"  # the data directory's files, under their relative paths
KEYS = "keys"  # the audit key directory's files
SQLITE_HEADER = b"SQLite format 3\x00"

Kind = Literal["sqlite", "audit", "audit-head", "jsonl", "rollout", "immutable", "file", "key", "skip"]

# SQLite's own side files: the backup API reads through them, and a copy would be stale
SQLITE_SIDE = ("-wal", "-shm", "-journal")
# lock files hold no state (the kernel releases flock with the process) and name a pid of this machine
LOCK_NAMES = frozenset({".lock", "runner.lock", ".maintenance.lock"})


# what a restore into an existing directory leaves inside it: never part of a later snapshot
RESTORE_LEFTOVERS = (".restoring-", ".before-restore-")
DEFAULT_DIR_MODE = 0o700
PERMISSION_BITS = 0o777  # never setuid, setgid or sticky from a manifest


def kind_of(rel: PurePosixPath, header: bytes, has_head: bool = False) -> Kind:
    """How a file of the data directory is captured, from its path relative to it, its first 16 bytes and
    whether a ``<name>.head`` sits beside it (an audit log wherever it is: ``serve --audit-log`` may put one anywhere)."""
    name = rel.name
    if name.endswith(SQLITE_SIDE) or name in LOCK_NAMES or name.endswith(".lock"):
        return "skip"
    if name.startswith(".") and name.endswith(".tmp"):
        return "skip"  # a write in flight (atomic replace): the finished file is what counts
    if header.startswith(SQLITE_HEADER):
        return "sqlite"
    top = rel.parts[0] if rel.parts else ""
    if name.endswith(".jsonl") and (top == "audit" or has_head):
        return "audit"
    if name.endswith(".jsonl.head"):
        return "audit-head"
    if top == "rollout" and len(rel.parts) >= 3:
        return "rollout"
    if name.endswith(".jsonl"):
        return "jsonl"
    if (top == "predictions" and name.endswith(".parquet")) or rel.parts[:2] == ("mlflow", "artifacts"):
        return "immutable"
    return "file"


@dataclass(frozen=True)
class Entry:
    path: str  # relative to the snapshot's root, POSIX separators: data/... or keys/...
    size: int
    sha256: str
    kind: str
    mode: int


@dataclass(frozen=True)
class AuditCut:
    log: str  # relative to the data directory
    records: int  # the last seq in the snapshot
    head_seq: int  # the head file's seq at snapshot time (0: none)


@dataclass
class Manifest:
    created: str
    source: str  # the data directory's absolute path when the snapshot was taken
    host: str
    key_dir: str | None
    entries: list[Entry] = field(default_factory=list)
    audit: list[AuditCut] = field(default_factory=list)
    aliases: dict[str, dict[str, str]] = field(default_factory=dict)  # registered model -> alias -> version
    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> stable, canary, weight, phase
    dirs: dict[str, int] = field(default_factory=dict)  # data directory's folders (relative, "." itself) -> mode
    notes: list[str] = field(default_factory=list)  # what the backup said about the keys it took
    seconds: float = 0.0
    format: str = FORMAT

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1, sort_keys=True) + "\n"

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.entries)


def _field(doc: Mapping[str, Any], key: str, kind: type, where: str) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise IntegrityError(f"{where}: {key!r} must be a {kind.__name__}, got {value!r}")
    return value


def parse(text: str, where: str) -> Manifest:
    """The manifest from its JSON; anything missing or malformed is an ``IntegrityError`` naming the field."""
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise IntegrityError(f"{where}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise IntegrityError(f"{where}: not a JSON object")
    if doc.get("format") != FORMAT:
        raise IntegrityError(f"{where}: format {doc.get('format')!r}, expected {FORMAT!r}")
    entries = []
    for i, raw in enumerate(_field(doc, "entries", list, where)):
        at = f"{where}: entries[{i}]"
        if not isinstance(raw, dict):
            raise IntegrityError(f"{at}: not an object")
        entry = Entry(
            _field(raw, "path", str, at), _field(raw, "size", int, at), _field(raw, "sha256", str, at), _field(raw, "kind", str, at),
            _field(raw, "mode", int, at),
        )  # fmt: skip
        check_path(entry.path, at)
        entries.append(entry)
    audit = [AuditCut(str(a["log"]), int(a["records"]), int(a["head_seq"])) for a in doc.get("audit") or []]
    key_dir = doc.get("key_dir")
    return Manifest(
        created=_field(doc, "created", str, where),
        source=_field(doc, "source", str, where),
        host=str(doc.get("host", "")),
        key_dir=key_dir if isinstance(key_dir, str) else None,
        entries=entries,
        audit=audit,
        aliases=dict(doc.get("aliases") or {}),
        deployments=dict(doc.get("deployments") or {}),
        dirs=_dirs(doc.get("dirs") or {}, where),
        notes=[str(n) for n in doc.get("notes") or []],
        seconds=float(doc.get("seconds") or 0.0),
    )


def _dirs(raw: object, where: str) -> dict[str, int]:
    if not isinstance(raw, dict):
        raise IntegrityError(f"{where}: 'dirs' must be an object")
    out = {}
    for rel, mode in raw.items():
        if rel != ".":
            check_path(f"{DATA}/{rel}", f"{where}: dirs")
        if not isinstance(mode, int) or isinstance(mode, bool):
            raise IntegrityError(f"{where}: dirs[{rel!r}] must be an integer mode, got {mode!r}")
        out[str(rel)] = mode & PERMISSION_BITS
    return out


def key_name_ok(name: str) -> bool:
    """The only names a key directory receives from a snapshot: ``*.pub`` and ``*.key``, not hidden."""
    return name.endswith((".pub", ".key")) and not name.startswith(".") and "/" not in name


def check_path(path: str, where: str) -> None:
    """A manifest path stays inside the snapshot: relative, under data/ or keys/, no '..'."""
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts or p.parts[0] not in (DATA, KEYS) or len(p.parts) < 2:
        raise IntegrityError(f"{where}: path {path!r} is not a file under {DATA}/ or {KEYS}/")
    if p.parts[0] == KEYS and len(p.parts) != 2:
        raise IntegrityError(f"{where}: key file {path!r} must sit directly under {KEYS}/")
    if p.parts[0] == KEYS and not key_name_ok(p.name):
        raise IntegrityError(f"{where}: key file {path!r} must be named *.pub or *.key")
    if "\\" in path or any(part in ("", ".") for part in path.split("/")):
        raise IntegrityError(f"{where}: path {path!r} is not in normal form")


def problems(manifest: Manifest, found: Mapping[str, tuple[int, str | None]]) -> list[str]:
    """What differs between the manifest and the files found (path -> (size, sha256 or None when not hashed)).

    Every listed file must be present with its size and digest; a file the manifest does not list is refused
    too, since restoring it would bring in something no digest vouches for.
    """
    out = []
    listed = {e.path for e in manifest.entries}
    if len(listed) != len(manifest.entries):
        out.append("the manifest lists a path more than once (altered)")
    for e in manifest.entries:
        have = found.get(e.path)
        if have is None:
            out.append(f"{e.path}: missing (incomplete snapshot)")
        elif have[0] != e.size:
            out.append(f"{e.path}: {have[0]:,} bytes where the manifest says {e.size:,} (truncated or altered)")
        elif have[1] is not None and have[1] != e.sha256:
            out.append(f"{e.path}: sha256 {have[1]} does not match the manifest's {e.sha256} (altered)")
    out += [f"{path}: not listed in the manifest (added after the snapshot)" for path in sorted(set(found) - listed)]
    return out


def private_key_name(name: str) -> bool:
    """Anything in the key directory but a public key is treated as private (0600)."""
    return not name.endswith(".pub")


def dangling(locations: Iterable[str], root_uri: str) -> list[str]:
    """``file://`` locations that do not point under ``root_uri`` (after a restore: still at the old place)."""
    prefix = root_uri.rstrip("/") + "/"
    return sorted({loc for loc in locations if loc.startswith("file://") and not (loc + "/").startswith(prefix)})
