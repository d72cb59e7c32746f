"""The predictor as clients see it: a real `churnops serve` process over loopback HTTP.

Serves champion (XGBoost), challenger (LightGBM + XGBoost + logistic regression
stack) and a version whose artifact was altered after registration.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from churnops.layout import Layout
from churnops.processes import free_port
from churnops.serving.audit import verify_file
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.online import sqlite_reader
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import SECRET, Registered, Server, token

pytestmark = groups.SERVING_MODELS

V1 = "/v1/models/{}:predict"


def predict(client: httpx.Client, model: str, body: Any) -> httpx.Response:
    return client.post(V1.format(model), json=body)


def test_v1_round_trip_by_customer_id(server: Server, customers: list[int]) -> None:
    with server.client() as c:
        r = predict(c, "champion", {"instances": [{"customer_id": customers[0]}, {"customer_id": customers[1]}]})
    assert r.status_code == 200, r.text
    preds = r.json()["predictions"]
    assert [p["customer_id"] for p in preds] == customers[:2]
    for p in preds:
        assert 0.0 <= p["churn_probability"] <= 1.0
        assert p["risk_band"] in ("low", "medium", "high")
        assert p["model"] == "churn-classifier" and p["model_version"] == "1"
        assert p["degraded"] is False and p["request_id"]
        contributions = [abs(x["contribution"]) for x in p["reasons"]]
        assert len(contributions) == 5 and contributions == sorted(contributions, reverse=True)
        assert all({"feature", "value", "contribution"} <= set(x) for x in p["reasons"])


def test_v2_matches_v1(server: Server, customers: list[int]) -> None:
    cid = customers[2]
    with server.client() as c:
        v1 = predict(c, "champion", {"instances": [{"customer_id": cid}]}).json()["predictions"][0]
        r = c.post(
            "/v2/models/champion/infer", json={"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [1], "data": [cid]}]}
        )
        meta = c.get("/v2/models/champion")
    assert r.status_code == 200, r.text
    outputs = {o["name"]: o["data"] for o in r.json()["outputs"]}
    assert outputs["churn_probability"] == [v1["churn_probability"]]
    assert outputs["risk_band"] == [v1["risk_band"]]
    assert json.loads(outputs["reasons"][0]) == v1["reasons"]
    assert meta.status_code == 200
    assert {i["name"] for i in meta.json()["inputs"]} >= {"customer_id", "tenure_days"}


def test_full_feature_record_scores_like_the_online_lookup(server: Server, served_layout: Layout, customers: list[int]) -> None:
    store = feast_store.open_store("embedded", {}, served_layout.data_dir)
    record = sqlite_reader(store, TRAINING_SERVICE).read(customers[3])
    assert record is not None
    with server.client() as c:
        by_id = predict(c, "champion", {"instances": [{"customer_id": customers[3]}]}).json()["predictions"][0]
        sent = predict(c, "champion", {"instances": [{"features": record}]})
        v2 = c.post(
            "/v2/models/champion/infer",
            json={
                "inputs": [
                    {"name": k, "datatype": "BYTES" if isinstance(v, str) else "FP64", "shape": [1], "data": [v]} for k, v in record.items()
                ]
            },
        )
    assert sent.status_code == 200, sent.text
    assert sent.json()["predictions"][0]["churn_probability"] == by_id["churn_probability"]
    assert sent.json()["predictions"][0]["customer_id"] is None
    assert v2.status_code == 200, v2.text
    assert v2.json()["outputs"][0]["data"] == [by_id["churn_probability"]]


@pytest.mark.parametrize("model", ["champion", "challenger"])
def test_explain_verb_attributes_the_whole_margin(server: Server, customers: list[int], model: str) -> None:
    with server.client() as c:
        r = c.post(f"/v1/models/{model}:explain", json={"instances": [{"customer_id": cid} for cid in customers[:5]]})
    assert r.status_code == 200, r.text
    for e in r.json()["explanations"]:
        assert len(e["reasons"]) == 116  # every feature of the model
        total = e["base_value"] + sum(x["contribution"] for x in e["reasons"])
        assert total == pytest.approx(e["margin"], abs=1e-3)


def test_champion_and_challenger_are_served_concurrently(server: Server, customers: list[int]) -> None:
    def call(i: int) -> tuple[str, str]:
        model = "champion" if i % 2 == 0 else "challenger"
        with server.client() as c:
            r = predict(c, model, {"instances": [{"customer_id": customers[i % len(customers)]}]})
        assert r.status_code == 200, r.text
        return model, r.json()["predictions"][0]["model_version"]

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(call, range(40)))
    versions = {m: {v for mm, v in answers if mm == m} for m in ("champion", "challenger")}
    assert versions == {"champion": {"1"}, "challenger": {"3"}}


def test_corrupted_artifact_keeps_its_model_not_ready(server: Server, registered: Registered, customers: list[int]) -> None:
    name = f"v{registered.corrupted}"
    with server.client() as c:
        ready = c.get(f"/v2/models/{name}/ready")
        r = predict(c, name, {"instances": [{"customer_id": customers[0]}]})
        healthy = c.get("/v2/models/champion/ready")
    assert ready.status_code == 503
    assert r.status_code == 503 and "not ready" in r.json()["error"]
    assert healthy.status_code == 200
    log = server.log.read_text()
    assert "NOT READY" in log and "does not match the registered" in log  # the sha256 check is the reason


BAD_INPUTS: list[tuple[str, bytes | str, int, str]] = [
    ("nan", '{"instances": [{"customer_id": NaN}]}', 422, "instances[0].customer_id"),
    ("infinity", '{"instances": [{"features": {"tenure_days": Infinity}}]}', 422, "instances[0].features.tenure_days"),
    ("overflow", '{"instances": [{"customer_id": 1e309}]}', 422, "instances[0].customer_id"),
    ("wrong type", '{"instances": [{"customer_id": "abc"}]}', 422, "instances[0].customer_id"),
    ("bool id", '{"instances": [{"customer_id": true}]}', 422, "instances[0].customer_id"),
    ("missing instances", '{"rows": []}', 422, "rows"),
    ("empty instances", '{"instances": []}', 422, "instances"),
    ("missing id and features", '{"instances": [{}]}', 422, "instances[0].customer_id"),
    ("missing feature", '{"instances": [{"features": {"tenure_days": 3}}]}', 422, "instances[0].features."),
    ("unknown field", '{"instances": [{"customer_id": 1, "colour": 2}]}', 422, "instances[0].colour"),
    ("bad top_k", '{"instances": [{"customer_id": 1}], "parameters": {"top_k": -1}}', 422, "parameters.top_k"),
    ("not json", "{instances:", 400, "not valid JSON"),
    ("unknown customer", '{"instances": [{"customer_id": 999999999}]}', 404, "instances[0].customer_id"),
]


@pytest.mark.parametrize(("case", "body", "status", "field"), BAD_INPUTS, ids=[c[0] for c in BAD_INPUTS])
def test_bad_input_is_a_4xx_naming_the_field(server: Server, case: str, body: str, status: int, field: str) -> None:
    with server.client() as c:
        r = c.post(V1.format("champion"), content=body, headers={"Content-Type": "application/json"})
    assert r.status_code == status, r.text
    assert field in r.json()["error"]


def test_bad_v2_inputs(server: Server) -> None:
    with server.client() as c:
        mismatched = c.post(
            "/v2/models/champion/infer", json={"inputs": [{"name": "customer_id", "datatype": "INT64", "shape": [2], "data": [1]}]}
        )
        unknown = c.post(
            "/v2/models/champion/infer", json={"inputs": [{"name": "colour", "datatype": "FP64", "shape": [1], "data": [1.0]}]}
        )
        nan = c.post(
            "/v2/models/champion/infer",
            content='{"inputs": [{"name": "tenure_days", "datatype": "FP64", "shape": [1], "data": [NaN]}]}',
            headers={"Content-Type": "application/json"},
        )
    assert mismatched.status_code in (400, 422) and "shape" in mismatched.text
    assert unknown.status_code == 422 and "inputs[0].name" in unknown.json()["error"]
    assert nan.status_code == 422 and "inputs[0].data[0]" in nan.json()["error"]


def test_unknown_model_and_wrong_content_type(server: Server) -> None:
    with server.client() as c:
        missing = predict(c, "nope", {"instances": [{"customer_id": 1}]})
        form = c.post(V1.format("champion"), content=b"customer_id=1", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert missing.status_code == 404
    assert form.status_code == 415


def test_request_size_limit(server: Server) -> None:
    big = json.dumps({"instances": [{"customer_id": 1}] * 30_000}).encode()
    assert len(big) > 200_000
    with server.client() as c:
        declared = c.post(V1.format("champion"), content=big, headers={"Content-Type": "application/json"})

        def chunks() -> Any:
            for i in range(0, len(big), 10_000):
                yield big[i : i + 10_000]

        streamed = c.post(V1.format("champion"), content=chunks(), headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert streamed.status_code == 413


def _raw_token(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _none_token(claims: dict[str, Any]) -> str:
    return jwt.encode(claims, None, algorithm="none")  # type: ignore[arg-type]


def _good(**over: Any) -> dict[str, Any]:
    return {"sub": "mallory", "aud": "churnops", "roles": ["predictor"], "exp": int(time.time()) + 600, **over}


def _without(claim: str) -> dict[str, Any]:
    return {k: v for k, v in _good().items() if k != claim}


# built when each test runs, so a long suite never turns them into expired tokens
JWT_MATRIX: list[tuple[str, Callable[[], str | None], int]] = [
    ("no token", lambda: None, 401),
    ("none algorithm", lambda: _none_token(_good()), 401),
    ("wrong key", lambda: _raw_token(_good(), key="another-secret-that-is-also-long-enough-0000"), 401),
    ("expired", lambda: _raw_token(_good(exp=int(time.time()) - 3600)), 401),
    ("wrong audience", lambda: _raw_token(_good(aud="someone-else")), 401),
    ("missing exp", lambda: _raw_token(_without("exp")), 401),
    ("missing sub", lambda: _raw_token(_without("sub")), 401),
    ("missing aud", lambda: _raw_token(_without("aud")), 401),
    ("garbage", lambda: "not-a-jwt", 401),
    ("viewer may not predict", lambda: _raw_token(_good(roles=["viewer"])), 403),
    ("no known role", lambda: _raw_token(_good(roles=["superuser"])), 403),
]


@pytest.mark.parametrize(("case", "bearer", "status"), JWT_MATRIX, ids=[c[0] for c in JWT_MATRIX])
def test_jwt_matrix(server: Server, customers: list[int], case: str, bearer: Callable[[], str | None], status: int) -> None:
    token_ = bearer()
    headers = {"Authorization": f"Bearer {token_}"} if token_ else {}
    r = httpx.post(server.url + V1.format("champion"), json={"instances": [{"customer_id": customers[0]}]}, headers=headers)
    assert r.status_code == status, r.text
    assert "error" in r.json()


def test_roles_per_route(server: Server) -> None:
    with server.client("viewer-bob", ("viewer",)) as viewer, server.client("pred-eve", ("predictor",)) as predictor:
        assert viewer.get("/v2/models/champion").status_code == 200
        assert viewer.get("/openapi.json").status_code == 200
        assert predictor.post("/v2/repository/models/champion/unload").status_code == 403
    assert httpx.get(server.url + "/v2/health/live").status_code == 200  # probes need no token
    assert httpx.get(server.url + "/v2/models/champion").status_code == 401


def test_metrics_follow_the_contract(server: Server, customers: list[int]) -> None:
    with server.client() as c:
        predict(c, "champion", {"instances": [{"customer_id": customers[0]}]})
        predict(c, "champion", {"instances": [{"customer_id": -1}]})
    text = httpx.get(server.url + "/metrics").text
    assert 'churnops_predictions_total{model="churn-classifier",version="1"}' in text
    for stage in ("features", "explain", "audit", "total"):
        assert f'stage="{stage}"' in text
    assert 'churnops_errors_total{code="422",model="churn-classifier",version="1"}' in text  # the canary's errors are its own
    assert "churnops_score_bucket" in text and "churnops_missing_feature_values_total" in text
    assert "customer_id=" not in text  # no customer ids in labels


def test_every_prediction_is_audited_and_tampering_is_detected(server: Server, customers: list[int], tmp_path: Path) -> None:
    with server.client("auditor") as c:
        r = predict(c, "challenger", {"instances": [{"customer_id": cid} for cid in customers[:3]]})
    assert r.status_code == 200
    ids = {p["request_id"] for p in r.json()["predictions"]}
    records = [json.loads(line) for line in server.audit_log.read_text().splitlines()]
    mine = [rec for rec in records if rec["request_id"] in ids]
    assert len(mine) == 3 and {rec["caller"] for rec in mine} == {"auditor"}
    assert all(rec["model_version"] == "3" and len(rec["features_sha256"]) == 64 for rec in mine)
    assert verify_file(server.audit_log, audit_keys()).ok

    copy = tmp_path / "predictions.jsonl"
    lines = server.audit_log.read_text().splitlines()
    copy.write_text("\n".join(lines) + "\n")
    (tmp_path / "predictions.jsonl.head").write_text((server.audit_log.parent / "predictions.jsonl.head").read_text())
    cli = [str(Path(sys.executable).parent / "churnops"), "audit", "verify", "--log", str(copy)]
    clean = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert clean.returncode in (0,) and "OK" in clean.stdout, clean.stdout + clean.stderr
    edited = json.loads(lines[0])
    edited["score"] = 0.0
    copy.write_text("\n".join([json.dumps(edited), *lines[1:]]) + "\n")
    tampered = subprocess.run(cli, capture_output=True, text=True, check=False)
    assert tampered.returncode == 1 and "TAMPERED" in tampered.stdout


def test_openapi_spec_describes_the_routes(server: Server) -> None:
    with server.client("viewer-bob", ("viewer",)) as c:
        spec = c.get("/openapi.json").json()
    assert spec["openapi"].startswith("3.1")
    assert "/v1/models/{model_name}:predict" in spec["paths"]
    assert set(spec["paths"]["/v1/models/{model_name}:predict"]["post"]["responses"]) >= {"200", "401", "403", "413", "422", "429"}


def test_schemathesis_finds_no_server_errors(server: Server, tmp_path: Path) -> None:
    with server.client("viewer-bob", ("viewer",)) as c:
        spec = c.get("/openapi.json").json()
    # the corrupted version answers 503 by design; fuzz the healthy models
    for path in spec["paths"].values():
        for op in path.values():
            for p in op.get("parameters", []):
                if p["name"] == "model_name":
                    p["schema"]["enum"] = ["champion", "challenger"]
    spec_file = tmp_path / "openapi.json"
    spec_file.write_text(json.dumps(spec))
    st = Path(sys.executable).parent / "st"
    cmd = [str(st), "run", str(spec_file), "--url", server.url, "-H", f"Authorization: Bearer {token('fuzzer', ('admin',), 3600)}"]
    cmd += ["--checks", "not_a_server_error,status_code_conformance,content_type_conformance", "--max-examples", "40", "--seed", "1"]
    cmd += ["--suppress-health-check", "all", "--workers", "1"]
    run = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=tmp_path, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def test_metrics_pass_promtool_and_a_real_prometheus_scrapes_them(server: Server, customers: list[int], tmp_path: Path) -> None:
    for tool in ("prometheus", "promtool"):
        assert shutil.which(tool), f"{tool} is required (Debian: apt-get install prometheus)"
    text = httpx.get(server.url + "/metrics").text
    ours = "\n".join(line for line in text.splitlines() if "churnops_" in line) + "\n"
    lint = subprocess.run(["promtool", "check", "metrics"], input=ours, capture_output=True, text=True, check=False)
    assert lint.returncode == 0, lint.stdout + lint.stderr

    port = free_port()
    config = tmp_path / "prometheus.yml"
    target = server.url.removeprefix("http://")
    config.write_text(
        f"global: {{scrape_interval: 1s}}\nscrape_configs:\n  - job_name: churnops\n    static_configs: [{{targets: ['{target}']}}]\n"
    )
    cmd = ["prometheus", f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{port}"]
    with (tmp_path / "prometheus.log").open("w") as log:
        prom = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        with server.client("scraped") as c:
            for cid in customers[:10]:
                assert predict(c, "champion", {"instances": [{"customer_id": cid}]}).status_code == 200
        query = 'sum(churnops_predictions_total{model="churn-classifier",version="1"})'
        deadline = time.monotonic() + 60
        value = 0.0
        while time.monotonic() < deadline:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": query}, timeout=2).json()
                if r["data"]["result"]:
                    value = float(r["data"]["result"][0]["value"][1])
                    if value >= 10:
                        break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        assert value >= 10, (tmp_path / "prometheus.log").read_text()[-2000:]
        p99 = 'histogram_quantile(0.99, sum by (le) (churnops_latency_seconds_bucket{stage="total"}))'
        result = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": p99}, timeout=5).json()["data"]["result"]
        assert result and 0 < float(result[0]["value"][1]) < 2.5
    finally:
        prom.terminate()
        prom.wait(timeout=30)
