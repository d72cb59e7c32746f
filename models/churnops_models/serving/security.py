"""Access control and limits in front of the KServe routes.

One ASGI middleware, in this order: request size (413, from Content-Length
before anything is read, and counted while streaming), bearer token (401),
role for the route (403), per-subject token bucket (429 + Retry-After), then
strict JSON for model calls (NaN, Infinity and overflowing numbers are 422
with the field's path: the JSON spec has no such numbers). The decisions are
plain functions; the middleware only moves bytes.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any

import jwt
import orjson

from churnops_models.serving.inputs import first_non_finite

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

SUBJECT_HEADER = b"x-churnops-subject"
REQUIRED_CLAIMS = ("exp", "aud", "sub")


class Role(IntEnum):
    """Ordered: each role may do what the roles below it may."""

    viewer = 1
    predictor = 2
    deployer = 3
    admin = 4


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


class AuthError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role


@dataclass(frozen=True)
class AuthConfig:
    """JWT verification: one pinned algorithm and its key; tokens need exp, aud and sub."""

    key: str  # HS256 secret or an RS256/ES256 public key (PEM)
    audience: str = "churnops"
    algorithm: str = "HS256"
    issuer: str | None = None
    leeway_s: float = 5.0

    def __post_init__(self) -> None:
        if self.algorithm.lower() == "none":
            raise ValueError("algorithm 'none' is never accepted")
        if self.algorithm.startswith("HS") and len(self.key) < 32:
            raise ValueError("an HMAC secret must be at least 32 characters")


def authenticate(cfg: AuthConfig, authorization: str | None) -> Principal:
    if not authorization:
        raise AuthError(401, "missing bearer token (Authorization: Bearer <jwt>)")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "Authorization header must be 'Bearer <jwt>'")
    try:
        claims = jwt.decode(
            token.strip(),
            cfg.key,
            algorithms=[cfg.algorithm],  # pinned: the token's own 'alg' header is never trusted
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_s,
            options={"require": [*REQUIRED_CLAIMS, *(["iss"] if cfg.issuer else [])]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "token expired") from None
    except jwt.MissingRequiredClaimError as e:
        raise AuthError(401, f"token lacks the required claim '{e.claim}'") from None
    except jwt.InvalidAudienceError:
        raise AuthError(401, f"token audience is not '{cfg.audience}'") from None
    except jwt.InvalidTokenError as e:
        raise AuthError(401, f"invalid token: {e}") from None
    return Principal(str(claims["sub"]), _role(claims))


def _role(claims: dict[str, Any]) -> Role:
    roles = claims.get("roles", [])
    if isinstance(roles, str):
        roles = [roles]
    known = [Role[r] for r in roles if isinstance(r, str) and r in Role.__members__]
    if not known:
        raise AuthError(403, f"token grants none of the roles {list(Role.__members__)}")
    return max(known)


def issue_token(cfg: AuthConfig, subject: str, roles: list[str], ttl_s: int = 3600, now: float | None = None) -> str:
    """A token for ``subject`` (HMAC keys only: RSA/EC tokens come from the identity provider)."""
    unknown = [r for r in roles if r not in Role.__members__]
    if unknown:
        raise ValueError(f"unknown role(s) {unknown}; choose from {list(Role.__members__)}")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": subject, "aud": cfg.audience, "roles": roles, "iat": issued, "exp": issued + ttl_s}
    if cfg.issuer:
        claims["iss"] = cfg.issuer
    return jwt.encode(claims, cfg.key, algorithm=cfg.algorithm)


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


def _error(status: int, message: str, headers: list[tuple[bytes, bytes]] | None = None) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    body = orjson.dumps({"error": message})
    return status, body, [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]


def json_problem(body: bytes) -> tuple[int, str] | None:
    """None when ``body`` is strict JSON; else (status, message naming the field or position)."""
    try:
        orjson.loads(body)
        return None
    except orjson.JSONDecodeError:
        pass
    try:
        # Python's parser accepts NaN/Infinity and turns 1e309 into inf: use it to name the field
        lenient = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        return 400, f"body is not valid JSON: {e}"
    where = first_non_finite(lenient)
    if where is not None:
        return 422, f"{where}: NaN, Infinity and numbers beyond float range are not valid JSON numbers"
    return 400, "body is not valid JSON"


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
        if self.on_error is not None:
            send = _watch_status(send, scope["path"], self.on_error)
        headers = {k.lower(): v for k, v in scope["headers"]}
        # never trust a caller-supplied subject header
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != SUBJECT_HEADER]
        method, path = scope["method"], scope["path"]

        declared = headers.get(b"content-length")
        if declared is not None and not declared.isdigit():
            await _respond(send, *_error(400, "Content-Length must be a non-negative integer"))
            return
        if declared is not None and int(declared) > self.limits.max_body_bytes:
            await _respond(send, *_error(413, f"request body larger than {self.limits.max_body_bytes} bytes"))
            return

        role = required_role(method, path)
        subject = "anonymous"
        if role is not None:
            if self.auth is not None:
                try:
                    principal = authenticate(self.auth, headers.get(b"authorization", b"").decode("latin-1") or None)
                except AuthError as e:
                    extra = [(b"www-authenticate", b'Bearer realm="churnops"')] if e.status == 401 else []
                    await _respond(send, *_error(e.status, e.message, extra))
                    return
                if principal.role < role:
                    await _respond(send, *_error(403, f"role '{principal.role.name}' may not {method} {path}; needs '{role.name}'"))
                    return
                subject = principal.subject
            else:
                client = scope.get("client") or ("unknown", 0)
                subject = f"anonymous@{client[0]}"  # without authentication, limits apply per client address
            wait = self.limiter.acquire(subject)
            if wait > 0:
                retry = str(max(1, math.ceil(wait))).encode()
                await _respond(send, *_error(429, f"rate limit for '{subject}' exceeded", [(b"retry-after", retry)]))
                return
        scope["headers"].append((SUBJECT_HEADER, subject.encode()))

        if method != "POST":
            await self.app(scope, receive, send)
            return
        body, too_large = await _read_body(receive, self.limits.max_body_bytes)
        if too_large:
            await _respond(send, *_error(413, f"request body larger than {self.limits.max_body_bytes} bytes"))
            return
        content_type = headers.get(b"content-type", b"application/json").split(b";")[0].strip().lower()
        if _is_model_call(path) and content_type != b"application/json":
            await _respond(send, *_error(415, "Content-Type must be application/json"))
            return
        if _is_model_call(path) and body:
            problem = json_problem(body)
            if problem is not None:
                await _respond(send, *_error(*problem))
                return
        await self.app(scope, _replay(body, receive), send)


def _watch_status(send: Send, path: str, on_error: Callable[[str, int], None]) -> Send:
    async def watched(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] >= 400:
            on_error(path, message["status"])
        await send(message)

    return watched


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
