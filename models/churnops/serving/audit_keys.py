"""Ed25519 keys of the audit trail: the private key extends the chain, public keys check it.

Someone who can write the log directory must not be able to sign, so the
signing key never lives beside the log: it comes from a file named on the
command line or in ``CHURNOPS_AUDIT_SIGNING_KEY`` (in the cluster, a mounted
Kubernetes Secret), and embedded mode creates one once under the user's
config directory. Verification needs only public keys, named by ``kid`` (the
first 16 hex digits of the sha256 of the raw public key), so a rotated-out key
keeps verifying the records it signed while its ``<kid>.pub`` stays in the set.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from churnops.errors import ConfigError

log = logging.getLogger(__name__)

SIGNING_KEY_ENV = "CHURNOPS_AUDIT_SIGNING_KEY"
PUBLIC_KEYS_ENV = "CHURNOPS_AUDIT_PUBLIC_KEYS"
KEY_DIR_ENV = "CHURNOPS_AUDIT_KEY_DIR"
SIGNING_FLAG = "--audit-signing-key"
PUBLIC_FLAG = "--audit-public-keys"
DEFAULT_SIGNING_NAME = "signing.key"
# domain separation: these signatures can never be replayed as signatures of anything else
CONTEXT = b"churnops-audit/v2\n"
# what a signature vouches for: the end of one appended batch (inside the log), or the log's head (kept outside it).
# A batch's signature is in the log for anyone to copy; were a head signed over the same message, a log cut back
# to an earlier batch, with that batch's own signature copied into the head, would verify.
Role = Literal["batch", "head"]


def kid_of(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def signed_message(role: Role, seq: int, chain_hash: str) -> bytes:
    return CONTEXT + f"{role}\n{seq}\n{chain_hash}".encode()


@dataclass(frozen=True)
class Signer:
    """The private key that signs each appended batch's head."""

    key: Ed25519PrivateKey
    kid: str
    source: str  # where it came from, for messages

    @classmethod
    def of(cls, key: Ed25519PrivateKey, source: str) -> Signer:
        return cls(key, kid_of(key.public_key()), source)

    def sign(self, role: Role, seq: int, chain_hash: str) -> str:
        return base64.urlsafe_b64encode(self.key.sign(signed_message(role, seq, chain_hash))).rstrip(b"=").decode()


@dataclass(frozen=True)
class PublicKeys:
    """The verification set: public keys by kid, and where they were read from (named in findings)."""

    keys: Mapping[str, Ed25519PublicKey] = field(default_factory=dict)
    source: str = "no public keys"

    def with_signer(self, signer: Signer) -> PublicKeys:
        """A writer always trusts what it signed itself."""
        return PublicKeys({**self.keys, signer.kid: signer.key.public_key()}, self.source)

    def problem(self, role: Role, kid: object, seq: int, chain_hash: str, sig: object) -> str | None:
        """Why the signature (made for ``role``) does not hold, or None when it does."""
        if not isinstance(kid, str) or not isinstance(sig, str):
            return "kid and sig must both be strings"
        public = self.keys.get(kid)
        if public is None:
            return f"signed with unknown kid {kid!r} (no such public key in {self.source})"
        try:
            public.verify(base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)), signed_message(role, seq, chain_hash))
        except (InvalidSignature, ValueError):
            return f"signature by kid {kid} does not verify (forged or altered)"
        return None


def default_key_dir(env: Mapping[str, str]) -> Path:
    """Outside any data directory: the user's config directory (``$XDG_CONFIG_HOME``), or ``CHURNOPS_AUDIT_KEY_DIR``."""
    if env.get(KEY_DIR_ENV):
        return Path(env[KEY_DIR_ENV])
    config = Path(env["XDG_CONFIG_HOME"]) if env.get("XDG_CONFIG_HOME") else Path.home() / ".config"
    return config / "churnops" / "audit-keys"


def check_private_file(path: Path) -> None:
    """A key others could read lets them sign; one others could replace lets them choose the key.

    Refused: not a regular file, writable by group or others, readable by others.
    Group-readable is accepted with a warning (Kubernetes' ``fsGroup`` makes a
    mounted Secret group-readable; give the volume ``defaultMode: 0400``).
    """
    try:
        st = path.stat()
    except OSError as e:
        raise ConfigError(f"cannot read the audit signing key {path}: {e.strerror}", field=SIGNING_FLAG) from None
    if not stat.S_ISREG(st.st_mode):
        raise ConfigError(f"{path} is not a file", field=SIGNING_FLAG)
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o022 or mode & 0o004:
        raise ConfigError(
            f"the audit signing key {path} has mode {mode:04o}: others could read or replace it (chmod 600)", field=SIGNING_FLAG
        )
    if mode & 0o040:
        log.warning("audit signing key %s is group-readable (mode %04o); 0600 or 0400 is safer", path, mode)


def load_signer(path: Path) -> Signer:
    check_private_file(path)
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise ConfigError(f"{path} is not an unencrypted PEM private key: {e}", field=SIGNING_FLAG) from None
    if not isinstance(key, Ed25519PrivateKey):
        raise ConfigError(f"{path} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key", field=SIGNING_FLAG)
    return Signer.of(key, str(path))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    """Create ``path`` whole, with ``mode`` from the start, never overwriting (``FileExistsError``).

    Written under a temporary name and linked into place, so a process racing to
    create the same default key either wins or finds a complete file.
    """
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.link(tmp, path)
    finally:
        tmp.unlink()


