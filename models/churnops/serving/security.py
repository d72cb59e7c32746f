"""Access control and limits in front of the KServe routes.

One ASGI middleware, in this order: singleton headers sent twice (400
naming the header: the guard and KServe must read the same value), request
size (413, from Content-Length before anything is read, and counted while
streaming), ``X-Request-Id`` (400 unless short and plain), a version in a V2
path (404 unless it is the version served: KServe answers 501 to any), the
scrape rate per address for ``/metrics`` (429), failed authentications per
address (429 + Retry-After once an address has failed too often: checked
before any token is verified), bearer token (401, see ``auth``), role for the
route (403), per-subject token bucket (429 + Retry-After), then for model
calls the media type (415; ``application/json`` with any case and
parameters) and strict JSON (NaN, Infinity and numbers beyond float range are
422 with the field's path; nesting deeper than the parser's limit is 400).
Every status the server sends is counted, including KServe's own and the 500
of an unexpected exception, whose body never shows internals. The decisions
are plain functions; the middleware only moves bytes. Responses are built by
``churnops.serving.errors``. Header size and read timeouts are enforced below
this, in the HTTP protocol (``churnops.serving.http``).
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
    NotFoundError,
    PayloadTooLargeError,
    RateLimitedError,
    UnauthorizedError,
    UnsupportedMediaTypeError,
)
from churnops.serving.auth import AuthConfig, Role, VerifiedTokens, authenticate
from churnops.serving.errors import error_response
from churnops.serving.inputs import first_non_finite

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SUBJECT_HEADER = b"x-churnops-subject"  # set by the middleware only: the caller's subject, percent-encoded UTF-8
REQUEST_ID_HEADER = b"x-request-id"
# ids and trace ids; long or odd values are refused, not stored. Use fullmatch: ``$`` would accept a trailing newline.
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:/-]{1,128}")
# headers whose second copy would be read by one layer and not another (the guard validates one, KServe uses another)
SINGLETON_HEADERS = {
    b"x-request-id": "X-Request-Id",
    b"authorization": "Authorization",
    b"content-type": "Content-Type",
    b"content-length": "Content-Length",
    b"host": "Host",
}
VERSIONED_PATH = re.compile(r"^/v2/models/([^/]+)/versions/([^/]+)(/.*)?$")
MODEL_IN_PATH = re.compile(r"/(?:v1/models|v2/models|v2/repository/models)/([^/:]*)")
MAX_MODEL_NAME_CHARS = 128  # served names are aliases or v<version>; KServe's errors would quote a longer one whole
MAX_ERROR_BODY_BYTES = 1024  # a 4xx body from KServe is cut to this: its messages quote the client's input verbatim


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
        if (m == method or (m == "GET" and method == "HEAD")) and pattern.fullmatch(path):
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


@dataclass
class FailureLimiter:
    """Failed authentications per client address: after ``limit`` in one ``window_s``, the address waits out the window.

    Checked before a token is verified, so a flood of forged tokens from one address costs a dictionary lookup
    each once it is over the limit, not a signature check (or a JWKS lookup).
    """

    limit: int
    window_s: float
    clock: Callable[[], float] = time.monotonic
    max_addresses: int = 10_000  # beyond this, finished windows are forgotten: memory stays bounded
    _windows: dict[str, tuple[float, int]] = field(default_factory=dict)  # address -> (window start, failures)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def wait(self, address: str) -> float:
        """0 when ``address`` may try, else the seconds until its window ends."""
        with self._lock:
            start, failures = self._windows.get(address, (0.0, 0))
            remaining = start + self.window_s - self.clock()
            return remaining if failures >= self.limit and remaining > 0 else 0.0

    def record(self, address: str) -> None:
        with self._lock:
            now = self.clock()
            start, failures = self._windows.get(address, (now, 0))
            if now - start >= self.window_s:
                start, failures = now, 0
            elif address not in self._windows and len(self._windows) >= self.max_addresses:
                self._windows = {k: v for k, v in self._windows.items() if now - v[0] < self.window_s}
            self._windows[address] = (start, failures + 1)


@dataclass(frozen=True)
class Limits:
    max_body_bytes: int = 1 << 20
    rate_per_s: float = 2_000.0
    burst: int = 400
    auth_failures: int = 50  # failed authentications per address and window before it gets 429
    auth_failure_window_s: float = 60.0
    metrics_rate_per_s: float = 5.0  # scrapes of /metrics per address (Prometheus needs one per interval)
    metrics_burst: int = 20


@dataclass(frozen=True)
class HttpLimits:
    """Enforced by the HTTP protocol (``churnops.serving.http``) before the app sees a request."""

    max_header_bytes: int = 32 * 1024  # request line and headers; a JWT from an identity provider is a few KB
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0


def repeated_singleton(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The name of the first header that may appear once but was sent again, else None."""
    seen: set[bytes] = set()
    for key, _ in headers:
        name = key.lower()
        if name in SINGLETON_HEADERS:
            if name in seen:
                return SINGLETON_HEADERS[name]
            seen.add(name)
    return None


