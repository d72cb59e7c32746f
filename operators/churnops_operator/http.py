"""The one HTTP seam the outside-system modules share: timeouts, JSON and typed errors."""

from __future__ import annotations

from typing import Any

import httpx


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
    """An ``httpx.AsyncClient`` with a base URL, a timeout on every call and JSON bodies."""

    def __init__(self, system: str, base_url: str, timeout_s: float = 5.0, **kwargs: Any) -> None:
        self.system = system
        self.client = httpx.AsyncClient(base_url=base_url.rstrip("/"), timeout=timeout_s, **kwargs)

    async def request(self, method: str, path: str, *, ok_missing: bool = False, **kwargs: Any) -> Any:
        """The decoded JSON answer; None for a 404 when ``ok_missing``."""
        try:
            response = await self.client.request(method, path, **kwargs)
        except httpx.HTTPError as e:
            raise ExternalError(self.system, 0, f"{method} {path}: {type(e).__name__}: {e}") from e
        if response.status_code == 404 and ok_missing:
            return None
        if response.status_code >= 400:
            raise ExternalError(self.system, response.status_code, f"{method} {path}: {response.text[:300]}")
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError as e:
            raise ExternalError(self.system, response.status_code, f"{method} {path}: answer is not JSON") from e

    async def aclose(self) -> None:
        await self.client.aclose()
