"""Key rotation: keys picked by the token's kid from a directory (re-read without a restart) or a JWKS endpoint.

The JWKS endpoint is a real HTTP server on loopback; RS256 and ES256 tokens are signed with keys made here;
the last test runs a real `churnops serve --jwks-url` against it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
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

from churnops.errors import UnauthorizedError, UnavailableError
from churnops.layout import Layout
from churnops.serving.audit import read_records
from churnops.serving.auth import AuthConfig, JwksKeys, KeyDirectory, Role, authenticate, issue_token
from tests.support.serving import Registered, start_server


def _claims(**over: Any) -> dict[str, Any]:
    return {"sub": "ann", "aud": "churnops", "roles": ["predictor"], "exp": int(time.time()) + 300, **over}


def _bearer(token: str) -> str:
    return f"Bearer {token}"


def _pem_public(key: Any) -> str:
    return str(key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo).decode())


def test_key_directory_rotates_without_a_restart(tmp_path: Path) -> None:
    keys_dir = tmp_path / "keys"
    keys_dir.mkdir()
    old, new = "o" * 40, "n" * 40
    (keys_dir / "2026-01").write_text(old + "\n")
    now = [0.0]
    cfg = AuthConfig(keys=KeyDirectory(keys_dir, check_every_s=5, clock=lambda: now[0]))
    signed_old = jwt.encode(_claims(), old, algorithm="HS256", headers={"kid": "2026-01"})
    assert authenticate(cfg, _bearer(signed_old)).role is Role.predictor
    assert authenticate(cfg, _bearer(jwt.encode(_claims(), old, algorithm="HS256"))).subject == "ann"  # one key: no kid needed

    (keys_dir / "2026-02.key").write_text(new)  # step 1: the new key is mounted next to the old one
    signed_new = jwt.encode(_claims(), new, algorithm="HS256", headers={"kid": "2026-02"})
    with pytest.raises(UnauthorizedError, match="unknown key id '2026-02'"):
        authenticate(cfg, _bearer(signed_new))  # not re-read before the check interval
    now[0] = 5.0
    assert authenticate(cfg, _bearer(signed_new)).subject == "ann"
    assert authenticate(cfg, _bearer(signed_old)).subject == "ann"  # both verify during the overlap
    with pytest.raises(UnauthorizedError, match="no 'kid'"):
        authenticate(cfg, _bearer(jwt.encode(_claims(), old, algorithm="HS256")))

    (keys_dir / "2026-01").unlink()  # step 3: the old key is retired after the longest token lifetime
    now[0] = 10.0
    with pytest.raises(UnauthorizedError, match="unknown key id '2026-01'"):
        authenticate(cfg, _bearer(signed_old))
    forged = jwt.encode(_claims(), old, algorithm="HS256", headers={"kid": "2026-02"})
    with pytest.raises(UnauthorizedError, match="invalid token"):
        authenticate(cfg, _bearer(forged))  # the kid picks the key; a token signed with another key fails


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