def unversioned(path: str, served_version: Callable[[str], str | None]) -> str:
    """A V2 path without its ``/versions/<v>`` part when ``<v>`` is the version served under that name.

    KServe answers 501 to any versioned path, which counts as the model's failure; a version the server does not
    serve is the client's mistake (404, naming neither the client's text nor more than the served name).
    """
    match = VERSIONED_PATH.match(path)
    if match is None:
        return path
    name, version, rest = match.group(1), match.group(2), match.group(3) or ""
    served = served_version(name)
    if served is None or served == "":
        raise NotFoundError("this name serves no fixed version: call it without /versions/<version>", field="version")
    if version != served:
        raise NotFoundError(f"not served under this name (it serves version {served})", field="version")
    return f"/v2/models/{name}{rest}"


def encode_subject(subject: str) -> bytes:
    """Header values are Latin-1 on the wire: carry the subject as percent-encoded UTF-8."""
    return urllib.parse.quote(subject, safe="@").encode("ascii")


def decode_subject(value: str) -> str:
    return urllib.parse.unquote(value)


def check_request_id(value: bytes | None) -> str | None:
    """The client's ``X-Request-Id`` if acceptable (kept as a separate, bounded field; never the audit's own id)."""
    if value is None:
        return None
    if not REQUEST_ID.fullmatch(value):
        raise BadRequestError("must be 1-128 characters of letters, digits and . _ : / -", field="X-Request-Id")
    return value.decode("ascii")


def check_model_name(path: str) -> None:
    """Refuses a model name no model can have (longer than ``MAX_MODEL_NAME_CHARS``) without quoting it."""
    found = MODEL_IN_PATH.match(path)
    if found is not None and len(found.group(1)) > MAX_MODEL_NAME_CHARS:
        raise NotFoundError(f"no model has a name longer than {MAX_MODEL_NAME_CHARS} characters", field="path")


def json_problem(body: bytes) -> ChurnOpsError | None:
    """None when ``body`` is strict JSON; else the error, naming the field or position."""
    try:
        orjson.loads(body)
        return None
    except orjson.JSONDecodeError as e:
        if "depth limit" in str(e):
            return BadRequestError(f"body nests arrays or objects more than 1,024 levels deep ({e})")
    try:
        # Python's parser accepts NaN/Infinity and turns 1e309 into inf: use it to name the field; integers are read
        # as floats, so one beyond float range is inf too (and none hits the int-string conversion limit, a ValueError)
        lenient = json.loads(body, parse_int=float)
    except RecursionError:
        return BadRequestError("body nests arrays or objects too deeply")
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        return BadRequestError(f"body is not valid JSON: {_position(e)}")
    where = first_non_finite(lenient)
    if where is not None:
        return InvalidInputError("NaN, Infinity and numbers beyond float range are not valid JSON numbers", field=where)
    return BadRequestError("body is not valid JSON")


def _position(error: ValueError | UnicodeDecodeError) -> str:
    """Where a body stopped parsing, without quoting it."""
    if isinstance(error, json.JSONDecodeError):
        return f"{error.msg} at line {error.lineno} column {error.colno}"
    if isinstance(error, UnicodeDecodeError):
        return f"not UTF-8 at byte {error.start}"
    return "unreadable number"


def _is_model_call(path: str) -> bool:
    return path.startswith(("/v1/models/", "/v2/models/")) and (path.endswith((":predict", ":explain", "/infer", "/explain")))


