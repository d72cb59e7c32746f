"""The one HTTP seam the outside-system modules share: timeouts, JSON and typed errors.

Built on aiohttp (kopf's own HTTP client, so no extra package): a pass makes
a dozen to thirty calls, and with many passes in flight httpx's asyncio client
spent about 1.5 ms of CPU on each (its connection pool walks every queued
request whenever one starts or ends), which kept the event loop busy for most
of a pass; aiohttp spends about 0.1 ms.
The session is opened on the first call, inside the running event loop (an
aiohttp session belongs to one loop), and kept for the life of the process.
"""

from __future__ import annotations

import json as jsonlib
import ssl
from collections.abc import Mapping
from typing import Any

import aiohttp


class ExternalError(Exception):
    """A call to Kubernetes, Prometheus, MLflow or KFP failed; ``status`` is 0 for transport errors."""

    def __init__(self, system: str, status: int, message: str) -> None:
        super().__init__(f"{system}: {status or 'unreachable'}: {message}")
        self.system = system
        self.status = status
        self.message = message

    @property
    def transient(self) -> bool:
        return self.status in (0, 409, 429) or self.status >= 500


class JsonClient:
    """An aiohttp session with a base URL, a timeout on every call and JSON bodies.

    ``verify`` is an ``ssl.SSLContext``, True (the system's CAs) or False (no TLS check).
    """

    def __init__(
        self,
        system: str,
        base_url: str,
        timeout_s: float = 5.0,
        *,
        headers: Mapping[str, str] | None = None,
        verify: ssl.SSLContext | bool = True,
        connections: int = 100,
    ) -> None:
        self.system = system
        self.base_url = base_url.rstrip("/")  # kept whole: a path prefix (a proxy, an ingress) is part of every URL
        self.timeout = aiohttp.ClientTimeout(total=timeout_s)
        self.headers = dict(headers or {})
        self.verify = verify
        self.connections = connections
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            connector = aiohttp.TCPConnector(limit=self.connections, ssl=self.verify)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, headers=self.headers, raise_for_status=False)
        return self._session

    async def request(
        self,
        method: str,
        path: str,
        *,
        ok_missing: bool = False,
        params: Mapping[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> Any:
        """The decoded JSON answer; None for a 404 when ``ok_missing``."""
        body = jsonlib.dumps(json).encode() if json is not None else content
        sent = {**({"Content-Type": "application/json"} if json is not None else {}), **(headers or {})}
        session = self.session()
        if session.closed:  # replaced after a new login while this call waited: the caller retries with the new one
            raise ExternalError(self.system, 0, f"{method} {path}: client closed")
        try:
            async with session.request(method, self.base_url + path, params=params, data=body, headers=sent) as response:
                status, raw = response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise ExternalError(self.system, 0, f"{method} {path}: {type(e).__name__}: {e}") from e
        if status == 404 and ok_missing:
            return None
        if status >= 400:
            raise ExternalError(self.system, status, f"{method} {path}: {raw[:300].decode(errors='replace')}")
        if not raw:
            return {}
        try:
            return jsonlib.loads(raw)
        except ValueError as e:
            raise ExternalError(self.system, status, f"{method} {path}: answer is not JSON") from e

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
