"""Key rotation: keys picked by the token's kid from a directory (re-read without a restart) or a JWKS endpoint.

The JWKS endpoint is a real HTTP server on loopback; RS256 and ES256 tokens are signed with keys made here;
the last test runs a real `churnops serve --jwks-url` against it.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from churnops.errors import ConfigError, ForbiddenError, UnauthorizedError, UnavailableError
from churnops.layout import Layout
from churnops.serving.audit import read_records
from churnops.serving.auth import AuthConfig, JwksKeys, KeyDirectory, Role, VerifiedTokens, authenticate, issue_token
from tests.support import groups
from tests.support.serving import Registered, start_server

pytestmark = groups.SERVING_MODELS


def _claims(**over: Any) -> dict[str, Any]:
    return {"sub": "ann", "aud": "churnops", "roles": ["predictor"], "exp": int(time.time()) + 300, **over}


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _pem_public(key: Any) -> str:
    return str(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


@pytest.mark.parametrize("cached", [False, True], ids=["verified-each-time", "verified-tokens-cache"])
def test_key_directory_rotates_without_a_restart(tmp_path: Path, cached: bool) -> None:
    """The same steps with the guard's cache of verified tokens: a retired key revokes its tokens at once either way."""
    verified = VerifiedTokens() if cached else None
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    old, new = "o" * 40, "n" * 40
    (keys_dir / "2026-01").write_text(old + "\n")
    now = [0.0]
    cfg = AuthConfig(keys=KeyDirectory(keys_dir, check_every_s=5, clock=lambda: now[0]))
    signed_old = jwt.encode(_claims(), old, algorithm="HS256", headers={"kid": "2026-01"})
    assert authenticate(cfg, _bearer(signed_old), verified).role is Role.predictor
    assert authenticate(cfg, _bearer(jwt.encode(_claims(), old, algorithm="HS256")), verified).subject == "ann"  # one key: no kid needed

    (keys_dir / "2026-02.key").write_text(new)  # step 1: the new key is mounted next to the old one
    signed_new = jwt.encode(_claims(), new, algorithm="HS256", headers={"kid": "2026-02"})
    with pytest.raises(UnauthorizedError, match="unknown key id '2026-02'"):
        authenticate(cfg, _bearer(signed_new), verified)  # not re-read before the check interval
    now[0] = 5.0
    assert authenticate(cfg, _bearer(signed_new), verified).subject == "ann"
    assert authenticate(cfg, _bearer(signed_old), verified).subject == "ann"  # both verify during the overlap
    with pytest.raises(UnauthorizedError, match="no 'kid'"):
        authenticate(cfg, _bearer(jwt.encode(_claims(), old, algorithm="HS256")), verified)

    (keys_dir / "2026-01").unlink()  # step 3: the old key is retired after the longest token lifetime
    now[0] = 10.0
    with pytest.raises(UnauthorizedError, match="unknown key id '2026-01'"):
        authenticate(cfg, _bearer(signed_old), verified)
    forged = jwt.encode(_claims(), old, algorithm="HS256", headers={"kid": "2026-02"})
    with pytest.raises(UnauthorizedError, match="invalid token"):
        authenticate(cfg, _bearer(forged), verified)  # the kid picks the key; a token signed with another key fails


def test_a_cached_token_still_expires_and_only_accepted_tokens_are_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = AuthConfig(key="s" * 40, leeway_s=5)
    verified = VerifiedTokens(size=2)
    now = [1_000_000.0]

    class Clock(dt.datetime):  # PyJWT's clock and ours read the same fake time
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> Clock:
            return cls.fromtimestamp(now[0], tz)

    monkeypatch.setattr("churnops.serving.auth.time.time", lambda: now[0])
    monkeypatch.setattr("jwt.api_jwt.datetime", Clock)
    token = jwt.encode(_claims(exp=int(now[0]) + 60), "s" * 40, algorithm="HS256")
    assert authenticate(cfg, _bearer(token), verified).subject == "ann"
    assert len(verified) == 1
    now[0] += 64.0  # within the leeway: still the same answer, from the cache
    assert authenticate(cfg, _bearer(token), verified).subject == "ann"
    now[0] += 1.0  # exp + leeway reached: refused, as a fresh verification would
    with pytest.raises(UnauthorizedError, match="expired"):
        authenticate(cfg, _bearer(token), verified)
    assert len(verified) == 0

    forged = jwt.encode(_claims(exp=int(now[0]) + 60), "f" * 40, algorithm="HS256")
    for _ in range(2):  # a refused token is never kept: each attempt is verified (and refused) again
        with pytest.raises(UnauthorizedError, match="invalid token"):
            authenticate(cfg, _bearer(forged), verified)
    assert len(verified) == 0
    no_role = jwt.encode(_claims(exp=int(now[0]) + 60, roles=["nobody"]), "s" * 40, algorithm="HS256")
    with pytest.raises(ForbiddenError):
        authenticate(cfg, _bearer(no_role), verified)
    assert len(verified) == 0

    tokens = [jwt.encode(_claims(exp=int(now[0]) + 60, sub=f"user-{i}"), "s" * 40, algorithm="HS256") for i in range(3)]
    subjects = [authenticate(cfg, _bearer(t), verified).subject for t in tokens]
    assert subjects == ["user-0", "user-1", "user-2"] and len(verified) == 2  # bounded: the least recently used left


