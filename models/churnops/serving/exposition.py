"""``/metrics`` rendered at most once per ``max_age_s``, answering GET and HEAD.

Rendering walks every series and computes the live drift gauges: done per
scrape, four clients scraping in a loop pushed the health probes' median to
over 100 ms. Here concurrent scrapes share one rendering, made on a worker
thread (the event loop keeps answering probes meanwhile), and a scrape within
``max_age_s`` of the last rendering gets that one: Prometheus scrapes every
15 s or so, and the embedded rollout's counts only ever grow, so a second's
staleness changes no decision. The scrape rate per address is limited by the
guard middleware in front of this.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from churnops.serving.security import ASGIApp, Receive, Scope, Send

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"  # Prometheus' text format


class CachedExposition:
    """The registry's text, rendered again only when the last rendering is older than ``max_age_s``."""

    def __init__(self, render: Callable[[], bytes], max_age_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.render, self.max_age_s, self.clock = render, max_age_s, clock
        self._text = b""
        self._rendered_at = float("-inf")
        self._lock: asyncio.Lock | None = None  # made on the serving loop, at the first scrape

    async def text(self) -> bytes:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:  # scrapes arriving during a rendering wait for it instead of starting their own
            if self.clock() - self._rendered_at >= self.max_age_s:
                self._text = await asyncio.to_thread(self.render)
                self._rendered_at = self.clock()
            return self._text


class MetricsEndpoint:
    """Answers ``/metrics`` (GET and HEAD; 405 with ``Allow`` otherwise) from the cache; everything else passes on."""

    def __init__(self, app: ASGIApp, exposition: CachedExposition) -> None:
        self.app = app
        self.exposition = exposition

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != "/metrics":
            await self.app(scope, receive, send)
            return
        if scope["method"] not in ("GET", "HEAD"):
            body = b'{"error": "method not allowed: GET or HEAD"}'
            await _send(send, 405, body, b"application/json", [(b"allow", b"GET, HEAD")])
            return
        text = await self.exposition.text()
        await _send(send, 200, b"" if scope["method"] == "HEAD" else text, CONTENT_TYPE, [], length=len(text))


async def _send(
    send: Send, status: int, body: bytes, content_type: bytes, extra: list[tuple[bytes, bytes]], length: int | None = None
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body) if length is None else length).encode()), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
