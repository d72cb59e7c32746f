"""Kubernetes I/O for the objects the operator owns (kopf handles its own resource and events).

A small async client over the REST API with the credentials kopf logged in
with, so the operator needs neither the ``kubernetes`` package nor its
start-up cost. Writes are merge patches of the fields the operator owns;
a create that finds the object already there (409) becomes a patch, and a
conflicting write is retried after re-reading. A 401 (a projected
service-account token expired and was rotated) logs in again once through
``relogin`` and repeats the call. Events are posted under names the caller
derives from the decision, so a repeated post after a crash is refused as a
duplicate (409) instead of announcing the decision twice.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from churnops_operator.http import ExternalError, JsonClient

MERGE_PATCH = {"Content-Type": "application/merge-patch+json"}


@dataclass(frozen=True)
class Kind:
    api_version: str
    plural: str

    def path(self, namespace: str, name: str | None = None) -> str:
        base = f"/api/{self.api_version}" if "/" not in self.api_version else f"/apis/{self.api_version}"
        path = f"{base}/namespaces/{namespace}/{self.plural}"
        return f"{path}/{name}" if name else path


KINDS = {
    "ModelDeployment": Kind("churnops.io/v1alpha1", "modeldeployments"),
    "InferenceService": Kind("serving.kserve.io/v1beta1", "inferenceservices"),
    "HTTPRoute": Kind("gateway.networking.k8s.io/v1", "httproutes"),
    "PodDisruptionBudget": Kind("policy/v1", "poddisruptionbudgets"),
    "Event": Kind("v1", "events"),
}


@dataclass(frozen=True)
class Credentials:
    server: str
    token: str | None = None
    ca_data: bytes | None = None
    ca_path: str | None = None
    insecure: bool = False
    cert_path: str | None = None
    key_path: str | None = None


def _verify(c: Credentials) -> ssl.SSLContext | bool:
    if c.insecure:
        return False
    if c.ca_data or c.ca_path or c.cert_path:
        ctx = ssl.create_default_context(cafile=c.ca_path)
        if c.ca_data:
            ctx.load_verify_locations(cadata=c.ca_data.decode())
        if c.cert_path:
            ctx.load_cert_chain(c.cert_path, c.key_path)
        return ctx
    return True


def credentials_from_kopf(info: Any) -> Credentials:
    """Credentials from kopf's ``ConnectionInfo`` (certificate data is written to private temp files)."""

    def as_file(data: str | bytes | None) -> str | None:
        if not data:
            return None
        raw = data.encode() if isinstance(data, str) else data
        with tempfile.NamedTemporaryFile(prefix="churnops-operator-", delete=False) as f:
            f.write(raw)
        return f.name

    ca = info.ca_data
    return Credentials(
        server=info.server,
        token=info.token,
        ca_data=ca.encode() if isinstance(ca, str) else ca,
        ca_path=str(info.ca_path) if info.ca_path else None,
        insecure=bool(info.insecure),
        cert_path=str(info.certificate_path) if info.certificate_path else as_file(info.certificate_data),
        key_path=str(info.private_key_path) if info.private_key_path else as_file(info.private_key_data),
    )


class _Authenticated:
    """The HTTP client of the current credentials; rebuilt after a new login (in a worker thread: it reads CA files)."""

    def __init__(self, creds: Credentials, timeout_s: float, user_agent: str) -> None:
        headers = {"Authorization": f"Bearer {creds.token}"} if creds.token else {}
        headers["User-Agent"] = user_agent
        self.http = JsonClient("kubernetes", creds.server, timeout_s, headers=headers, verify=_verify(creds))


