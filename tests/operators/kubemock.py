"""kmock's stateful Kubernetes API with the realism the operator tests need, served from a thread.

kmock stores objects and streams watch events but, by design, assigns no
``uid``, ``resourceVersion`` or ``generation`` and knows no RBAC. This
subclass adds:

- ``uid``, ``creationTimestamp``, a cluster-wide ``resourceVersion`` bumped on
  every write, and ``generation`` bumped when ``spec`` changes;
- optimistic concurrency: a patch carrying a stale ``metadata.resourceVersion`` gets 409;
- the status subresource: ``/status`` writes change only ``.status``, main
  writes leave ``.status`` alone (for kinds that declare the subresource);
- RBAC: every request made with the operator's token is checked against the
  ClusterRole in ``manifests/rbac/operator.yaml``; a refused call answers 403
  and is recorded in ``denied`` so that the test fails;
- fault injection: ``inject(method, plural, status, times)`` answers the next
  matching requests with that status (409 conflicts, 500s);
- token expiry: ``rotate(token)`` makes the operator's old token answer 401, as
  a projected service-account token does once the kubelet has rotated it;
- an audit log of the operator's writes (``writes``: when, User-Agent, method, path), which
  tells replicas apart during a leader hand-over.
"""

from __future__ import annotations

import asyncio
import contextvars
import copy
import datetime
import itertools
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import attrs
import kmock
import yaml
from kmock._internal import parsing, rendering
from kmock._internal.k8s import KubernetesEmulator, KubernetesError, KubernetesObjectNotFoundError

OPERATOR_TOKEN = "operator-token"  # a test credential, not a secret
ADMIN_TOKEN = "admin-token"
RBAC_FILE = Path(__file__).resolve().parents[2] / "manifests" / "rbac" / "operator.yaml"

RESOURCES: dict[str, dict[str, Any]] = {
    "churnops.io/v1alpha1/modeldeployments": {"kind": "ModelDeployment", "namespaced": True, "subresources": {"status"}},
    "serving.kserve.io/v1beta1/inferenceservices": {"kind": "InferenceService", "namespaced": True, "subresources": {"status"}},
    "gateway.networking.k8s.io/v1/httproutes": {"kind": "HTTPRoute", "namespaced": True, "subresources": {"status"}},
    "policy/v1/poddisruptionbudgets": {"kind": "PodDisruptionBudget", "namespaced": True, "subresources": {"status"}},
    # kopf's peering objects (kopf's peering.yaml): the replicas' keep-alives are written into .status
    "kopf.dev/v1/clusterkopfpeerings": {"kind": "ClusterKopfPeering", "namespaced": False, "subresources": set()},
    "v1/events": {"kind": "Event", "namespaced": True, "subresources": set()},
    "events.k8s.io/v1/events": {"kind": "Event", "namespaced": True, "subresources": set()},
    "v1/namespaces": {"kind": "Namespace", "namespaced": False, "subresources": set()},
    "apiextensions.k8s.io/v1/customresourcedefinitions": {"kind": "CustomResourceDefinition", "namespaced": False, "subresources": set()},
}
VERBS = {"get", "list", "watch", "create", "update", "patch", "delete"}
# The request a task is matching against kmock's reactions (see RealisticKubernetes._handle).
_MATCHING: contextvars.ContextVar[rendering.Request | None] = contextvars.ContextVar("kmock_matching", default=None)


@dataclass(frozen=True)
class Rule:
    groups: frozenset[str]
    resources: frozenset[str]
    verbs: frozenset[str]

    def allows(self, group: str, resource: str, verb: str) -> bool:
        return (
            (group in self.groups or "*" in self.groups)
            and (resource in self.resources or "*" in self.resources)
            and (verb in self.verbs or "*" in self.verbs)
        )


def operator_rules(path: Path = RBAC_FILE) -> list[Rule]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "ClusterRole"]
    return [
        Rule(frozenset(r.get("apiGroups") or []), frozenset(r.get("resources") or []), frozenset(r.get("verbs") or []))
        for d in docs
        for r in d.get("rules") or []
    ]


