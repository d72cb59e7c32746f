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

import logging
import os
import secrets
import threading
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

from churnops.errors import ConfigError, ForbiddenError, InvalidInputError, UnauthorizedError, UnavailableError

log = logging.getLogger(__name__)

REQUIRED_CLAIMS = ("exp", "aud", "sub")
MIN_HMAC_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}  # RFC 7518 3.2: at least as long as the hash output
MIN_RSA_BITS = 2048
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


class UnusableKeyError(ValueError):
    """Why a key cannot verify tokens of the pinned algorithm."""


def usable_key(data: bytes | str, algorithm: str) -> Any:
    """The key ready for ``jwt.decode``, or ``UnusableKeyError`` saying why it cannot verify ``algorithm`` tokens.

    A weak or mistyped key must never reach verification: a short HMAC secret can be guessed (anyone could
    then forge an admin token), and a key of the wrong type makes PyJWT fail with an error that is no client's.
    """
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise UnusableKeyError("not UTF-8 text (a binary file?)") from None
    text = data.strip()
    if not text:
        raise UnusableKeyError("empty")
    pem = text.startswith("-----BEGIN")
    if algorithm.startswith("HS"):
        if pem:
            raise UnusableKeyError(f"a PEM key, not the shared secret that {algorithm} needs")
        size, least = len(text.encode("utf-8")), MIN_HMAC_BYTES.get(algorithm, 64)
        if size < least:
            raise UnusableKeyError(f"an HMAC secret of {size} bytes; {algorithm} needs at least {least}")
        return text
    if not pem:
        raise UnusableKeyError(f"not a PEM public key, which {algorithm} needs")
    if "PRIVATE" in text.splitlines()[0]:
        raise UnusableKeyError("a private key: give the server the public key only")
    try:
        key = jwt.get_algorithm_by_name(algorithm).prepare_key(text)
    except (jwt.InvalidKeyError, ValueError, TypeError) as e:
        detail = f" ({e})" if "curve" in str(e) else ""
        raise UnusableKeyError(f"not a public key that {algorithm} verifies with{detail}") from None
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise UnusableKeyError(f"an RSA key of {key.key_size} bits; at least {MIN_RSA_BITS} are needed")
    return key


@dataclass
class KeyDirectory:
    """Keys as files named ``<kid>`` (or ``<kid>.pem``/``.key``) in ``path``, re-read when the directory changes.

    Kubernetes updates a mounted Secret by swapping a symlink, which changes the
    directory's modification time; it is checked at most every ``check_every_s``.

    Every file is checked against ``algorithm`` (``usable_key``); a bad one is skipped with a warning naming
    it and why (and counted in ``rejected``) while the others keep working. When a change leaves no usable
    key, tokens are refused with 503 until one is mounted: the previous keys are not kept, since removing a
    key must revoke it.
    """

    path: Path
    check_every_s: float = 5.0
    clock: Callable[[], float] = time.monotonic
    algorithm: str = "HS256"
    rejected: dict[str, str] = field(default_factory=dict)  # file name -> why it was skipped, as of the last read
    _keys: dict[str, Any] = field(default_factory=dict)
    _stamp: tuple[float, ...] = ()
    _checked: float = float("-inf")
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def check(self) -> None:
        """Read the directory now; ConfigError naming the flag when it holds no usable key (a server must not start)."""
        try:
            self._current(force=True)
        except UnavailableError as e:
            raise ConfigError(e.message, field="--jwt-keys-dir") from None

    def key_for(self, kid: str | None) -> Any:
        keys = self._current()
        if kid is None:
            if len(keys) == 1:
                return next(iter(keys.values()))
            raise UnauthorizedError("token has no 'kid' header and several keys are configured")
        if kid not in keys:
            raise UnauthorizedError(f"unknown key id {kid!r}")
        return keys[kid]

    def _current(self, force: bool = False) -> dict[str, Any]:
        with self._lock:
            now = self.clock()
            if force or now - self._checked >= self.check_every_s:
                self._checked = now
                stamp = self._stamp_of()
                if stamp != self._stamp:
                    self._keys, self._stamp = self._read(), stamp
            if not self._keys:
                bad = "; ".join(f"{name}: {why}" for name, why in sorted(self.rejected.items()))
                raise UnavailableError(f"key directory {self.path} holds no usable key" + (f" ({bad})" if bad else ""), retry_after=5)
            return self._keys

    def _stamp_of(self) -> tuple[float, ...]:
        try:
            files = sorted(p for p in self.path.iterdir() if not p.name.startswith("."))
        except OSError as e:
            raise UnavailableError(f"key directory {self.path} cannot be read: {e}") from None
        return (self.path.stat().st_mtime, *(_mtime(p) for p in files))

    def _read(self) -> dict[str, Any]:
        keys: dict[str, Any] = {}
        rejected: dict[str, str] = {}
        for p in sorted(self.path.iterdir()):
            if p.name.startswith(".") or not (p.is_file() or p.is_symlink()):
                continue  # Kubernetes' ..data links, hidden files, directories; a dangling link fails below and is named
            kid = p.name.removesuffix(".pem").removesuffix(".key")
            try:
                keys[kid] = usable_key(p.read_bytes(), self.algorithm)
            except (UnusableKeyError, OSError) as e:
                rejected[p.name] = str(e)
                if self.rejected.get(p.name) != str(e):  # once per file and reason, not at every re-read
                    log.warning("key file %s skipped for %s tokens: %s", p, self.algorithm, e)
        self.rejected = rejected
        return keys


