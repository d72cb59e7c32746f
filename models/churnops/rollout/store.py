"""The embedded ModelDeployment: its spec and status as files under ``<data-dir>/rollout/<name>/``.

A cluster keeps a ModelDeployment in the Kubernetes API; one machine keeps it
in a directory. The document has the resource's shape (``spec`` as the CRD
defines it, parsed by the rollout core's ``churnops_contract.rollout.spec.parse``, and
the ``status`` the operator writes), so the same decision functions read and
write it. Alongside it:

- ``deployment.json``: the resource, replaced atomically on every change, with
  its last events (the embedded mode's ``kubectl get events``);
- ``timeline.jsonl``: every decision with its figures, appended, never
  rewritten (the status keeps only the operator's bounded history);
- ``routing.json``: the routing table the predictor follows
  (``churnops.serving.routing_table``);
- ``scrapes.json``: the runner's counter snapshots (``churnops.rollout.scraped``);
- ``runs/``: retraining runs started for this deployment.

Two locks, both ``flock`` on files here, so the kernel releases them when a
process dies: ``.lock`` is held for each read-modify-write of the resource
(the runner's step, a manual promotion), ``runner.lock`` for as long as a
runner drives the deployment, so two runners never drive one deployment.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TextIO

from churnops.errors import ConflictError, InvalidInputError, NotFoundError
from churnops.files import replace_text
from churnops.serving.routing_table import default_path
from churnops_contract.rollout.spec import API_VERSION, KIND, DeploymentSpec, SpecError, parse

NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")  # a Kubernetes object name: it is also a directory name
EVENTS_LIMIT = 100
RESOURCE_FILE = "deployment.json"
TIMELINE_FILE = "timeline.jsonl"
LOCK_FILE = ".lock"
RUNNER_LOCK_FILE = "runner.lock"


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise InvalidInputError(f"{name!r} is not a valid name (lower-case letters, digits and '-', at most 63)", field="--name")
    return name


def checked_spec(spec: Mapping[str, Any]) -> DeploymentSpec:
    """The operator's parse, with its field path kept in the project's error model."""
    try:
        return parse(spec)
    except SpecError as e:
        path, _, message = str(e).partition(": ")
        raise InvalidInputError(message or str(e), field=path) from None


def merge(base: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes`` laid over it, objects merged key by key (a JSON merge patch; None removes a key)."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, Mapping):
            out[key] = merge(out[key] if isinstance(out.get(key), Mapping) else {}, value)
        else:
            out[key] = value
    return out


@dataclass(frozen=True)
class Deployment:
    name: str
    spec: dict[str, Any]
    generation: int = 1
    created: float = 0.0
    status: dict[str, Any] = field(default_factory=dict)
    events: tuple[dict[str, Any], ...] = ()
    uid: str = ""  # one per deployment object: a deleted and re-created deployment never adopts its predecessor's runs

    def parsed(self) -> DeploymentSpec:
        return checked_spec(self.spec)

    def to_doc(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": self.name, "uid": self.uid, "generation": self.generation, "creationTimestamp": self.created},
            "spec": self.spec,
            "status": self.status,
            "events": list(self.events),
        }

    @classmethod
    def from_doc(cls, doc: Any, where: str) -> Deployment:
        if not isinstance(doc, Mapping) or doc.get("kind") != KIND:
            raise InvalidInputError(f"not a {KIND} document", field=where)
        meta = doc.get("metadata") or {}
        generation = meta.get("generation")
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
            raise InvalidInputError(f"metadata.generation must be a positive integer, got {generation!r}", field=where)
        created = float(meta.get("creationTimestamp") or 0.0)
        uid = meta.get("uid")
        if not isinstance(uid, str) or not uid:  # a document written before uids: derived from what identifies it
            uid = hashlib.sha256(f"{meta.get('name')}/{created}".encode()).hexdigest()[:32]
        return cls(
            uid=uid,
            name=str(meta.get("name")),
            spec=dict(doc.get("spec") or {}),
            generation=generation,
            created=created,
            status=dict(doc.get("status") or {}),
            events=tuple(doc.get("events") or ()),
        )

    def with_spec(self, spec: dict[str, Any]) -> Deployment:
        """A spec change bumps the generation, as the API server does; an identical spec changes nothing."""
        if spec == self.spec:
            return self
        return replace(self, spec=spec, generation=self.generation + 1)

    def with_events(self, events: Sequence[dict[str, Any]]) -> Deployment:
        return replace(self, events=(*self.events, *events)[-EVENTS_LIMIT:]) if events else self


def write_json(path: Path, doc: Any) -> None:
    """Replace ``path`` atomically (write, fsync, rename)."""
    replace_text(path, json.dumps(doc, indent=1, allow_nan=False) + "\n")


class DeploymentStore:
    """The files of one deployment (see the module docstring)."""

    def __init__(self, data_dir: Path, name: str) -> None:
        self.data_dir = data_dir
        self.name = check_name(name)
        self.routing_path = default_path(data_dir, name)
        self.dir = self.routing_path.parent

    @property
    def resource_path(self) -> Path:
        return self.dir / RESOURCE_FILE

    @property
    def timeline_path(self) -> Path:
        return self.dir / TIMELINE_FILE

    @property
    def runs_dir(self) -> Path:
        return self.dir / "runs"

    def exists(self) -> bool:
        return self.resource_path.exists()

    def load(self) -> Deployment:
        try:
            text = self.resource_path.read_text()
        except FileNotFoundError:
            raise NotFoundError(
                f"no deployment {self.name!r} under {self.dir.parent} (create it with `churnops rollout start`)", field="--name"
            ) from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"not JSON ({e})", field=str(self.resource_path)) from None
        return Deployment.from_doc(doc, str(self.resource_path))

    def save(self, deployment: Deployment) -> None:
        write_json(self.resource_path, deployment.to_doc())

    def create_or_update(
        self, changes: Mapping[str, Any], defaults: Mapping[str, Any] | None = None, now: float | None = None
    ) -> Deployment:
        """Lay ``changes`` over the spec (over ``defaults`` for a new deployment), check it, save it; call with the lock held."""
        current = self.load() if self.exists() else None
        spec = merge(current.spec if current is not None else merge({}, defaults or {}), changes)
        checked_spec(spec)
        fresh = Deployment(self.name, spec, created=now or time.time(), uid=uuid.uuid4().hex)
        updated = current.with_spec(spec) if current is not None else fresh
        if updated is not current:
            self.save(updated)
        return updated

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the resource for one read-modify-write (blocks while another process holds it)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with (self.dir / LOCK_FILE).open("a") as f:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)

    def claim(self) -> TextIO:
        """Become the deployment's only runner until the returned file is closed (or the process ends)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        f = (self.dir / RUNNER_LOCK_FILE).open("a+")
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise ConflictError(f"deployment {self.name!r} is already driven by a runner ({holder})", field="--name") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()}\n")
        f.flush()
        return f

    def record(self, entries: Sequence[Mapping[str, Any]]) -> None:
        """Append decisions to the timeline (one JSON object per line; a torn last line is skipped when read)."""
        if not entries:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        text = "".join(json.dumps(e, allow_nan=False, sort_keys=True) + "\n" for e in entries)
        with self.timeline_path.open("a") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())

    def timeline(self) -> list[dict[str, Any]]:
        """Every recorded decision, oldest first."""
        try:
            lines = self.timeline_path.read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # only a write cut short by a crash leaves a partial line, and only at the end
        return out

    def read_aux(self, name: str) -> dict[str, Any] | None:
        """A helper document of the runner (e.g. scrapes.json); None when absent or unreadable (it is rebuilt)."""
        try:
            doc = json.loads((self.dir / name).read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return doc if isinstance(doc, dict) else None

    def write_aux(self, name: str, doc: Mapping[str, Any]) -> None:
        write_json(self.dir / name, doc)


def deployments(data_dir: Path) -> list[str]:
    """Names of the deployments under ``data_dir``."""
    root = data_dir / "rollout"
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / RESOURCE_FILE).is_file())