def private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def generate(out: Path, private_name: str | None = None) -> tuple[str, Path, Path]:
    """A new key pair in ``out``: ``<kid>.key`` (0600) and ``<kid>.pub``; returns (kid, private path, public path)."""
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    key = Ed25519PrivateKey.generate()
    kid = kid_of(key.public_key())
    private, public = out / (private_name or f"{kid}.key"), out / f"{kid}.pub"
    if private.exists():
        raise FileExistsError(f"{private} exists already; keys are never overwritten")
    _write_new(public, public_pem(key.public_key()), 0o644)  # first: whoever finds the private key finds its public key
    try:
        _write_new(private, private_pem(key), 0o600)
    except FileExistsError:
        public.unlink()  # lost a race: the winner's pair stays, this one goes
        raise
    return kid, private, public


def inside(path: Path, directory: Path) -> bool:
    return path.resolve().is_relative_to(directory.resolve()) or path.absolute().is_relative_to(directory.absolute())


def signer_for(given: Path | None, env: Mapping[str, str], log_dir: Path, embedded: bool = True) -> Signer:
    """The signing key of a writer: ``given``, else ``$CHURNOPS_AUDIT_SIGNING_KEY``, else the embedded default (created once).

    A key inside the log's directory is refused: whoever can write the log could read it and sign.
    ``embedded=False`` (a shared PostgreSQL trail): no default key, since each pod would make its own, lost on restart.
    """
    path = given or (Path(env[SIGNING_KEY_ENV]) if env.get(SIGNING_KEY_ENV) else None)
    if path is None and not embedded:
        raise ConfigError(
            f"a shared audit trail needs a signing key (a mounted Secret) in {SIGNING_FLAG} or ${SIGNING_KEY_ENV}", field=SIGNING_FLAG
        )
    if path is None:
        key_dir = default_key_dir(env)
        path = key_dir / DEFAULT_SIGNING_NAME
        if not path.exists() and not inside(key_dir, log_dir):
            try:
                kid, _, public = generate(key_dir, DEFAULT_SIGNING_NAME)
                log.warning("created the audit signing key %s (kid %s); its public key is %s", path, kid, public)
            except FileExistsError:
                pass  # another writer created it a moment ago: use that one
            except OSError as e:
                raise ConfigError(f"cannot create the audit signing key in {key_dir}: {e.strerror}", field=SIGNING_FLAG) from None
    if inside(path, log_dir):
        raise ConfigError(
            f"the audit signing key {path} is inside the audit log's directory {log_dir}: whoever can write the log "
            f"could sign; keep it elsewhere ({SIGNING_FLAG} or ${SIGNING_KEY_ENV})",
            field=SIGNING_FLAG,
        )
    return load_signer(path)


def _public_keys_in(text: bytes, origin: Path) -> Iterable[Ed25519PublicKey]:
    marker = b"-----BEGIN PUBLIC KEY-----"
    blocks = [marker + part for part in text.split(marker)[1:]]
    if not blocks:
        raise ConfigError(f"{origin} holds no PEM public key", field=PUBLIC_FLAG)
    for block in blocks:
        try:
            key = serialization.load_pem_public_key(block)
        except ValueError as e:
            raise ConfigError(f"{origin}: not a PEM public key: {e}", field=PUBLIC_FLAG) from None
        if not isinstance(key, Ed25519PublicKey):
            raise ConfigError(f"{origin} holds a {type(key).__name__.removeprefix('_')}, not an Ed25519 key", field=PUBLIC_FLAG)
        yield key


def load_public_keys(source: Path) -> PublicKeys:
    """A directory of ``<kid>.pub`` files (the name must be the key's kid) or one file of PEM public keys."""
    keys: dict[str, Ed25519PublicKey] = {}
    if source.is_dir():
        for path in sorted(source.glob("*.pub")):
            for key in _public_keys_in(path.read_bytes(), path):
                if kid_of(key) != path.stem:
                    raise ConfigError(f"{path} holds the key of kid {kid_of(key)}; name it {kid_of(key)}.pub", field=PUBLIC_FLAG)
                keys[path.stem] = key
    elif source.is_file():
        keys = {kid_of(k): k for k in _public_keys_in(source.read_bytes(), source)}
    else:
        raise ConfigError(f"{source} does not exist", field=PUBLIC_FLAG)
    return PublicKeys(keys, str(source))


def public_keys_for(given: Path | None, env: Mapping[str, str]) -> PublicKeys:
    """``given``, else ``$CHURNOPS_AUDIT_PUBLIC_KEYS``, else the embedded default key directory (empty if there is none)."""
    source = given or (Path(env[PUBLIC_KEYS_ENV]) if env.get(PUBLIC_KEYS_ENV) else None)
    if source is not None:
        return load_public_keys(source)
    key_dir = default_key_dir(env)
    return load_public_keys(key_dir) if key_dir.is_dir() else PublicKeys({}, f"{key_dir} (which does not exist)")