class GuardMiddleware:
    """Header sanity, size limit, authentication, authorization, rate limiting and strict JSON for the wrapped app."""

    def __init__(
        self,
        app: ASGIApp,
        auth: AuthConfig | None,
        limits: Limits,
        limiter: RateLimiter | None = None,
        on_error: Callable[[str, int], None] | None = None,
        served_version: Callable[[str], str | None] | None = None,
    ) -> None:
        self.app = app
        self.auth = auth
        self.limits = limits
        self.limiter = limiter or RateLimiter(limits.rate_per_s, limits.burst)
        self.failures = FailureLimiter(limits.auth_failures, limits.auth_failure_window_s)
        self.scrapes = RateLimiter(limits.metrics_rate_per_s, limits.metrics_burst)
        self.verified = VerifiedTokens()
        self.on_error = on_error
        self.served_version = served_version or (lambda _: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        watched = _Watched(send, scope["path"], self.on_error)
        try:
            await self._guard(scope, receive, _BoundedErrors(watched.send).send)
        except ChurnOpsError as e:
            if watched.started:
                raise
            await _respond(watched.send, *error_response(e))
        except Exception:
            # a bug, not the client's mistake: log it, count it, answer without internals
            incident = uuid.uuid4().hex[:12]
            log.exception("unexpected error on %s %s (incident %s)", scope["method"], scope["path"], incident)
            if watched.started:
                raise
            body = orjson.dumps({"error": f"internal error (incident {incident})"})
            await _respond(watched.send, 500, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())])

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Raises ChurnOpsError for the client's mistakes (answered by ``__call__``); else hands the request on."""
        repeated = repeated_singleton(scope["headers"])
        if repeated is not None:
            raise BadRequestError("sent more than once; send it once", field=repeated)
        headers = {k.lower(): v for k, v in scope["headers"]}
        # never trust a caller-supplied subject header
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != SUBJECT_HEADER]
        method, path = scope["method"], scope["path"]
        address = (scope.get("client") or ("unknown", 0))[0]

        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            raise BadRequestError("must be a non-negative integer", field="Content-Length")
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            raise PayloadTooLargeError(f"request body larger than {self.limits.max_body_bytes} bytes")
        check_request_id(headers.get(REQUEST_ID_HEADER))
        check_model_name(path)
        plain = unversioned(path, self.served_version)
        if plain != path:
            scope["path"], scope["raw_path"] = plain, plain.encode()
            path = plain
        if path == "/metrics":
            self._throttle(self.scrapes, f"metrics@{address}", "scrapes of /metrics from this address")

        role = required_role(method, path)
        subject = "anonymous"
        if role is not None:
            if self.auth is not None:
                subject = self._authorize(headers.get(b"authorization"), address, method, path, role)
            else:
                subject = f"anonymous@{address}"  # without authentication, limits apply per client address
            self._throttle(self.limiter, subject, f"rate limit for '{subject}'")
        scope["headers"].append((SUBJECT_HEADER, encode_subject(subject)))

        if method != "POST":
            await self.app(scope, receive, send)
            return
        body, state = await _read_body(receive, self.limits.max_body_bytes)
        if state == "gone":
            return  # the client left (or the protocol closed it on its read timeout): nobody to answer
        if state == "too large":
            raise PayloadTooLargeError(f"request body larger than {self.limits.max_body_bytes} bytes")
        if _is_model_call(path):
            media = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
            if media != b"application/json":
                raise UnsupportedMediaTypeError("must be application/json", field="Content-Type")
            # KServe compares the header verbatim: hand it the canonical form ("Application/JSON; charset=utf-8" is JSON too)
            scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
            scope["headers"].append((b"content-type", b"application/json"))
            problem = json_problem(body) if body else None
            if problem is not None:
                raise problem
        await self.app(scope, _replay(body, receive), send)

    def _authorize(self, authorization: bytes | None, address: str, method: str, path: str, role: Role) -> str:
        """The caller's subject; failed attempts count against the address (and are refused early past the limit)."""
        assert self.auth is not None
        wait = self.failures.wait(address)
        if wait > 0:
            raise RateLimitedError("too many failed authentications from this address", retry_after=max(1, math.ceil(wait)))
        try:
            principal = authenticate(self.auth, authorization.decode("latin-1") if authorization else None, self.verified)
        except UnauthorizedError:
            self.failures.record(address)
            raise
        if principal.role < role:
            raise ForbiddenError(f"role '{principal.role.name}' may not {method} {path}; needs '{role.name}'")
        return principal.subject

    @staticmethod
    def _throttle(limiter: RateLimiter, key: str, what: str) -> None:
        wait = limiter.acquire(key)
        if wait > 0:
            raise RateLimitedError(f"{what} exceeded", retry_after=max(1, math.ceil(wait)))


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


class _BoundedErrors:
    """A ``send`` that cuts a client error's body to ``limit`` bytes (as ``{"error": ...}``).

    KServe answers its own errors (unknown model, invalid tensor) with messages that quote the client's input at any
    length, from handlers it installs itself; bounding them here covers each of them, whichever layer answered.
    """

    def __init__(self, send: Send, limit: int = MAX_ERROR_BODY_BYTES) -> None:
        self._send, self._limit = send, limit
        self._start: Message | None = None  # a 4xx start, held until its body is complete
        self._body: list[bytes] = []

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start" and 400 <= message["status"] < 500:
            self._start = message
            return
        if self._start is None or message["type"] != "http.response.body":
            await self._send(message)
            return
        self._body.append(message.get("body", b""))
        if message.get("more_body", False):
            return
        body = b"".join(self._body)
        if len(body) > self._limit:
            body = _cut(body, self._limit)
        headers = [(k, v) for k, v in self._start["headers"] if k.lower() != b"content-length"]
        start, self._start = {**self._start, "headers": [*headers, (b"content-length", str(len(body)).encode())]}, None
        await self._send(start)
        await self._send({"type": "http.response.body", "body": body})


def _cut(body: bytes, limit: int) -> bytes:
    """An error body within ``limit`` bytes: its message cut (marked so), in the shape every error has."""
    text = body.decode("utf-8", "replace")
    try:
        parsed = json.loads(text)
        text = str(parsed.get("error", parsed.get("detail", text))) if isinstance(parsed, dict) else text
    except ValueError:
        pass
    keep = limit // 8  # room for JSON escapes (up to 6 bytes a character) of what is kept
    return orjson.dumps({"error": text[:keep] + " [cut]"})


async def _read_body(receive: Receive, limit: int) -> tuple[bytes, str]:
    """The body and "complete", or "too large", or "gone" when the client disconnected before sending all of it."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", "gone"  # a partial body must never reach the model as if it were whole
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return b"", "too large"
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks), "complete"


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
