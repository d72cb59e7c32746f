"""Access control and limits in front of the KServe routes.

One ASGI middleware, in this order: request size (413, from Content-Length
before anything is read, and counted while streaming), ``X-Request-Id``
(400 unless short and plain), bearer token (401, see ``auth``), role for the
route (403), per-subject token bucket (429 + Retry-After), then for model
calls the media type (415; ``application/json`` with any case and
parameters) and strict JSON (NaN, Infinity and numbers beyond float range are
422 with the field's path; nesting deeper than the parser's limit is 400).
Every status the server sends is counted, including KServe's own and the 500
of an unexpected exception, whose body never shows internals. The decisions
are plain functions; the middleware only moves bytes.
"""

from __future__ import annotations

import json
import logging
import math
import re
import threading
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from churnops.errors import (
    BadRequestError,
    ChurnOpsError,
    ForbiddenError,
    InvalidInputError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from churnops.serving.auth import AuthConfig, Role, authenticate
from churnops.serving.inputs import first_non_finite

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SUBJECT_HEADER = b"x-churnops-subject"  # set by the middleware only: the caller's subject, percent-encoded UTF-8
REQUEST_ID_HEADER = b"x-request-id"
REQUEST_ID = re.compile(rb"^[A-Za-z0-9._:/-]{1,128}$")  # ids and trace ids; long or odd values are refused, not stored


# (method, path pattern) -> least role; first match wins. None = open (probes and scrapes).
ROUTE_POLICY: tuple[tuple[str, re.Pattern[str], Role | None], ...] = (
    ("GET", re.compile(r"^/$|^/v2/health/(live|ready)$|^/metrics$"), None),
    ("POST", re.compile(r"^/v1/models/[^/]+:(predict|explain)$|^/v2/models/[^/]+(/versions/[^/]+)?/(infer|explain)$"), Role.predictor),
    ("POST", re.compile(r"^/v2/repository/models/[^/]+/(load|unload)$"), Role.deployer),
    ("GET", re.compile(r"^/(v1|v2)(/.*)?$|^/openapi\.json$|^/docs.*$"), Role.viewer),
)


def required_role(method: str, path: str) -> Role | None:
    """The least role for a route; None when open; admin for anything not listed."""
    for m, pattern, role in ROUTE_POLICY:
        if (m == method or (m == "GET" and method == "HEAD")) and pattern.match(path):
            return role
    return Role.admin


@dataclass
class RateLimiter:
    """Token bucket per subject: ``rate`` requests/s sustained, bursts up to ``burst``."""

    rate: float
    burst: int
    clock: Callable[[], float] = time.monotonic
    max_subjects: int = 10_000  # beyond this, idle (full) buckets are forgotten: memory stays bounded
    _buckets: dict[str, tuple[float, float]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self, subject: str) -> float:
        """0 when allowed, else the seconds to wait before the next request would be."""
        with self._lock:
            now = self.clock()
            if subject not in self._buckets and len(self._buckets) >= self.max_subjects:
                self._forget_idle(now)
            tokens, last = self._buckets.get(subject, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + (now - last) * self.rate)
            if tokens >= 1.0:
                self._buckets[subject] = (tokens - 1.0, now)
                return 0.0
            self._buckets[subject] = (tokens, now)
            return (1.0 - tokens) / self.rate

    def _forget_idle(self, now: float) -> None:
        # a bucket that has refilled completely carries no state worth keeping
        refill = self.burst / self.rate
        self._buckets = {k: v for k, v in self._buckets.items() if now - v[1] < refill}


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    rate_per_s: float = 2_000.0
    burst: int = 400


def error_response(error: ChurnOpsError) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    """The one mapping of an error to a response (status, JSON body, headers), shared with the server's handler."""
    body = orjson.dumps({"error": error.detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if isinstance(error, UnauthorizedError):
        headers.append((b"www-authenticate", b'Bearer realm="churnops"'))
    return error.status, body, headers


def encode_subject(subject: str) -> bytes:
    """Header values are Latin-1 on the wire: carry the subject as percent-encoded UTF-8."""
    return urllib.parse.quote(subject, safe="@").encode("ascii")


def decode_subject(value: str) -> str:
    return urllib.parse.unquote(value)


def check_request_id(value: bytes | None) -> str | None:
    """The client's ``X-Request-Id`` if acceptable (kept as a separate, bounded field; never the audit's own id)."""
    if value is None:
        return None
    if not REQUEST_ID.match(value):
        raise BadRequestError("must be 1-128 characters of letters, digits and . _ : / -", field="X-Request-Id")
    return value.decode("ascii")


def json_problem(body: bytes) -> ChurnOpsError | None:
    """None when ``body`` is strict JSON; else the error, naming the field or position."""
    try:
        orjson.loads(body)
        return None
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e):
            return BadRequestError(f"body nests arrays or objects more than 1,024 levels deep ({e})")
    try:
        # Python's parser accepts NaN/Infinity and turns 1e309 into inf: use it to name the field
        lenient = json.loads(body)
    except RecursionError:
        return BadRequestError("body nests arrays or objects too deeply")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return BadRequestError(f"body is not valid JSON: {e}")
    where = first_non_finite(lenient)
    if where is not None:
        return InvalidInputError("NaN, Infinity and numbers beyond float range are not valid JSON numbers", field=where)
    return BadRequestError("body is not valid JSON")


def _is_model_call(path: str) -> bool:
    return path.startswith(("/v1/models/", "/v2/models/")) and (path.endswith((":predict", ":explain", "/infer", "/explain")))


class GuardMiddleware:
    """Size limit, authentication, authorization, rate limiting and strict JSON for the wrapped app."""

    def __init__(
        self,
        app: ASGIApp,
        auth: AuthConfig | None,
        limits: Limits,
        limiter: RateLimiter | None = None,
        on_error: Callable[[str, int], None] | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limits = limits
        self.limiter = limiter or RateLimiter(limits.rate_per_s, limits.burst)
        self.on_error = on_error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = _Watched(send, scope["path"], self.on_error)
        try:
            await self._guard(scope, receive, watched.send)
        except Exception:
            # a bug, not the client's mistake: log it, count it, answer without internals
            incident = uuid.uuid4().hex[:12]
            log.exception("unexpected error on %s %s (incident %s)", scope["method"], scope["path"], incident)
            if watched.started:
                raise
            body = orjson.dumps({"error": f"internal error (incident {incident})"})
            await _respond(watched.send, 500, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())])

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = {k.lower(): v for k, v in scope["headers"]}
        # never trust a caller-supplied subject header
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != SUBJECT_HEADER]
        method, path = scope["method"], scope["path"]

        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _respond(send, *error_response(BadRequestError("Content-Length must be a non-negative integer")))
            return
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            await _respond(send, *error_response(PayloadTooLargeError(f"request body larger than {self.limits.max_body_bytes} bytes")))
            return
        try:
            check_request_id(headers.get(REQUEST_ID_HEADER))
        except ChurnOpsError as e:
            await _respond(send, *error_response(e))
            return

        role = required_role(method, path)
        subject = "anonymous"
        if role is not None:
            if self.auth is not None:
                try:
                    principal = authenticate(self.auth, headers.get(b"authorization", b"").decode("latin-1") or None)
                except ChurnOpsError as e:
                    await _respond(send, *error_response(e))
                    return
                if principal.role < role:
                    denied = ForbiddenError(f"role '{principal.role.name}' may not {method} {path}; needs '{role.name}'")
                    await _respond(send, *error_response(denied))
                    return
                subject = principal.subject
            else:
                client = scope.get("client") or ("unknown", 0)
                subject = f"anonymous@{client[0]}"  # without authentication, limits apply per client address
            wait = self.limiter.acquire(subject)
            if wait > 0:
                limited = RateLimitedError(f"rate limit for '{subject}' exceeded", retry_after=max(1, math.ceil(wait)))
                await _respond(send, *error_response(limited))
                return
        scope["headers"].append((SUBJECT_HEADER, encode_subject(subject)))

        if method != "POST":
            await self.app(scope, receive, send)
            return
        body, too_large = await _read_body(receive, self.limits.max_body_bytes)
        if too_large:
            await _respond(send, *error_response(PayloadTooLargeError(f"request body larger than {self.limits.max_body_bytes} bytes")))
            return
        if _is_model_call(path):
            media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media != b"application/json":
                await _respond(send, *error_response(UnsupportedMediaTypeError("Content-Type must be application/json")))
                return
            # KServe compares the header verbatim: hand it the canonical form ("Application/JSON; charset=utf-8" is JSON too)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
            problem = json_problem(body) if body else None
            if problem is not None:
                await _respond(send, *error_response(problem))
                return
        await self.app(scope, _replay(body, receive), send)


class _Watched:
    """A ``send`` that counts every error status and remembers whether the response has started."""

    def __init__(self, send: Send, path: str, on_error: Callable[[str, int], None] | None) -> None:
        self._send, self._path, self._on_error = send, path, on_error
        self.started = False

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            if message["status"] >= 400 and self._on_error is not None:
                self._on_error(self._path, message["status"])
        await self._send(message)


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, bool]:
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", True
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), False


def _replay(body: bytes, upstream: Receive) -> Receive:
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await upstream()  # later calls wait for the client's disconnect, as usual

    return receive


async def _respond(send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