def test_issued_tokens_carry_the_signing_kid(tmp_path: Path) -> None:
    cfg = AuthConfig(key="s" * 40, signing_kid="2026-03")
    token = issue_token(cfg, "ops", ["deployer"])
    assert jwt.get_unverified_header(token)["kid"] == "2026-03"
    assert authenticate(cfg, _bearer(token)).role is Role.deployer


@pytest.mark.parametrize(
    ("algorithm", "make"),
    [("RS256", lambda: rsa.generate_private_key(65537, 2048)), ("ES256", lambda: ec.generate_private_key(ec.SECP256R1()))],
)
def test_public_key_tokens_verify_and_algorithm_confusion_fails(algorithm: str, make: Any) -> None:
    private = make()
    cfg = AuthConfig(key=_pem_public(private), algorithm=algorithm)
    assert authenticate(cfg, _bearer(jwt.encode(_claims(), private, algorithm=algorithm))).subject == "ann"
    other = make()
    with pytest.raises(UnauthorizedError, match="invalid token"):
        authenticate(cfg, _bearer(jwt.encode(_claims(), other, algorithm=algorithm)))
    # an HS256 token "signed" with the public key text must not pass as the pinned asymmetric algorithm
    with pytest.raises(UnauthorizedError, match="invalid token"):
        authenticate(cfg, _bearer(_hmac_token(_claims(), _pem_public(private).encode())))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _hmac_token(claims: dict[str, Any], secret: bytes) -> str:
    """An HS256 JWT built by hand (PyJWT refuses to use a PEM key as an HMAC secret, an attacker does not)."""
    signing_input = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + "." + _b64(json.dumps(claims).encode())
    return signing_input + "." + _b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


class _Jwks:
    """A JWKS endpoint on loopback whose key set the test can change."""

    def __init__(self) -> None:
        self.keys: list[dict[str, Any]] = []
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                body = json.dumps({"keys": outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/.well-known/jwks.json"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def publish(self, kid: str, private: Any) -> None:
        jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key()))
        self.keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def jwks() -> Iterator[_Jwks]:
    endpoint = _Jwks()
    yield endpoint
    endpoint.close()


def test_jwks_keys_are_fetched_cached_and_rotated(jwks: _Jwks) -> None:
    first, second = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 2048)
    jwks.publish("k1", first)
    cfg = AuthConfig(keys=JwksKeys(jwks.url, refresh_cooldown_s=0), algorithm="RS256")
    token1 = jwt.encode(_claims(), first, algorithm="RS256", headers={"kid": "k1"})
    assert authenticate(cfg, _bearer(token1)).subject == "ann"
    assert authenticate(cfg, _bearer(token1)).subject == "ann"
    assert jwks.requests == 1  # cached

    jwks.publish("k2", second)  # the identity provider rotates: an unknown kid makes the client fetch again
    token2 = jwt.encode(_claims(sub="bob"), second, algorithm="RS256", headers={"kid": "k2"})
    assert authenticate(cfg, _bearer(token2)).subject == "bob"
    with pytest.raises(UnauthorizedError, match="unknown key id 'k3'"):
        authenticate(cfg, _bearer(jwt.encode(_claims(), second, algorithm="RS256", headers={"kid": "k3"})))
    with pytest.raises(UnauthorizedError, match="no 'kid'"):
        authenticate(cfg, _bearer(jwt.encode(_claims(), first, algorithm="RS256")))


def test_an_unreachable_jwks_endpoint_is_503_not_401() -> None:
    cfg = AuthConfig(keys=JwksKeys("http://127.0.0.1:9/jwks.json", timeout_s=1), algorithm="RS256")
    private = rsa.generate_private_key(65537, 2048)
    with pytest.raises(UnavailableError, match="unreachable"):
        authenticate(cfg, _bearer(jwt.encode(_claims(), private, algorithm="RS256", headers={"kid": "k1"})))


