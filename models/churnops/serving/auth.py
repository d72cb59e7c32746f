"""Bearer tokens: who is calling and with which role.

Tokens are JWTs verified with one pinned algorithm (the token's own ``alg``
header is never trusted) and a key chosen by the token's ``kid`` from a key
source, so signing keys rotate without downtime:

- ``StaticKeys``: one key (the embedded mode's HMAC secret, or a PEM public key);
- ``KeyDirectory``: one file per key id in a directory, such as a mounted
  Kubernetes Secret; files are re-read when the directory changes, without a
  restart (add the new key, switch the issuer to it, remove the old one after
  the longest token lifetime);
- ``JwksKeys``: an OIDC issuer's JWKS endpoint (Dex, Keycloak, Cognito) through
  PyJWT's ``PyJWKClient``, with cached keys.

Claims: ``exp`` (a number), ``aud`` and ``sub`` are required; ``sub`` is
UTF-8 text; ``roles`` is a list of strings (or one string). Anything else is
a 401; a valid token without a known role is a 403.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

import jwt

from churnops.errors import ConfigError, ForbiddenError, InvalidInputError, UnauthorizedError, UnavailableError

REQUIRED_CLAIMS = ("exp", "aud", "sub")
MAX_SUBJECT_CHARS = 256
MAX_KID_CHARS = 128


class Role(IntEnum):
    """Ordered: each role may do what the roles below it may."""

    viewer = 1
    predictor = 2
    deployer = 3
    admin = 4


@dataclass(frozen=True)
class Principal:
    subject: str
    role: Role


class KeySource(Protocol):
    def key_for(self, kid: str | None) -> Any:
        """The verification key for a token's key id; UnauthorizedError when there is none."""
        ...


@dataclass(frozen=True)
class StaticKeys:
    """One key, used whatever the token's ``kid`` (or a few keys by id, with ``default`` for tokens without one)."""

    keys: dict[str, str] = field(default_factory=dict)
    default: str | None = None

    def key_for(self, kid: str | None) -> Any:
        if kid is not None and kid in self.keys:
            return self.keys[kid]
        if self.default is not None and (kid is None or not self.keys):
            return self.default
        raise UnauthorizedError(f"unknown key id {kid!r}")


@dataclass
class KeyDirectory:
    """Keys as files named ``<kid>`` (or ``<kid>.pem``/``.key``) in ``path``, re-read when the directory changes.

    Kubernetes updates a mounted Secret by swapping a symlink, which changes the
    directory's modification time; it is checked at most every ``check_every_s``.
    """

    path: Path
    check_every_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    _keys: dict[str, str] = field(default_factory=dict)
    _stamp: tuple[float, ...] = ()
    _checked: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def key_for(self, kid: str | None) -> Any:
        keys = self._current()
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise UnauthorizedError("token has no 'kid' header and several keys are configured")
        if kid not in keys:
            raise UnauthorizedError(f"unknown key id {kid!r}")
        return keys[kid]

    def _current(self) -> dict[str, str]:
        with self._lock:
            now = self.clock()
            if now - self._checked >= self.check_every_s:
                self._checked = now
                stamp = self._stamp_of()
                if stamp != self._stamp:
                    self._keys, self._stamp = self._read(), stamp
            return self._keys

    def _stamp_of(self) -> tuple[float, ...]:
        try:
            files = sorted(p for p in self.path.iterdir() if not p.name.startswith("."))
        except OSError as e:
            raise UnavailableError(f"key directory {self.path} cannot be read: {e}") from None
        return (self.path.stat().st_mtime, *(p.stat().st_mtime for p in files))

    def _read(self) -> dict[str, str]:
        keys: dict[str, str] = {}
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".") or not p.is_file():
                continue  # Kubernetes' ..data links and hidden files
            kid = p.name.removesuffix(".pem").removesuffix(".key")
            keys[kid] = p.read_text().strip()
        if not keys:
            raise UnavailableError(f"key directory {self.path} holds no keys")
        return keys


class JwksKeys:
    """Keys from an OIDC issuer's JWKS endpoint (cached by PyJWKClient; refetched for an unknown ``kid``)."""

    def __init__(self, url: str, cache_s: int = 300, timeout_s: float = 5.0, refresh_cooldown_s: float = 30.0) -> None:
        """An unknown ``kid`` refetches the key set at most every ``refresh_cooldown_s`` (so forged kids cannot flood
        the issuer): publish a new key at the issuer before signing with it."""
        self.url = url
        self.client = jwt.PyJWKClient(
            url, cache_keys=True, lifespan=cache_s, timeout=int(max(1, timeout_s)), cooldown_duration=refresh_cooldown_s
        )

    def key_for(self, kid: str | None) -> Any:
        if kid is None:
            raise UnauthorizedError("token has no 'kid' header; the JWKS endpoint needs one to pick a key")
        try:
            return self.client.get_signing_key(kid).key
        except jwt.PyJWKClientConnectionError as e:
            raise UnavailableError(f"JWKS endpoint {self.url} unreachable: {e}", retry_after=5) from None
        except jwt.PyJWKClientError as e:
            raise UnauthorizedError(f"unknown key id {kid!r} ({e})") from None


