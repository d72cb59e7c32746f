"""The predictor against a hostile client, at the HTTP layer: raw sockets and plain HTTP against a real process.

Each test failed before its fix (issue 17) or guards a defence that already held. The servers run with short
read timeouts and small header bounds so the slow-client cases end in about a second each; no assertion is
about how fast anything is.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlparse

import httpx
import jwt
import pytest

from churnops.layout import Layout
from churnops.serving.audit import read_records
from churnops.serving.exposition import CachedExposition
from tests.support import groups
from tests.support.serving import SECRET, Registered, Server, start_server, token

pytestmark = groups.SERVING_MODELS

V1 = "/v1/models/champion:predict"
V2 = "/v2/models/champion/infer"
SOCKET_TIMEOUT_S = 20.0  # a bound for a hung test, far beyond the server's 1 s read timeouts


@pytest.fixture(scope="module")
def hostile(served_layout: Layout, registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(
        served_layout,
        registered.cfg.tracking_uri,
        ["champion"],
        tmp_path_factory.mktemp("hostile"),
        ["--header-timeout", "1", "--body-timeout", "1", "--max-header-bytes", "8192", "--max-headers", "40"],
    )
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def strict(served_layout: Layout, registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """Few failed authentications and scrapes allowed per address."""
    srv = start_server(
        served_layout,
        registered.cfg.tracking_uri,
        ["champion"],
        tmp_path_factory.mktemp("strict"),
        ["--auth-failures", "3", "--auth-failure-window", "120", "--metrics-rate", "0.01", "--metrics-burst", "2"],
    )
    yield srv
    srv.stop()


def _address(server: Server) -> tuple[str, int]:
    url = urlparse(server.url)
    assert url.hostname is not None and url.port is not None
    return url.hostname, url.port


def _exchange(server: Server, data: bytes, *, pause_s: float = 0.0) -> bytes:
    """Send ``data`` (then optionally nothing more), and read until the server closes the connection."""
    with socket.create_connection(_address(server), timeout=SOCKET_TIMEOUT_S) as s:
        if data:
            s.sendall(data)
        time.sleep(pause_s)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def _status(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


def _request(path: str, body: bytes, *headers: str, method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: predictor", "Connection: close", f"Content-Length: {len(body)}", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def _bearer() -> str:
    return f"Authorization: Bearer {token()}"


def _audited(server: Server) -> int:
    return sum(1 for _ in read_records(server.audit_log)) if server.audit_log.exists() else 0


def _errors(server: Server, code: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("churnops_errors_total{") and f'code="{code}"' in line
    )


def _server_errors(server: Server) -> float:
    text = httpx.get(server.url + "/metrics", timeout=30).text
    pattern = re.compile(r'^churnops_errors_total\{.*code="5\d\d".*\} (\S+)$')
    return sum(float(m.group(1)) for line in text.splitlines() if (m := pattern.match(line)))


# --- item 1: singleton headers sent twice ------------------------------------------------------------------------


@pytest.mark.parametrize("header", ["X-Request-Id", "Authorization", "Content-Type", "Host"])
def test_a_singleton_header_sent_twice_is_refused_naming_it(hostile: Server, customers: list[int], header: str) -> None:
    body = json.dumps({"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [customers[0]]}]}).encode()
    values = {
        "X-Request-Id": ["X-Request-Id: " + "a" * 2000, "X-Request-Id: short-id"],
        "Authorization": [_bearer(), _bearer()],
        "Content-Type": ["Content-Type: text/plain", "Content-Type: application/json"],
        "Host": ["Host: other"],
    }[header]
    extra = values if header == "Host" else [values[0], values[1]]
    auth = [] if header == "Authorization" else [_bearer()]
    ctype = [] if header == "Content-Type" else ["Content-Type: application/json"]
    response = _exchange(hostile, _request(V2, body, *auth, *ctype, *extra))
    assert _status(response) == 400, response[:300]
    assert json.loads(response.split(b"\r\n\r\n", 1)[1])["error"].startswith(f"{header}:")
    assert _audited(hostile) == 0 or not any("a" * 200 in json.dumps(r) for r in read_records(hostile.audit_log))


def test_a_repeated_content_length_never_reaches_the_model(hostile: Server) -> None:
    response = _exchange(hostile, _request(V1, b"{}", _bearer(), "Content-Length: 2"))
    assert _status(response) == 400


# --- item 2: no 5xx from a client's request -----------------------------------------------------------------------


@pytest.mark.parametrize("path", [V1, V2])
def test_a_5000_digit_integer_is_a_422_naming_the_field(hostile: Server, customers: list[int], path: str) -> None:
    huge = "9" * 5000
    if path == V1:
        body = f'{{"instances": [{{"customer_id": {customers[0]}, "features": {{"tenure_days": {huge}}}}}]}}'
    else:
        body = f'{{"inputs": [{{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [{huge}]}}]}}'
    before = _server_errors(hostile)
    r = httpx.post(hostile.url + path, content=body, headers={"Authorization": f"Bearer {token()}"}, timeout=30)
    assert r.status_code == 422, r.text[:300]
    assert r.json()["error"].startswith(("instances[0]", "inputs[0]")) and huge not in r.text
    assert _server_errors(hostile) == before


def test_a_version_in_the_path_is_a_404_not_a_model_failure(hostile: Server, customers: list[int], registered: Registered) -> None:
    body = {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [customers[0]]}]}
    headers = {"Authorization": f"Bearer {token()}"}
    before = _server_errors(hostile)
    wrong = httpx.post(hostile.url + "/v2/models/champion/versions/x/infer", json=body, headers=headers, timeout=30)
    assert wrong.status_code == 404 and wrong.json()["error"].startswith("version:"), wrong.text
    assert _server_errors(hostile) == before
    assert _errors(hostile, "501") == 0
    served = httpx.post(f"{hostile.url}/v2/models/champion/versions/{registered.champion}/infer", json=body, headers=headers, timeout=30)
    assert served.status_code == 200, served.text
    assert served.json()["model_version"] == registered.champion


# --- item 3a/3b: header bounds and read timeouts ------------------------------------------------------------------


def test_an_oversized_header_is_a_431(hostile: Server) -> None:
    response = _exchange(hostile, _request("/v2/health/ready", b"", "X-Padding: " + "p" * 64_000, method="GET"))
    assert _status(response) == 431
    assert _status(_exchange(hostile, _request("/v2/health/ready", b"", "X-Padding: " + "p" * 4_000, method="GET"))) == 200


def test_too_many_headers_is_a_431(hostile: Server) -> None:
    many = [f"X-H{i}: v" for i in range(60)]
    assert _status(_exchange(hostile, _request("/v2/health/ready", b"", *many, method="GET"))) == 431


def test_a_silent_socket_is_closed(hostile: Server) -> None:
    assert _exchange(hostile, b"") == b""  # closed by the server (the read would otherwise time out and fail)


def test_trickled_headers_get_a_408_and_a_close(hostile: Server) -> None:
    response = _exchange(hostile, b"GET /v2/health/ready HTTP/1.1\r\nHost: predictor\r\nX-Slow: a")
    assert _status(response) == 408


def test_a_partial_body_gets_a_408_and_never_reaches_the_model(hostile: Server, customers: list[int]) -> None:
    before = _audited(hostile)
    head = _request(V1, b"", _bearer(), "Content-Type: application/json").replace(b"Content-Length: 0", b"Content-Length: 500")
    response = _exchange(hostile, head + json.dumps({"instances": [{"customer_id": customers[0]}]}).encode()[:20])
    assert _status(response) == 408
    assert _audited(hostile) == before
    assert _errors(hostile, "500") == 0


# --- item 3c-e: metrics scrapes, failed authentications, token lifetime -------------------------------------------


def test_metrics_are_rendered_at_most_once_per_max_age() -> None:
    renders = 0
    now = [0.0]

    def render() -> bytes:
        nonlocal renders
        renders += 1
        return str(renders).encode()

    cache = CachedExposition(render, 1.0, clock=lambda: now[0])

    async def scrapes() -> list[list[bytes]]:
        seen = []
        for at in (0.0, 0.5, 1.5):
            now[0] = at
            seen.append(list(await asyncio.gather(*(cache.text() for _ in range(5)))))
        return seen

    assert asyncio.run(scrapes()) == [[b"1"] * 5, [b"1"] * 5, [b"2"] * 5]


def test_metrics_scrapes_are_limited_per_address(strict: Server) -> None:
    statuses = [httpx.get(strict.url + "/metrics", timeout=30).status_code for _ in range(4)]
    assert statuses[:2] == [200, 200] and statuses[-1] == 429
    assert httpx.get(strict.url + "/v2/health/ready", timeout=30).status_code == 200  # probes are never limited


def test_failed_authentications_are_limited_per_address(strict: Server, customers: list[int]) -> None:
    body = {"instances": [{"customer_id": customers[0]}]}
    forged = {"Authorization": "Bearer " + jwt.encode({"sub": "x", "aud": "churnops", "exp": 2**31}, "w" * 40, algorithm="HS256")}
    # each attempt claims another origin: X-Forwarded-For from a client is never trusted (uvicorn trusts it from loopback)
    statuses = [
        httpx.post(strict.url + V1, json=body, headers={**forged, "X-Forwarded-For": f"10.9.9.{i}"}, timeout=30).status_code
        for i in range(3)
    ]
    assert statuses == [401, 401, 401]
    limited = httpx.post(strict.url + V1, json=body, headers={**forged, "X-Forwarded-For": "10.9.9.99"}, timeout=30)
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 1
    assert httpx.get(strict.url + "/v2/health/ready", timeout=30).status_code == 200


def test_a_token_living_for_ever_is_refused(hostile: Server, customers: list[int]) -> None:
    claims = {"sub": "eternal", "aud": "churnops", "roles": ["predictor"], "exp": 10**20}
    forever = jwt.encode(claims, SECRET, algorithm="HS256")
    r = httpx.post(hostile.url + V1, json={"instances": [{"customer_id": customers[0]}]}, headers={"Authorization": f"Bearer {forever}"})
    assert r.status_code == 401 and "expires more than" in r.json()["error"]


# --- item 11: shapes of answers -----------------------------------------------------------------------------------


def test_instances_not_a_list_is_a_422_naming_it(hostile: Server) -> None:
    r = httpx.post(hostile.url + V1, json={"instances": {"customer_id": 1}}, headers={"Authorization": f"Bearer {token()}"})
    assert r.status_code == 422 and r.json()["error"].startswith("instances"), r.text


@pytest.mark.parametrize(
    "document",
    [
        {"inputs": "MARKER-7f3a"},
        {"inputs": [{"name": "customer_id", "datatype": "MARKER-7f3a", "shape": [1], "data": [1]}]},
        {"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": ["MARKER-7f3a"], "data": [1]}]},
        {"inputs": [{"name": "MARKER-7f3a", "datatype": "INT64", "shape": [1], "data": [1]}]},
    ],
    ids=["inputs", "datatype", "shape", "name"],
)
def test_v2_errors_do_not_echo_the_input(hostile: Server, document: dict[str, object]) -> None:
    r = httpx.post(hostile.url + V2, json=document, headers={"Authorization": f"Bearer {token()}"}, timeout=30)
    assert 400 <= r.status_code < 500, r.text
    assert "MARKER-7f3a" not in r.text


def test_head_metrics_is_answered(hostile: Server) -> None:
    head = httpx.head(hostile.url + "/metrics", timeout=30)
    assert head.status_code == 200 and head.content == b"" and head.headers["content-type"].startswith("text/plain")
    assert httpx.post(hostile.url + "/metrics", timeout=30).status_code in (401, 405)


def test_no_server_software_is_disclosed(hostile: Server) -> None:
    r = httpx.get(hostile.url + "/v2/health/ready", timeout=30)
    assert "server" not in r.headers
    assert not any("uvicorn" in v.lower() for v in r.headers.values())


# --- defences that already held ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"GET /v2/health/ready HTTP/1.1\r\nHost: p\r\nX-Bad: a\x00b\r\nConnection: close\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: p\r\nX-Bad: a\rInjected: 1\r\nConnection: close\r\n\r\n",
        b"GET /v2/health/ready HTTP/1.1\r\nHost: p\r\nX-Bad\x00: a\r\nConnection: close\r\n\r\n",
    ],
    ids=["nul-in-value", "bare-cr", "nul-in-name"],
)
def test_control_characters_in_headers_are_a_400(hostile: Server, raw: bytes) -> None:
    assert _status(_exchange(hostile, raw)) == 400


def test_a_huge_content_length_is_refused_before_reading(hostile: Server) -> None:
    head = _request(V1, b"", _bearer()).replace(b"Content-Length: 0", b"Content-Length: " + b"9" * 30)
    assert _status(_exchange(hostile, head)) in (400, 413)
    head = _request(V1, b"", _bearer()).replace(b"Content-Length: 0", b"Content-Length: 100000000")
    assert _status(_exchange(hostile, head)) == 413


def test_a_gzip_body_is_not_inflated(hostile: Server) -> None:
    import gzip  # noqa: PLC0415

    bomb = gzip.compress(b"[" + b"0," * 5_000_000 + b"0]")
    r = httpx.post(
        hostile.url + V1,
        content=bomb,
        headers={"Authorization": f"Bearer {token()}", "Content-Encoding": "gzip", "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code in (400, 415, 422), r.text[:200]  # read as the bytes sent: not JSON
    assert httpx.get(hostile.url + "/v2/health/ready", timeout=30).status_code == 200


def test_the_monitoring_page_serves_from_a_bounded_pool_and_drops_idle_sockets() -> None:
    import threading  # noqa: PLC0415

    from churnops.monitoring.page import make_server  # noqa: PLC0415

    server = make_server(None, "127.0.0.1", 0, workers=4, idle_timeout_s=0.5)  # type: ignore[arg-type]  # /healthz needs no source
    serving = threading.Thread(target=server.serve_forever, daemon=True)
    serving.start()
    host, port = str(server.server_address[0]), int(server.server_address[1])
    idle = [socket.create_connection((host, port), timeout=SOCKET_TIMEOUT_S) for _ in range(30)]
    try:
        time.sleep(0.2)  # let the server accept them
        assert sum(t.name.startswith("monitor-page") for t in threading.enumerate()) <= 4
        assert all(s.recv(1) == b"" for s in idle)  # each is closed by the server, none waits for ever
        assert httpx.get(f"http://{host}:{port}/healthz", timeout=30).status_code == 200
    finally:
        for s in idle:
            s.close()
        server.shutdown()
        server.server_close()


LONG = "A" * 5_000  # within the request line bound (8 KB) of this server: the guard, not the HTTP layer, answers


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", f"/v2/models/{LONG}"),
        ("GET", f"/v2/models/{LONG}/ready"),
        ("POST", f"/v2/models/{LONG}/infer"),
        ("POST", f"/v1/models/{LONG}:predict"),
        ("POST", f"/v2/repository/models/{LONG}/load"),
        ("GET", f"/v2/models/{'A' * 129}"),
    ],
    ids=["metadata", "ready", "infer", "predict", "load", "just-too-long"],
)
def test_a_long_model_name_is_a_404_that_does_not_echo_it(hostile: Server, method: str, path: str) -> None:
    headers = {"Authorization": f"Bearer {token(roles=('admin',))}"}
    r = httpx.request(method, hostile.url + path, json={}, headers=headers, timeout=30)
    assert r.status_code == 404 and len(r.content) < 512, r.text[:300]
    assert "A" * 100 not in r.text and r.json()["error"].startswith("path: ")


def test_kserve_errors_quoting_the_input_are_cut(hostile: Server) -> None:
    name = "B" * 100_000
    document = {"inputs": [{"name": name, "datatype": "FP16", "shape": [1], "data": [1.0]}]}
    r = httpx.post(hostile.url + V2, json=document, headers={"Authorization": f"Bearer {token()}"}, timeout=30)
    assert 400 <= r.status_code < 500 and len(r.content) <= 1024, (r.status_code, len(r.content))
    assert int(r.headers["content-length"]) == len(r.content) and r.json()["error"].endswith("[cut]")