def verb_of(request: rendering.Request) -> str | None:
    action = request.action
    if action is None:
        return "update" if request.method == kmock.method.PUT else None
    return {
        kmock.action.LIST: "list",
        kmock.action.WATCH: "watch",
        kmock.action.FETCH: "get",
        kmock.action.CREATE: "create",
        kmock.action.UPDATE: "patch",
        kmock.action.DELETE: "delete",
    }[action]


@dataclass
class Write:
    at: float  # time.monotonic() when the API server received it
    agent: str
    method: str
    path: str
    precondition: str | None  # the metadata.resourceVersion the write was conditional on
    status: int = 0  # the answer: 200/201, or the error's code


@dataclass
class Fault:
    method: str
    plural: str
    status: int
    times: int


@attrs.define(kw_only=True)
class RealisticKubernetes(KubernetesEmulator):
    rules: list[Rule] = attrs.field(factory=operator_rules)
    denied: list[str] = attrs.field(factory=list)
    faults: list[Fault] = attrs.field(factory=list)
    injected: list[str] = attrs.field(factory=list)
    operator_token: str = OPERATOR_TOKEN
    unauthorized: list[str] = attrs.field(factory=list)  # calls made with an expired token
    writes: list[Write] = attrs.field(factory=list)
    holds: dict[str, asyncio.Event] = attrs.field(factory=dict)  # plural -> the operator's GETs of it wait until it is set
    held: list[str] = attrs.field(factory=list)  # GETs waiting on a hold now
    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1000))

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        for key, info in RESOURCES.items():
            self.resources[key] = kmock.ResourceInfo(
                kind=info["kind"], namespaced=info["namespaced"], subresources=info["subresources"], verbs=VERBS
            )

    def rotate(self, token: str) -> None:
        self.operator_token = token

    def inject(self, method: str, plural: str, status: int, times: int = 1) -> None:
        self.faults.append(Fault(method.upper(), plural, status, times))

    def hold(self, plural: str) -> None:
        """The operator's GETs of ``plural`` wait until ``release``: a read the API server is slow to answer."""
        self.holds[plural] = asyncio.Event()

    def release(self, plural: str) -> None:
        self.holds.pop(plural).set()

    async def _held(self, request: rendering.Request) -> None:
        plural = request.resource.plural if request.resource is not None else None
        hold = self.holds.get(str(plural))
        if hold is None or request.method != kmock.method.GET or request.headers.get("Authorization") != f"Bearer {self.operator_token}":
            return
        path = request.url.path
        self.held.append(path)
        try:
            await hold.wait()
        finally:
            self.held.remove(path)

    def _check_rbac(self, request: rendering.Request) -> None:
        if request.resource is None or request.resource.plural is None:
            return  # discovery (/api, /apis/<group>/<version>, /version): granted to every authenticated user
        auth = request.headers.get("Authorization", "")
        if auth == f"Bearer {ADMIN_TOKEN}":
            return
        verb = verb_of(request)
        group = request.resource.group or ""
        resource = str(request.resource.plural) + (f"/{request.subresource}" if request.subresource else "")
        if auth.startswith("Bearer operator-token") and auth != f"Bearer {self.operator_token}":
            self.unauthorized.append(f"{request.method} {request.url.path}")
            raise KubernetesError(status=401, reason="Unauthorized", message="token expired")
        if auth != f"Bearer {self.operator_token}" or verb is None or not any(r.allows(group, resource, verb) for r in self.rules):
            self.denied.append(f"{request.method} {request.url.path} ({verb} {group}/{resource})")
            raise KubernetesError(status=403, reason="Forbidden", message=f"RBAC: {verb} {group}/{resource} is not allowed")

    def _inject_fault(self, request: rendering.Request) -> None:
        if request.resource is None:
            return
        for fault in self.faults:
            if fault.times > 0 and fault.method == request.method and fault.plural == request.resource.plural:
                fault.times -= 1
                self.injected.append(f"{fault.status} {request.method} {request.url.path}")
                raise KubernetesError(
                    status=fault.status, reason="Conflict" if fault.status == 409 else "InternalError", message="injected"
                )

    def _realistic(self, request: rendering.Request) -> rendering.Request:
        """The request as a real API server would apply it (metadata assigned, subresource respected)."""
        resource = request.resource
        if resource is None or request.action not in (kmock.action.CREATE, kmock.action.UPDATE) or not isinstance(request.data, dict):
            return request
        data = copy.deepcopy(request.data)
        meta = data.setdefault("metadata", {})
        info = RESOURCES.get(f"{resource.group}/{resource.version}/{resource.plural}".lstrip("/"), {})
        has_status = "status" in info.get("subresources", set())
        rv = str(next(self._versions))
        if request.action == kmock.action.CREATE:
            if has_status:
                data.pop("status", None)
            if not meta.get("name") and meta.get("generateName"):
                meta["name"] = f"{meta['generateName']}{uuid.uuid4().hex[:5]}"
            meta.update(
                uid=str(uuid.uuid4()),
                resourceVersion=rv,
                generation=1,
                creationTimestamp=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            )
            if request.namespace and info.get("namespaced"):
                meta["namespace"] = request.namespace
            return _with_data(request, data)
        key: Any = (resource, request.namespace, request.name)
        if key not in self._objects or self._objects[key].deleted:
            return request  # kmock answers 404
        current = self._objects[key].raw
        expected = meta.get("resourceVersion")
        if expected is not None and expected != current["metadata"].get("resourceVersion"):
            raise KubernetesError(
                status=409, reason="Conflict", message="the object has been modified; please apply your changes to the latest version"
            )
        if request.subresource == "status":
            data = {"status": data.get("status"), "metadata": {}}
        elif has_status:
            data.pop("status", None)
        data.setdefault("metadata", {})["resourceVersion"] = rv
        if "spec" in data:
            merged = copy.deepcopy(current)
            merged_spec = _merge(merged.get("spec") or {}, data["spec"])
            if merged_spec != (current.get("spec") or {}):
                data["metadata"]["generation"] = int(current["metadata"].get("generation") or 1) + 1
        return _with_data(request, data)

    def __iter__(self) -> Iterator[rendering.Request]:
        only = _MATCHING.get()
        if only is None:
            yield from super().__iter__()
        else:
            yield only

    async def _handle(self, request: rendering.Request) -> Any:
        # kmock matches a request to a reaction by scanning the requests it has recorded for this one: at 100
        # objects and a recent history that cost about 10 ms a call, so the fake API, not the operator, set the pace
        # of the benchmark. The tests assert on objects, not on request logs: the log holds the requests in flight.
        # Even those (long-lived watches, 100 passes' calls) are scanned once per reaction for every request: while a
        # request is matched, this task's view of the log is that request alone. Every reaction here filters on the
        # request's own fields (no slices or counts over the log), so the match is the same.
        token = _MATCHING.set(request)
        try:
            return await self._serve(request)
        finally:
            _MATCHING.reset(token)
            for i, recorded in enumerate(self._requests):
                if recorded is request:
                    del self._requests[i]
                    break

    async def _serve(self, request: rendering.Request) -> Any:
        await self._held(request)
        write = None
        if request.method != kmock.method.GET and request.headers.get("Authorization", "").startswith("Bearer operator-token"):
            meta = request.data.get("metadata") if isinstance(request.data, dict) else None
            precondition = meta.get("resourceVersion") if isinstance(meta, dict) else None
            method = str(getattr(request.method, "value", request.method))
            write = Write(time.monotonic(), request.headers.get("User-Agent", ""), method, request.url.path, precondition)
            self.writes.append(write)
        try:
            self._check_rbac(request)
            self._inject_fault(request)
            async with self._lock:
                request = self._realistic(request)
        except KubernetesError as e:
            if write is not None:
                write.status = e.status or 500
            return await self._render_error(e)
        answer = await super()._handle(request)
        if write is not None:
            write.status = int(getattr(answer, "status", 200))
        return answer

    # kmock finds the object a call names by checking every stored object (Events included, hundreds in a benchmark):
    # a read or a status write by key is what an API server does, and what keeps the fake from setting the pace.
    def _stored(self, request: rendering.Request) -> Any:
        if request.resource is None or request.name is None:
            return None
        key: Any = (request.resource, request.namespace, request.name)
        return self._objects[key] if key in self._objects else None  # noqa: SIM401  # kmock's ObjectsArray has no .get()

    async def _serve_fetch(self, request: rendering.Request) -> Any:
        obj = self._stored(request)
        if obj is None:
            return await super()._serve_fetch(request)
        if obj.deleted:
            raise KubernetesObjectNotFoundError()
        return obj.raw

    async def _serve_update(self, request: rendering.Request) -> Any:
        obj = self._stored(request)
        return obj.last.raw if obj is not None else await super()._serve_update(request)

    async def _serve_create(self, request: rendering.Request) -> Any:
        # The object was stored by kmock's _handle; a create names it in its body (every Event the operator posts).
        meta = request.data.get("metadata") if isinstance(request.data, dict) else None
        if request.resource is None or not isinstance(meta, dict):
            return await super()._serve_create(request)
        key: Any = (request.resource, request.namespace or meta.get("namespace"), meta.get("name"))
        return self._objects[key].raw if key in self._objects else await super()._serve_create(request)


