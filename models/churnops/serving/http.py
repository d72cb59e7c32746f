"""Limits at the HTTP layer, below the ASGI app: header size and count, and read timeouts.

uvicorn (under KServe) reads headers without a size bound and waits forever for
a request's headers and body: one 64 MB header is buffered whole, and a socket
that sends nothing, or trickles its headers or body (slowloris), stays open for
as long as the client likes. ``LimitedHttpProtocol`` is uvicorn's httptools
protocol with those bounds added, before any application code runs:

- total header bytes of a request (request line included) and header count: 431;
- headers must arrive within ``header_timeout_s`` of the connection (or of the
  first byte of a later request on a kept-alive connection): 408 when part of
  them came, a plain close when nothing did;
- the body must arrive within ``body_timeout_s`` of the headers: 408 while no
  response has started (the application then sees a disconnect, never a
  partial body).

Idle kept-alive connections between requests stay governed by uvicorn's
keep-alive timeout (KServe's ``--timeout-keep-alive``). Responses come from
``churnops.serving.errors`` like every other error.

Open connections are capped (``max_connections``, per process): one past the
cap is closed as soon as it is accepted, before it costs a parser or a timer.
The cap keeps file descriptors in reserve (``connection_cap``): a process out
of them can neither write its audit log or prediction-log segments nor accept
the next health probe, and asyncio then stops accepting for a second at a time.

This module imports uvicorn: only ``serve`` loads it.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import time
from functools import partial
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from churnops.errors import ChurnOpsError, HeadersTooLargeError, RequestTimeoutError
from churnops.serving.errors import raw_response
from churnops.serving.security import HttpLimits

log = logging.getLogger(__name__)

DEFAULT_MAX_CONNECTIONS = 16_384  # per process: 10,000 idle connections of one pod fit a single worker
RESERVED_FDS = 512  # kept for files, store and database connections, probes
REFUSAL_LOG_EVERY_S = 10.0


def raise_fd_limit() -> int:
    """The soft limit of open files raised to the hard one (containers often start at 1,024); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError) as e:  # an unlimited hard limit is above the kernel's nr_open
            log.warning("open files stay limited to %d (%s)", soft, e)
    return int(resource.getrlimit(resource.RLIMIT_NOFILE)[0])


def connection_cap(fd_limit: int, wanted: int | None = None) -> int:
    """Open connections one process accepts: ``wanted`` (default ``DEFAULT_MAX_CONNECTIONS``), within its fd limit."""
    cap = DEFAULT_MAX_CONNECTIONS if wanted is None else wanted
    if fd_limit == resource.RLIM_INFINITY:
        return cap
    return max(1, min(cap, fd_limit - RESERVED_FDS))


class _RefusedError(Exception):
    """Stops the parser from a callback; the reason is kept on the protocol."""


class Refusals:
    """Connections refused at the cap, logged once per ``REFUSAL_LOG_EVERY_S`` (a flood must not flood the log)."""

    def __init__(self) -> None:
        self.count = 0
        self.logged_at = float("-inf")

    def add(self, cap: int) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.logged_at >= REFUSAL_LOG_EVERY_S:
            log.warning("%d connection(s) closed at once: %d are open, the cap (--max-connections)", self.count, cap)
            self.count, self.logged_at = 0, now


class LimitedHttpProtocol(HttpToolsProtocol):
    def __init__(
        self, *args: Any, limits: HttpLimits, max_connections: int | None = None, refusals: Refusals | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.limits = limits
        self.max_connections = max_connections
        self.refusals = refusals or Refusals()
        self._in_headers = True  # reading a request line and headers (or waiting for the next request's first byte)
        self._header_bytes = 0
        self._header_count = 0
        self._deadline: asyncio.TimerHandle | None = None
        self._refusal: ChurnOpsError | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.max_connections is not None and len(self.connections) > self.max_connections:
            self.refusals.add(self.max_connections)
            transport.close()  # no request came yet: nothing to answer, and a client may retry it elsewhere
            return
        self._arm(self.limits.header_timeout_s, self._headers_late)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if not self._in_headers:
            super().data_received(data)
            return
        if self._deadline is None:  # the first byte of a later request on a kept-alive connection
            self._arm(self.limits.header_timeout_s, self._headers_late)
        room = self.limits.max_header_bytes - self._header_bytes
        self._header_bytes += min(len(data), room)
        super().data_received(data[:room])
        if len(data) <= room or self.transport.is_closing():
            return
        if self._headers_unfinished():  # the headers did not end within the bound
            self._refuse(HeadersTooLargeError(f"request line and headers larger than {self.limits.max_header_bytes} bytes"))
            return
        self.data_received(data[room:])  # the rest is body (or a pipelined request): read as usual

    def _headers_unfinished(self) -> bool:
        return self._in_headers  # read after the parser ran: its callbacks may have changed it

    def on_message_begin(self) -> None:
        self._header_count = 0
        super().on_message_begin()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.max_headers:
            self._refusal = HeadersTooLargeError(f"more than {self.limits.max_headers} header fields")
            raise _RefusedError
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_headers = False
        self._disarm()
        super().on_headers_complete()
        self._arm(self.limits.body_timeout_s, self._body_late)  # disarmed at once when there is no body

    def on_message_complete(self) -> None:
        self._disarm()
        self._in_headers, self._header_bytes = True, 0
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        # the parser stopped: on our refusal (answered with its own status) or on malformed HTTP (uvicorn's 400)
        if self._refusal is not None:
            self._refuse(self._refusal)
        else:
            super().send_400_response(msg)

    def _arm(self, seconds: float, callback: Any) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, callback)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _headers_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        if self._header_bytes == 0:
            self.transport.close()  # never sent a byte of a request: nothing to answer
            return
        self._refuse(RequestTimeoutError(f"headers not received within {self.limits.header_timeout_s:g} s"))

    def _body_late(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_started:
            self.transport.close()  # answered already (or answering): the rest of the body is not wanted
            return
        self._refuse(RequestTimeoutError(f"body not received within {self.limits.body_timeout_s:g} s"))

    def _refuse(self, error: ChurnOpsError) -> None:
        """Answer ``error`` and close; the application, if it is waiting for the body, sees a disconnect."""
        self._disarm()
        log.info("%s from %s: %s", error.status, self.client[0] if self.client else "?", error.detail)
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.disconnected = True  # its later sends are dropped; its receive() returns http.disconnect
            self.cycle.message_event.set()
        self.transport.write(raw_response(error))
        self.transport.close()


def protocol_factory(limits: HttpLimits, max_connections: int | None = None) -> Any:
    """What uvicorn's ``Config(http=...)`` takes: a protocol class bound to ``limits`` and the connection cap."""
    return partial(LimitedHttpProtocol, limits=limits, max_connections=max_connections, refusals=Refusals())