@dataclass(frozen=True)
class AuthConfig:
    """How tokens are verified (and, with an HMAC secret, issued)."""

    key: str | None = None  # HMAC secret or PEM public key; shorthand for StaticKeys(default=key)
    audience: str = "churnops"
    algorithm: str = "HS256"
    issuer: str | None = None
    leeway_s: float = 5.0
    keys: KeySource | None = None  # key directory or JWKS; wins over ``key``
    signing_kid: str | None = None  # the ``kid`` header written by issue_token

    def __post_init__(self) -> None:
        if self.algorithm.lower() == "none":
            raise ConfigError("algorithm 'none' is never accepted")
        if self.key is None and self.keys is None:
            raise ConfigError("no verification key: give a secret, a public key, a key directory or a JWKS URL")
        if self.key is not None and self.algorithm.startswith("HS") and len(self.key) < 32:
            raise ConfigError("an HMAC secret must be at least 32 characters")

    def source(self) -> KeySource:
        return self.keys if self.keys is not None else StaticKeys(default=self.key)


def authenticate(cfg: AuthConfig, authorization: str | None) -> Principal:
    if not authorization:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer <jwt>)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("Authorization header must be 'Bearer <jwt>'")
    try:
        header = jwt.get_unverified_header(token)
    except jwt.InvalidTokenError as e:
        raise UnauthorizedError(f"invalid token: {e}") from None
    kid = header.get("kid")
    if kid is not None and (not isinstance(kid, str) or not 0 < len(kid) <= MAX_KID_CHARS):
        raise UnauthorizedError(f"token 'kid' must be a string of 1-{MAX_KID_CHARS} characters")
    key = cfg.source().key_for(kid)
    try:
        claims = jwt.decode(
            token,
            key,
            algorithms=[cfg.algorithm],  # pinned: the token's own 'alg' header is never trusted
            audience=cfg.audience,
            issuer=cfg.issuer,
            leeway=cfg.leeway_s,
            options={"require": [*REQUIRED_CLAIMS, *(["iss"] if cfg.issuer else [])]},
        )
    except jwt.ExpiredSignatureError:
        raise UnauthorizedError("token expired") from None
    except jwt.MissingRequiredClaimError as e:
        raise UnauthorizedError(f"token lacks the required claim '{e.claim}'") from None
    except jwt.InvalidAudienceError:
        raise UnauthorizedError(f"token audience is not '{cfg.audience}'") from None
    except (jwt.InvalidTokenError, ValueError, TypeError) as e:  # PyJWT lets some malformed claims through as ValueError
        raise UnauthorizedError(f"invalid token: {e}") from None
    return Principal(_subject(claims), _role(claims))


def _subject(claims: dict[str, Any]) -> str:
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise UnauthorizedError("token claim 'exp' must be a number (seconds since the epoch)")
    sub = claims["sub"]
    if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT_CHARS:
        raise UnauthorizedError(f"token claim 'sub' must be text of 1-{MAX_SUBJECT_CHARS} characters")
    try:
        sub.encode("utf-8")
    except UnicodeEncodeError:
        raise UnauthorizedError("token claim 'sub' is not valid UTF-8 text") from None
    if any(unicodedata.category(ch).startswith("C") for ch in sub):
        raise UnauthorizedError("token claim 'sub' must not contain control characters")
    return sub


def _role(claims: dict[str, Any]) -> Role:
    roles = claims.get("roles", [])
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise UnauthorizedError("token claim 'roles' must be a list of strings (or one string)")
    known = [Role[r] for r in roles if r in Role.__members__]
    if not known:
        raise ForbiddenError(f"token grants none of the roles {list(Role.__members__)}")
    return max(known)


def issue_token(cfg: AuthConfig, subject: str, roles: list[str], ttl_s: int = 3600, now: float | None = None) -> str:
    """A token for ``subject`` (HMAC keys only: RSA/EC tokens come from the identity provider)."""
    unknown = [r for r in roles if r not in Role.__members__]
    if unknown:
        raise InvalidInputError(f"unknown role(s) {unknown}; choose from {list(Role.__members__)}", field="--role")
    if cfg.key is None or not cfg.algorithm.startswith("HS"):
        raise ConfigError("tokens are issued with the HMAC secret only; RSA/EC tokens come from your identity provider")
    issued = int(now if now is not None else time.time())
    claims: dict[str, Any] = {"sub": subject, "aud": cfg.audience, "roles": roles, "iat": issued, "exp": issued + ttl_s}
    if cfg.issuer:
        claims["iss"] = cfg.issuer
    headers = {"kid": cfg.signing_kid} if cfg.signing_kid else None
    return jwt.encode(claims, cfg.key, algorithm=cfg.algorithm, headers=headers)


def local_secret(path: Path) -> str:
    """The embedded mode's HMAC secret, created once with owner-only permissions."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip()