def _with_data(request: rendering.Request, data: dict[str, Any]) -> rendering.Request:
    """Replace the parsed body in place: kmock matches reactions against the request objects it recorded."""
    object.__setattr__(request, "data", data)  # Request is a frozen attrs class
    return request


def _merge(base: Any, patch: Any) -> Any:
    if not isinstance(patch, dict) or not isinstance(base, dict):
        return patch
    out = dict(base)
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merge(base.get(k), v)
    return out


_upstream_parse_path = parsing.parse_path


def _parse_path(path: str) -> parsing.ParsedPath:
    """kmock 0.8 reads ``/api/v1/namespaces[/<name>]`` as a namespace prefix and fails; kopf lists it."""
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "v1"] and len(parts) in (3, 4) and parts[2] == "namespaces":
        return parsing.ParsedPath("", "v1", "namespaces", None, parts[3] if len(parts) == 4 else None, None)
    return _upstream_parse_path(path)


class KubeServer:
    """``RealisticKubernetes`` on a loopback port, run by its own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stopping: asyncio.Event | None = None
        self.kmock: RealisticKubernetes | None = None
        self.url = ""
        self.thread = threading.Thread(target=self._run, name="kmock", daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self.stopping = asyncio.Event()
        async with RealisticKubernetes() as handler, kmock.Server(handler) as server:
            self.kmock = handler
            self.url = f"http://127.0.0.1:{server.port}"
            self.ready.set()
            await self.stopping.wait()

    def __enter__(self) -> KubeServer:
        parsing.parse_path = _parse_path  # idempotent; the fix only adds the paths upstream cannot parse
        self.thread.start()
        if not self.ready.wait(10):
            raise RuntimeError("kmock did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.stopping is not None:
            self.loop.call_soon_threadsafe(self.stopping.set)
        self.thread.join(10)

    @property
    def k(self) -> RealisticKubernetes:
        assert self.kmock is not None
        return self.kmock

    def call(self, fn: Any) -> Any:
        """Run ``fn()`` on the server's loop (the only safe place to touch its state)."""

        async def run() -> Any:
            return fn()

        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def kubeconfig(self, path: Path, token: str = OPERATOR_TOKEN) -> Path:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "kmock", "cluster": {"server": self.url}}],
            "users": [{"name": "operator", "user": {"token": token}}],
            "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "operator", "namespace": "default"}}],
            "current-context": "kmock",
        }
        path.write_text(yaml.safe_dump(config))
        return path
