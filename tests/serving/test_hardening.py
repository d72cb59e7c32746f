"""Regressions from trying the predictor as a hostile client: each case failed before its fix.

Runs a real `churnops serve` (champion, challenger and a corrupted version) over loopback HTTP.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from churnops.layout import Layout
from churnops.serving.audit import read_records, verify_file
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import SECRET, Registered, Server, start_server, token

pytestmark = groups.SERVING_MODELS

V1 = "/v1/models/{}:predict"
V2 = "/v2/models/{}/infer"


def _metric(server: Server, name: str, **labels: str) -> float:
    """The value of one series on /metrics (0 when absent)."""
    text = httpx.get(server.url + "/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def _post(server: Server, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    # header values go out as UTF-8 bytes: a hostile client is not limited to ASCII
    h = {
        k.encode(): v.encode()
        for k, v in {"Authorization": f"Bearer {token()}", "Content-Type": "application/json", **(headers or {})}.items()
    }
    return httpx.post(server.url + path, content=body, headers=h, timeout=60)


@pytest.mark.parametrize(
    ("path", "body"),
    [(V1.format("champion"), b"[" * 10_000), (V2.format("champion"), b"[" * 10_000), (V1.format("champion"), b'{"a":' * 10_000)],
    ids=["v1-arrays", "v2-arrays", "v1-objects"],
)
def test_deep_nesting_is_a_400_without_internals(server: Server, path: str, body: bytes) -> None:
    before = _metric(server, "churnops_errors_total", code="400")
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    assert "nests" in r.json()["error"]
    assert not re.search(r"Recursion|Traceback|File \"", r.text)
    assert _metric(server, "churnops_errors_total", code="400") == before + 1


def test_kserve_own_errors_are_counted(server: Server) -> None:
    before = _metric(server, "churnops_errors_total", code="404")
    r = _post(server, V1.format("no-such-model"), b'{"instances": [{"customer_id": 1}]}')
    assert r.status_code == 404
    assert _metric(server, "churnops_errors_total", code="404") == before + 1
    assert "Traceback" not in server.log.read_text()  # a client's mistake is one INFO line, not an ERROR with a stack


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "Application/JSON", "APPLICATION/json;charset=UTF-8"])
def test_standard_json_media_types_are_accepted(server: Server, customers: list[int], content_type: str) -> None:
    body = json.dumps({"instances": [{"customer_id": customers[0]}]}).encode()
    for path in (V1.format("champion"), V2.format("champion")):
        if path.endswith("infer"):
            body = json.dumps({"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [customers[0]]}]}).encode()
        r = _post(server, path, body, {"Content-Type": content_type})
        assert r.status_code == 200, f"{path} {content_type}: {r.text}"


@pytest.mark.parametrize("value", ["x" * 60_000, "x" * 129, "bad id with spaces", "ünicode"], ids=["60KB", "129", "spaces", "non-ascii"])
def test_request_id_header_is_bounded(server: Server, customers: list[int], value: str) -> None:
    body = json.dumps({"instances": [{"customer_id": customers[0]}] * 50}).encode()
    r = _post(server, V1.format("champion"), body, {"X-Request-Id": value})
    assert r.status_code in (400, 431), r.text[:300]  # 431: the HTTP server refuses an oversized header first
    if r.status_code == 400:
        assert "X-Request-Id" in r.json()["error"] and len(r.content) < 1000


def test_client_request_id_is_kept_apart_and_audit_ids_stay_unique(server: Server, customers: list[int]) -> None:
    body = json.dumps({"instances": [{"customer_id": customers[0]}, {"customer_id": customers[1]}]}).encode()
    answers = [_post(server, V1.format("champion"), body, {"X-Request-Id": "trace-42"}).json()["predictions"] for _ in range(2)]
    ids = [p["request_id"] for preds in answers for p in preds]
    assert len(set(ids)) == 4  # the same client id twice: four distinct audit ids
    assert {p["client_request_id"] for preds in answers for p in preds} == {"trace-42"}
    audited = [r for r in read_records(server.audit_log) if r.get("request_id") in ids]
    assert len(audited) == 4 and {r["client_request_id"] for r in audited} == {"trace-42"}
    v2 = _post(server, V2.format("champion"), json.dumps({"id": "x" * 200, "inputs": []}).encode())
    assert v2.status_code == 400 and v2.json()["error"].startswith("id:")


def test_unload_then_load_and_readiness_follows_the_models(server: Server, registered: Registered, customers: list[int]) -> None:
    deployer = {"Authorization": f"Bearer {token('ops', ('deployer',))}"}
    body = json.dumps({"instances": [{"customer_id": customers[0]}]}).encode()
    try:
        for name in ("champion", "challenger"):
            assert httpx.post(f"{server.url}/v2/repository/models/{name}/unload", headers=deployer, timeout=30).status_code == 200
        assert _post(server, V1.format("champion"), body).status_code == 404
        assert httpx.get(server.url + "/v2/health/ready").status_code == 503  # no model is ready (the corrupted one never is)
        assert httpx.get(server.url + "/v2/health/live").status_code == 200
    finally:
        for name in ("champion", "challenger"):
            loaded = httpx.post(f"{server.url}/v2/repository/models/{name}/load", headers=deployer, timeout=120)
            assert loaded.status_code == 200, loaded.text
    assert httpx.get(server.url + "/v2/health/ready").status_code == 200
    assert _post(server, V1.format("champion"), body).status_code == 200
    unknown = httpx.post(f"{server.url}/v2/repository/models/nope/load", headers=deployer, timeout=30)
    assert unknown.status_code == 404
    broken = httpx.post(f"{server.url}/v2/repository/models/v{registered.corrupted}/load", headers=deployer, timeout=60)
    assert broken.status_code == 503 and "does not match" in broken.text


def _claims(**over: Any) -> dict[str, Any]:
    return {"sub": "mallory", "aud": "churnops", "roles": ["predictor"], "exp": int(time.time()) + 600, **over}


@pytest.mark.parametrize(
    ("claims", "status"),
    [
        (_claims(roles={"admin": False}), 401),
        (_claims(roles=["predictor", 7]), 401),
        (_claims(roles=None), 401),
        (_claims(exp=str(int(time.time()) + 600)), 401),
        (_claims(sub="\ud800"), 401),
        (_claims(sub="tab\there"), 401),
        (_claims(sub=""), 401),
    ],
    ids=["roles-object", "roles-non-string", "roles-null", "exp-string", "sub-lone-surrogate", "sub-control-char", "sub-empty"],
)
def test_malformed_claims_are_401(server: Server, customers: list[int], claims: dict[str, Any], status: int) -> None:
    bearer = jwt.encode(claims, SECRET, algorithm="HS256")
    r = httpx.post(
        server.url + V1.format("champion"),
        json={"instances": [{"customer_id": customers[0]}]},
        headers={"Authorization": f"Bearer {bearer}"},
    )
    assert r.status_code == status, r.text
    deploy = httpx.post(server.url + "/v2/repository/models/champion/unload", headers={"Authorization": f"Bearer {bearer}"})
    assert deploy.status_code == 401  # never a deployer through a malformed claim


def test_non_ascii_subjects_are_audited_as_utf8(server: Server, customers: list[int]) -> None:
    with server.client("Zoë Ødegård") as c:
        r = c.post(V1.format("champion"), json={"instances": [{"customer_id": customers[0]}]})
    assert r.status_code == 200
    rid = r.json()["predictions"][0]["request_id"]
    mine = [rec for rec in read_records(server.audit_log) if rec.get("request_id") == rid]
    assert [rec["caller"] for rec in mine] == ["Zoë Ødegård"]
    assert verify_file(server.audit_log, audit_keys()).ok


def test_huge_integer_names_the_field(server: Server) -> None:
    body = b'{"instances": [{"customer_id": ' + b"9" * 400 + b"}]}"
    r = _post(server, V1.format("champion"), body)
    assert r.status_code == 422 and r.json()["error"].startswith("instances[0].customer_id:")


def test_unseen_categories_are_flagged_and_counted(server: Server, served_layout: Layout, customers: list[int]) -> None:
    from churnops_feast import store as feast_store  # noqa: PLC0415
    from churnops_feast.definitions import TRAINING_SERVICE  # noqa: PLC0415
    from churnops_feast.online import sqlite_reader  # noqa: PLC0415

    record = sqlite_reader(feast_store.open_store("embedded", {}, served_layout.data_dir), TRAINING_SERVICE).read(customers[0])
    assert record is not None
    before = _metric(server, "churnops_unseen_categories_total", feature="plan")
    known = _post(server, V1.format("champion"), json.dumps({"instances": [{"features": record}]}).encode()).json()["predictions"][0]
    assert "unseen_categories" not in known
    odd = _post(server, V1.format("champion"), json.dumps({"instances": [{"features": {**record, "plan": "platinum"}}]}).encode())
    assert odd.status_code == 200
    assert odd.json()["predictions"][0]["unseen_categories"] == ["plan"]
    assert _metric(server, "churnops_unseen_categories_total", feature="plan") == before + 1


def test_binds_loopback_by_default(server: Server) -> None:
    assert "ChurnOps predictor on http://127.0.0.1:" in server.log.read_text()


def test_a_second_server_on_the_same_audit_log_is_refused(server: Server, served_layout: Layout, registered: Registered) -> None:
    cmd = [str(Path(sys.executable).parent / "churnops"), "--data-dir", str(served_layout.data_dir), "serve", "--port", "0"]
    cmd += ["--tracking-uri", registered.cfg.tracking_uri, "--insecure-no-auth", "--audit-log", str(server.audit_log)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=False, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 5, done.stdout[-2000:] + done.stderr[-2000:]
    assert "being written by another process" in done.stderr


@pytest.mark.timeout(600)
def test_a_restarted_server_continues_the_chain(
    served_layout: Layout, registered: Registered, customers: list[int], tmp_path: Path
) -> None:
    audit = tmp_path / "shared" / "audit" / "predictions.jsonl"
    for run in range(2):
        srv = start_server(served_layout, registered.cfg.tracking_uri, ["champion"], tmp_path / "shared", [])
        try:
            with srv.client() as c:
                assert c.post(V1.format("champion"), json={"instances": [{"customer_id": customers[run]}]}).status_code == 200
        finally:
            srv.stop()
        assert srv.audit_log == audit
    check = verify_file(audit, audit_keys())
    assert check.ok and check.records == 2


def _probe_until(url: str, stop: threading.Event, answers: list[tuple[float, int]]) -> None:
    """Asks ``url`` again and again until ``stop``; ``answers`` gets (when each answer arrived, its status)."""
    with httpx.Client(timeout=60) as c:
        while not stop.is_set():
            status = c.get(url).status_code
            answers.append((time.monotonic(), status))


def test_probes_answer_while_a_model_loads(server: Server, customers: list[int]) -> None:
    """A load (download, verification, compilation) runs off the event loop: probes sent during it are answered
    while it runs. A prober keeps asking from before the load request until after its answer; on a blocked loop
    every probe sent meanwhile would be answered only after the load (none would fall inside it)."""
    deployer = {"Authorization": f"Bearer {token('ops', ('deployer',))}"}
    repository = f"{server.url}/v2/repository/models/champion"
    inside = 0
    try:
        for _ in range(4):
            assert httpx.post(f"{repository}/unload", headers=deployer, timeout=30).status_code == 200
            answers: list[tuple[float, int]] = []  # (when the probe's answer arrived, status)
            stop = threading.Event()

            prober = threading.Thread(target=_probe_until, args=(server.url + "/v2/health/live", stop, answers))
            prober.start()
            time.sleep(0.05)  # the prober is under way before the load is asked for
            sent = time.monotonic()
            loaded = httpx.post(f"{repository}/load", headers=deployer, timeout=120)
            done = time.monotonic()
            stop.set()
            prober.join()
            assert loaded.status_code == 200, loaded.text
            assert answers and {status for _, status in answers} == {200}
            # less the two a blocked loop could still give: one in flight as the load was sent, one queued behind it
            inside += max(0, sum(sent < at < done for at, _ in answers) - 2)
    finally:
        httpx.post(f"{repository}/load", headers=deployer, timeout=120)
    assert inside >= 1, "no probe was answered while a model loaded"
    assert _post(server, V1.format("champion"), json.dumps({"instances": [{"customer_id": customers[0]}]}).encode()).status_code == 200


def test_concurrent_loads_of_one_model_share_one_load_and_an_unload_meanwhile_is_409() -> None:
    import asyncio  # noqa: PLC0415

    from churnops.errors import ConflictError  # noqa: PLC0415
    from churnops.serving.modelserver import ChurnRepository  # noqa: PLC0415
    from churnops.serving.predictor import ChurnModel  # noqa: PLC0415

    release = threading.Event()
    loads: list[str] = []

    def loader() -> Any:
        loads.append("load")
        release.wait(30)
        return object()  # stands in for a Scorer: the repository only needs the load to succeed

    async def scenario() -> list[bool]:
        repository = ChurnRepository()
        repository.update(ChurnModel("churn", loader))
        first = asyncio.ensure_future(repository.load("churn"))
        second = asyncio.ensure_future(repository.load("churn"))
        await asyncio.sleep(0.05)  # the event loop runs on while the load waits on its thread
        with pytest.raises(ConflictError, match="is loading"):
            repository.unload("churn")
        release.set()
        return list(await asyncio.gather(first, second))

    assert asyncio.run(scenario()) == [True, True]
    assert loads == ["load"]


@pytest.mark.parametrize("trace", [False, True], ids=["trace-log-off", "trace-log-on"])
def test_kserves_timing_middleware_runs_only_while_its_trace_log_is_on(trace: bool) -> None:
    """KServe's own ``_add_middlewares`` (kserve/protocol/rest/server.py) adds TimingMiddleware for every request;
    it only writes to the ``kserve.trace`` log, so it is left out while that log is off."""
    import logging  # noqa: PLC0415
    from types import SimpleNamespace  # noqa: PLC0415

    from fastapi import FastAPI  # noqa: PLC0415
    from kserve.protocol.rest.server import RESTServer, TimingMiddleware  # noqa: PLC0415

    from churnops.serving.modelserver import without_idle_timing  # noqa: PLC0415

    trace_log = logging.getLogger("kserve.trace")
    level = trace_log.level
    trace_log.setLevel(logging.INFO if trace else logging.WARNING)  # setLevel, not the attribute: it clears the level cache
    try:
        app = FastAPI()
        kserves = SimpleNamespace(access_log_format=None)
        without_idle_timing(lambda a: RESTServer._add_middlewares(kserves, a), app)
    finally:
        trace_log.setLevel(level)
    assert any(m.cls is TimingMiddleware for m in app.user_middleware) is trace