@pytest.mark.timeout(600)
def test_a_server_verifies_tokens_from_a_jwks_endpoint(
    jwks: _Jwks, served_layout: Layout, registered: Registered, customers: list[int], tmp_path: Path
) -> None:
    private = rsa.generate_private_key(65537, 2048)
    jwks.publish("idp-1", private)
    srv = start_server(served_layout, registered.cfg.tracking_uri, ["champion"], tmp_path / "jwks", ["--jwks-url", jwks.url])
    try:
        body = {"instances": [{"customer_id": customers[0]}]}
        good = jwt.encode(_claims(sub="Zoë"), private, algorithm="RS256", headers={"kid": "idp-1"})
        r = httpx.post(srv.url + "/v1/models/champion:predict", json=body, headers={"Authorization": _bearer(good)})
        assert r.status_code == 200, r.text
        forged = jwt.encode(_claims(), rsa.generate_private_key(65537, 2048), algorithm="RS256", headers={"kid": "idp-1"})
        assert httpx.post(srv.url + "/v1/models/champion:predict", json=body, headers={"Authorization": _bearer(forged)}).status_code == 401
    finally:
        srv.stop()
    assert [rec["caller"] for rec in read_records(srv.audit_log)] == ["Zoë"]


# --- keys are checked when read: weak, empty, mistyped or binary files never verify a token -----------------

GOOD_SECRET = "g" * 40


def _signed(secret: str | Any, kid: str, algorithm: str = "HS256", **claims: Any) -> str:
    return _bearer(jwt.encode(_claims(**claims), secret, algorithm=algorithm, headers={"kid": kid}))


def _bad_hmac_files(keys_dir: Path) -> None:
    (keys_dir / "short").write_text("x")  # one character: anyone could forge an admin token with it
    (keys_dir / "empty").write_text("")
    (keys_dir / "pem.pem").write_text(_pem_public(rsa.generate_private_key(65537, 2048)))
    (keys_dir / "binary.key").write_bytes(bytes(range(128, 256)))


def test_a_key_directory_skips_weak_and_broken_files_and_names_them(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "good").write_text(GOOD_SECRET)
    _bad_hmac_files(keys_dir)
    keys = KeyDirectory(keys_dir)
    keys.check()  # one usable key is enough to start
    cfg = AuthConfig(keys=keys)
    assert authenticate(cfg, _signed(GOOD_SECRET, "good", roles=["admin"])).role is Role.admin  # the binary file breaks no one
    forged = _hmac_token(_claims(roles=["admin"]), b"x")  # what an attacker signs with the 1-character key
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "short"}).encode())
    with pytest.raises(UnauthorizedError, match="unknown key id 'short'"):
        authenticate(cfg, _bearer(header + forged[forged.index(".") :]))
    for kid in ("empty", "pem", "binary"):
        with pytest.raises(UnauthorizedError, match=f"unknown key id '{kid}'"):
            authenticate(cfg, _signed(GOOD_SECRET, kid))
    assert keys.rejected == {
        "binary.key": "not UTF-8 text (a binary file?)",
        "empty": "empty",
        "pem.pem": "a PEM key, not the shared secret that HS256 needs",
        "short": "an HMAC secret of 1 bytes; HS256 needs at least 32",
    }
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert all(name in warned for name in keys.rejected)