class Kube:
    """``user_agent`` names the replica in the API server's audit log (which replica wrote what during a hand-over)."""

    def __init__(
        self,
        creds: Credentials,
        timeout_s: float = 10.0,
        attempts: int = 5,
        relogin: Callable[[], Credentials | None] | None = None,
        user_agent: str = "churnops-operator",
    ) -> None:
        self.timeout_s = timeout_s
        self.user_agent = user_agent
        self.auth = _Authenticated(creds, timeout_s, user_agent)
        self.attempts = attempts
        self.relogin = relogin
        self.logins = 0  # logins after the first (token rotations seen)
        self.relogging = asyncio.Lock()  # the passes that meet the same expired token log in once

    @property
    def http(self) -> JsonClient:
        return self.auth.http

    async def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One API call; a 401 logs in again (a rotated token) and repeats it once.

        Logging in reads the token and CA files: it runs in a worker thread, never on the event loop.
        """
        used = self.auth
        try:
            return await used.http.request(method, path, **kwargs)
        except ExternalError as e:
            if e.status != 401 or self.relogin is None:
                raise
            async with self.relogging:
                if self.auth is used:  # no other pass has logged in again since this call was sent
                    creds = await asyncio.to_thread(self.relogin)
                    if creds is None:
                        raise
                    self.auth = await asyncio.to_thread(_Authenticated, creds, self.timeout_s, self.user_agent)
                    self.logins += 1
                    await used.http.aclose()
        return await self.auth.http.request(method, path, **kwargs)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        result: dict[str, Any] | None = await self.request("GET", KINDS[kind].path(namespace, name), ok_missing=True)
        return result

    async def post_event(self, involved: Mapping[str, Any], name: str, type_: str, reason: str, message: str, when: float) -> bool:
        """Post an Event named ``name`` about ``involved``; False when one of that name exists (posted before a crash)."""
        meta = involved.get("metadata") or {}
        stamp = datetime.fromtimestamp(when, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        body = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": name, "namespace": meta.get("namespace")},
            "involvedObject": {
                "apiVersion": involved.get("apiVersion"),
                "kind": involved.get("kind"),
                "name": meta.get("name"),
                "namespace": meta.get("namespace"),
                "uid": meta.get("uid"),
            },
            "type": type_,
            "reason": reason,
            "message": message[:1024],
            "source": {"component": "churnops-operator"},
            "reportingComponent": "churnops.io/operator",
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        try:
            await self.request("POST", KINDS["Event"].path(str(meta.get("namespace"))), json=body)
        except ExternalError as e:
            if e.status == 409:
                return False
            raise
        return True

    async def remove_annotation(self, kind: str, namespace: str, name: str, key: str) -> None:
        body = {"metadata": {"annotations": {key: None}}}
        await self.request("PATCH", KINDS[kind].path(namespace, name), content=json.dumps(body).encode(), headers=MERGE_PATCH)

    async def apply(self, obj: Mapping[str, Any], create_body: Mapping[str, Any]) -> dict[str, Any]:
        """Create ``create_body`` or merge-patch ``obj`` onto the existing object; retried on conflicts."""
        kind, meta = obj["kind"], obj["metadata"]
        ns, name = meta["namespace"], meta["name"]
        for attempt in range(self.attempts):
            try:
                existing = await self.get(kind, ns, name)
                if existing is None or (existing.get("metadata") or {}).get("deletionTimestamp"):
                    if existing is not None:
                        raise ExternalError("kubernetes", 409, f"{kind} {ns}/{name} is being deleted")
                    created: dict[str, Any] = await self.request("POST", KINDS[kind].path(ns), json=create_body)
                    return created
                patched: dict[str, Any] = await self.request(
                    "PATCH", KINDS[kind].path(ns, name), content=json.dumps(obj).encode(), headers=MERGE_PATCH
                )
                return patched
            except ExternalError as e:
                if e.status != 409 or attempt == self.attempts - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def patch_status(
        self, kind: str, namespace: str, name: str, status: Mapping[str, Any], resource_version: str | None
    ) -> dict[str, Any]:
        """Write ``.status`` only if the object is still at ``resource_version`` (409 otherwise); None: unconditionally."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        path = f"{KINDS[kind].path(namespace, name)}/status"
        patched: dict[str, Any] = await self.request("PATCH", path, content=json.dumps(body).encode(), headers=MERGE_PATCH)
        return patched

    async def delete(self, kind: str, namespace: str, name: str) -> bool:
        """Delete if present; True when a delete was sent."""
        for attempt in range(self.attempts):
            try:
                answer = await self.request("DELETE", KINDS[kind].path(namespace, name), ok_missing=True)
                return answer is not None
            except ExternalError as e:
                if e.status != 409 or attempt == self.attempts - 1:
                    raise
                await asyncio.sleep(0.05 * 2**attempt)
        raise AssertionError("unreachable")

    async def aclose(self) -> None:
        await self.http.aclose()