def _mtime(path: Path) -> float:
    """When a key file last changed; -1 for one that cannot be read (a link whose target is gone): ``_read`` rejects it."""
    try:
        return path.stat().st_mtime
    except OSError:
        return -1.0


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
    max_lifetime_s: float | None = 24 * 3600.0  # tokens expiring further ahead are refused (None: no cap)
    keys: KeySource | None = None  # key directory or JWKS; wins over ``key``
    signing_kid: str | None = None  # the ``kid`` header written by issue_token

    def __post_init__(self) -> None:
        if self.algorithm.lower() == "none":
            raise ConfigError("algorithm 'none' is never accepted")
        if self.key is None and self.keys is None:
            raise ConfigError("no verification key: give a secret, a public key, a key directory or a JWKS URL")
        try:
            jwt.get_algorithm_by_name(self.algorithm)
        except NotImplementedError:
            raise ConfigError(f"unknown algorithm {self.algorithm!r}", field="algorithm") from None
        if self.key is not None:
            try:
                usable_key(self.key, self.algorithm)
            except UnusableKeyError as e:
                raise ConfigError(f"the key cannot verify {self.algorithm} tokens: {e}", field="key") from None

    def source(self) -> KeySource:
        return self.keys if self.keys is not None else StaticKeys(default=self.key)


@dataclass(frozen=True)
class _Verified:
    principal: Principal
    kid: str | None
    key: Any  # the very object that verified the signature
    exp: float


class VerifiedTokens:
    """Tokens whose signature and claims were verified, by their exact text.

    A client sends the same token with every request, and checking its signature again costs about 0.1 ms of a
    request's CPU. An entry serves only while its ``exp`` (plus the leeway) has not passed and while the key source
    still hands out the very key object that verified it: a key removed from the directory, or re-read after any
    change, or dropped from the JWKS, sends its tokens through full verification again (and refuses them), as
    without the cache. Only accepted tokens are kept; at most ``size``, the least recently used leaving first.
    Used from one event loop (the guard middleware's).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: OrderedDict[str, _Verified] = OrderedDict()

    def get(self, cfg: AuthConfig, token: str, now: float) -> Principal | None:
        entry = self._entries.get(token)
        if entry is None:
            return None
        if now >= entry.exp + cfg.leeway_s or cfg.source().key_for(entry.kid) is not entry.key:
            del self._entries[token]
            return None
        self._entries.move_to_end(token)
        return entry.principal

    def put(self, token: str, entry: _Verified) -> None:
        self._entries[token] = entry
        self._entries.move_to_end(token)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)


def authenticate(cfg: AuthConfig, authorization: str | None, verified: VerifiedTokens | None = None) -> Principal:
    """The caller of a request; ``verified`` (optional) skips the signature check of a token already verified."""
    if not authorization:
        raise UnauthorizedError("missing bearer token (Authorization: Bearer <jwt>)")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise UnauthorizedError("Authorization header must be 'Bearer <jwt>'")
    if verified is not None:
        known = verified.get(cfg, token, time.time())
        if known is not None:
            return known
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
    except jwt.InvalidKeyError:  # e.g. a JWKS key of another type than the pinned algorithm's: not the client's fault, but no 500
        raise UnauthorizedError(f"the key for this token's kid cannot verify {cfg.algorithm} tokens") from None
    except (jwt.InvalidTokenError, ValueError, TypeError) as e:  # PyJWT lets some malformed claims through as ValueError
        raise UnauthorizedError(f"invalid token: {e}") from None
    principal = Principal(_subject(claims, cfg.max_lifetime_s, time.time()), _role(claims))
    if verified is not None:
        verified.put(token, _Verified(principal, kid, key, float(claims["exp"])))
    return principal


def _subject(claims: dict[str, Any], max_lifetime_s: float | None, now: float) -> str:
    """The token's subject, once its ``exp`` is a number no further than ``max_lifetime_s`` ahead of ``now``.

    The cap bounds how long a leaked token works whoever issued it, so ``iat`` is not required (an identity
    provider's clock may differ from ours; ``exp`` alone is what the cap is about).
    """
    exp = claims["exp"]
    if isinstance(exp, bool) or not isinstance(exp, int | float):
        raise UnauthorizedError("token claim 'exp' must be a number (seconds since the epoch)")
    if max_lifetime_s is not None and exp - now > max_lifetime_s:
        raise UnauthorizedError(f"token expires more than {max_lifetime_s:g} s from now; ask for a shorter-lived token")
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