def test_a_key_directory_without_a_usable_key_refuses_to_start_and_a_rotation_to_bad_keys_fails_closed(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    _bad_hmac_files(keys_dir)
    with pytest.raises(ConfigError, match="holds no usable key") as refused:
        KeyDirectory(keys_dir).check()
    assert refused.value.field == "--jwt-keys-dir" and "short: an HMAC secret of 1 bytes" in str(refused.value)

    (keys_dir / "good").write_text(GOOD_SECRET)
    now = [0.0]
    keys = KeyDirectory(keys_dir, check_every_s=5, clock=lambda: now[0])
    cfg = AuthConfig(keys=keys)
    token = _signed(GOOD_SECRET, "good")
    assert authenticate(cfg, token).subject == "ann"
    (keys_dir / "good").write_text("rotated-to-something-short")  # the only good key becomes a weak one
    now[0] = 5.0
    with pytest.raises(UnavailableError, match="holds no usable key"):  # 503: not the old key (removing a key revokes it)
        authenticate(cfg, token)
    (keys_dir / "good").write_text(GOOD_SECRET)
    now[0] = 10.0
    assert authenticate(cfg, token).subject == "ann"


def test_a_public_key_directory_takes_only_public_keys_of_the_pinned_type(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    good, weak = rsa.generate_private_key(65537, 2048), rsa.generate_private_key(65537, 1024)
    (keys_dir / "good.pem").write_text(_pem_public(good))
    (keys_dir / "weak.pem").write_text(_pem_public(weak))
    (keys_dir / "ec.pem").write_text(_pem_public(ec.generate_private_key(ec.SECP256R1())))
    private_pem = good.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (keys_dir / "private.pem").write_bytes(private_pem)
    (keys_dir / "secret").write_text(GOOD_SECRET)
    keys = KeyDirectory(keys_dir, algorithm="RS256")
    cfg = AuthConfig(keys=keys, algorithm="RS256")
    assert authenticate(cfg, _signed(good, "good", "RS256")).subject == "ann"
    assert keys.rejected == {
        "ec.pem": "not a public key that RS256 verifies with",
        "private.pem": "a private key: give the server the public key only",
        "secret": "not a PEM public key, which RS256 needs",
        "weak.pem": "an RSA key of 1024 bits; at least 2048 are needed",
    }


@pytest.mark.parametrize(
    ("key", "algorithm", "reason"),
    [
        ("x", "HS256", "at least 32"),
        ("s" * 40, "HS512", "HS512 needs at least 64"),
        ("-----BEGIN PUBLIC KEY-----\nMFkw\n-----END PUBLIC KEY-----", "HS256", "a PEM key"),
        (GOOD_SECRET, "ES256", "not a PEM public key"),
        (GOOD_SECRET, "XS999", "unknown algorithm"),
    ],
    ids=["short-secret", "short-for-hs512", "pem-as-secret", "secret-as-public-key", "unknown-algorithm"],
)
def test_a_static_key_that_cannot_verify_the_algorithm_is_a_config_error(key: str, algorithm: str, reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        AuthConfig(key=key, algorithm=algorithm)


def _serve_fails(served_layout: Layout, tmp_path: Path, extra: list[str]) -> str:
    """`churnops serve` run to its exit: its output (it must refuse to start)."""
    cmd = [str(Path(sys.executable).parent / "churnops"), "--data-dir", str(served_layout.data_dir), "serve", "--port", "0", *extra]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False, cwd=tmp_path)
    assert done.returncode != 0, done.stdout + done.stderr
    return done.stdout + done.stderr


@pytest.mark.timeout(600)
def test_a_server_answers_401_for_broken_key_files_and_refuses_to_start_without_a_usable_key(
    served_layout: Layout, registered: Registered, customers: list[int], tmp_path: Path
) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "good").write_text(GOOD_SECRET)
    _bad_hmac_files(keys_dir)
    srv = start_server(served_layout, registered.cfg.tracking_uri, ["champion"], tmp_path / "dir", ["--jwt-keys-dir", str(keys_dir)])
    try:
        body = {"instances": [{"customer_id": customers[0]}]}
        answers = {
            kid: httpx.post(srv.url + "/v1/models/champion:predict", json=body, headers={"Authorization": _signed(GOOD_SECRET, kid)})
            for kid in ("good", "short", "empty", "pem", "binary")
        }
        assert {kid: r.status_code for kid, r in answers.items()} == {"good": 200, "short": 401, "empty": 401, "pem": 401, "binary": 401}
        assert "churnops_auth_key_files_rejected 4.0" in httpx.get(srv.url + "/metrics").text
    finally:
        srv.stop()
    assert "binary.key skipped for HS256 tokens: not UTF-8 text" in srv.log.read_text()

    public = tmp_path / "idp.pem"
    public.write_text(_pem_public(rsa.generate_private_key(65537, 2048)))
    out = _serve_fails(served_layout, tmp_path, ["--jwt-public-key-file", str(public), "--jwt-algorithm", "HS256"])
    assert "--jwt-public-key-file" in out and "a PEM key, not the shared secret that HS256 needs" in out
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    _bad_hmac_files(only_bad)
    out = _serve_fails(served_layout, tmp_path, ["--jwt-keys-dir", str(only_bad)])
    assert "--jwt-keys-dir" in out and "holds no usable key" in out


def test_a_dangling_symlink_in_a_key_directory_is_skipped_like_any_broken_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    (keys_dir / "good").write_text(GOOD_SECRET)
    now = [0.0]
    keys = KeyDirectory(keys_dir, check_every_s=5, clock=lambda: now[0])
    keys.check()
    (keys_dir / "retired.key").symlink_to(tmp_path / "gone")  # a Secret's key removed mid-swap: the link outlives its target
    now[0] = 5.0
    assert authenticate(AuthConfig(keys=keys), _signed(GOOD_SECRET, "good")).subject == "ann"
    assert list(keys.rejected) == ["retired.key"]
    assert "retired.key skipped" in " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
