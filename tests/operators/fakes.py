"""HTTP fakes for the operator's outside systems: a Prometheus query API with canned answers and a KFP run API.

Both are real HTTP servers on loopback, so the operator's own clients (httpx,
timeouts, error handling) are what is tested. The KFP fake checks every
request body against the KFP server's own generated models
(``kfp_server_api.models``, installed with ``kfp``): an unknown field, a wrong
type or a reference to a missing pipeline, version or experiment is a 400.
"""

from __future__ import annotations

import contextlib
import json
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from churnops_contract import metric_names as m

SCORE_LE = (*(f"{b:g}" for b in m.SCORE_BUCKETS), "+Inf")


class _Listener(ThreadingHTTPServer):
    request_queue_size = 256  # the default backlog (5) refuses connections when 100 resources query at once
    daemon_threads = True


class _Server:
    """A ThreadingHTTPServer on a free loopback port, stopped on exit."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.httpd = _Listener(("127.0.0.1", 0), handler)
        self.httpd.owner = self  # type: ignore[attr-defined]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> Any:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the real servers: a connection per call would be the fake's cost, not the client's
    disable_nagle_algorithm = True  # as Go's servers: the body written after the headers must not wait for the client's delayed ACK

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    @property
    def owner(self) -> Any:
        return self.server.owner  # type: ignore[attr-defined]

    def reply(self, status: int, body: Any) -> None:
        raw = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
            self.wfile.write(raw)

    def body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        return json.loads(self.rfile.read(length) or b"null")


# --- Prometheus ------------------------------------------------------------------------------------


@dataclass
class Traffic:
    """What one model version's metrics say: ``requests`` whatever the window, or ``rate`` per second of the query's range."""

    requests: float = 2000.0
    rate: float | None = None  # counters grow at this rate: an increase over [Ns] is rate * N (a windowed time series)
    error_rate: float = 0.0
    slow_share: float = 0.0
    scores: tuple[float, ...] = (0.3, 0.2, 0.15, 0.1, 0.08, 0.06, 0.04, 0.03, 0.02, 0.02, 0.0)  # per SCORE_BUCKETS bucket
    auc: float | None = None
    coverage: float | None = None
    churn_rate: float | None = None
    drift: float | None = None  # the largest feature drift score
    mode: str = "ok"  # ok | empty | nan | error | timeout | http500


@dataclass
class PromState:
    versions: dict[str, Traffic] = field(default_factory=dict)
    unattributed_errors: float = 0.0  # errors exported without a version label
    delay_s: float = 5.0  # how long a "timeout" answer takes (the tests give the operator 2 s)
    queries: list[str] = field(default_factory=list)
    hold_model: str | None = None  # queries about this model wait for ``release`` (a Prometheus stuck on one resource's queries)
    release: threading.Event = field(default_factory=threading.Event)
    held: int = 0  # queries waiting for ``release`` now
    lock: threading.Lock = field(default_factory=threading.Lock)


def _answer(state: PromState, query: str) -> tuple[int, Any, float]:
    if 'version=""' in query:
        value = [{"metric": {}, "value": [time.time(), repr(state.unattributed_errors)]}] if state.unattributed_errors else []
        return 200, {"status": "success", "data": {"resultType": "vector", "result": value}}, 0.0
    version = re.search(r'version="([^"]+)"', query)
    t = state.versions.get(version.group(1)) if version else None
    if t is None:
        return 200, {"status": "success", "data": {"resultType": "vector", "result": []}}, 0.0
    if t.mode == "error":
        return 400, {"status": "error", "errorType": "bad_data", "error": "injected query error"}, 0.0
    if t.mode == "http500":
        return 500, {"status": "error", "errorType": "internal", "error": "injected"}, 0.0
    delay = state.delay_s if t.mode == "timeout" else 0.0
    span = re.search(r"\[(\d+)s\]", query)
    if t.rate is not None and span is not None:
        t = replace(t, requests=t.rate * int(span.group(1)))

    def vec(value: float | None, labels: dict[str, str] | None = None) -> list[dict[str, Any]]:
        if value is None or t.mode == "empty":
            return []
        shown = "NaN" if t.mode == "nan" else repr(float(value))
        return [{"metric": labels or {}, "value": [time.time(), shown]}]

    result: list[dict[str, Any]]
    if "churnops_model_info" in query:
        result = vec(1.0)
    elif "churnops_errors_total" in query:
        result = vec(t.requests * t.error_rate)
    elif "histogram_quantile" in query:
        result = vec(50.0 + 200.0 * t.slow_share)
    elif "churnops_latency_seconds_count" in query:
        result = vec(t.requests)
    elif "churnops_latency_seconds_bucket" in query:
        result = vec(t.requests * (1.0 - t.slow_share))
    elif "churnops_score_bucket" in query:
        cumulative, result = 0.0, []
        for le, share in zip(SCORE_LE, (*t.scores, 0.0), strict=False):
            cumulative += share * t.requests
            result += vec(cumulative, {"le": le})
    elif "churnops_requests_total" in query or "churnops_predictions_total" in query:
        result = vec(t.requests)
    elif "churnops_performance" in query:
        result = vec(t.auc) if 'metric="auc"' in query else []
    elif "churnops_label_coverage" in query:
        result = vec(t.coverage)
    elif "churnops_churn_rate" in query:
        result = vec(t.churn_rate)
    elif "churnops_drift_score" in query:
        result = vec(t.drift)
    else:
        result = []
    return 200, {"status": "success", "data": {"resultType": "vector", "result": result}}, delay


class _PromHandler(_Handler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        if url.path != "/api/v1/query":
            self.reply(404, {"status": "error", "error": "not found"})
            return
        query = parse_qs(url.query).get("query", [""])[0]
        state: PromState = self.owner.state
        state.queries.append(query)
        if state.hold_model is not None and f'{m.LABEL_MODEL}="{state.hold_model}"' in query:
            with state.lock:
                state.held += 1
            state.release.wait()
            with state.lock:
                state.held -= 1
        status, body, delay = _answer(state, query)
        if delay:
            time.sleep(delay)
        self.reply(status, body)


class FakePrometheus(_Server):
    def __init__(self) -> None:
        super().__init__(_PromHandler)
        self.state = PromState()

    def set(self, version: str, traffic: Traffic) -> None:
        self.state.versions[version] = traffic


# --- Kubeflow Pipelines -----------------------------------------------------------------------------


def check_model(model: type, data: Any, path: str) -> None:
    """Validate ``data`` against a kfp_server_api model: known fields only, right types."""
    import kfp_server_api.models as km  # type: ignore[import-untyped]  # noqa: PLC0415  # the test-only KFP client package

    if not isinstance(data, dict):
        raise ValueError(f"{path}: must be an object")
    by_json = {v: k for k, v in model.attribute_map.items()}  # type: ignore[attr-defined]
    for key, value in data.items():
        if key not in by_json:
            raise ValueError(f"{path}.{key}: unknown field of {model.__name__}")
        kind = model.openapi_types[by_json[key]]  # type: ignore[attr-defined]
        if kind == "str" and not isinstance(value, str):
            raise ValueError(f"{path}.{key}: must be a string")
        if kind.startswith("dict(") and not isinstance(value, dict):
            raise ValueError(f"{path}.{key}: must be an object")
        nested = getattr(km, kind, None)
        if nested is not None and hasattr(nested, "attribute_map") and nested.attribute_map:
            check_model(nested, value, f"{path}.{key}")


@dataclass
class KfpState:
    pipelines: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> {display_name, versions: [ids]}
    experiments: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: dict[str, dict[str, Any]] = field(default_factory=dict)
    created: list[dict[str, Any]] = field(default_factory=list)  # every accepted POST /runs body
    on_create: Callable[[dict[str, Any]], None] | None = None


def _filtered(items: list[dict[str, Any]], raw_filter: str | None) -> list[dict[str, Any]]:
    if not raw_filter:
        return items
    import kfp_server_api.models as km  # noqa: PLC0415

    spec = json.loads(raw_filter)
    check_model(km.V2beta1Filter, spec, "filter")
    for p in spec.get("predicates") or []:
        check_model(km.V2beta1Predicate, p, "filter.predicates[]")
        if p.get("operation") != "EQUALS" or p.get("key") != "display_name":
            raise ValueError(f"filter: the fake supports display_name EQUALS only, got {p}")
        items = [i for i in items if i.get("display_name") == p.get("string_value")]
    return items


class _KfpHandler(_Handler):
    def _route(self, method: str) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        state: KfpState = self.owner.state
        parts = url.path.strip("/").split("/")
        try:
            if parts[:2] != ["apis", "v2beta1"]:
                raise LookupError(url.path)
            self._serve(method, parts[2:], q, state)
        except ValueError as e:
            self.reply(400, {"error": str(e), "code": 3})
        except LookupError as e:
            self.reply(404, {"error": f"not found: {e}", "code": 5})

    def _serve(self, method: str, parts: list[str], q: dict[str, str], state: KfpState) -> None:
        import kfp_server_api.models as km  # noqa: PLC0415

        if method == "GET" and parts == ["pipelines"]:
            self.reply(200, {"pipelines": _filtered([{"pipeline_id": k, **v} for k, v in state.pipelines.items()], q.get("filter"))})
        elif method == "GET" and len(parts) == 3 and parts[0] == "pipelines" and parts[2] == "versions":
            pipeline = state.pipelines.get(parts[1])
            if pipeline is None:
                raise LookupError(parts[1])
            versions = [{"pipeline_version_id": v, "pipeline_id": parts[1]} for v in reversed(pipeline["versions"])]
            self.reply(200, {"pipeline_versions": versions[: int(q.get("page_size", "100"))]})
        elif method == "GET" and parts == ["experiments"]:
            self.reply(200, {"experiments": _filtered(list(state.experiments.values()), q.get("filter"))})
        elif method == "POST" and parts == ["experiments"]:
            body = self.body()
            check_model(km.V2beta1Experiment, body, "experiment")
            if not body.get("display_name"):
                raise ValueError("experiment.display_name: required")
            exp = {"experiment_id": str(uuid.uuid4()), "display_name": body["display_name"]}
            state.experiments[exp["experiment_id"]] = exp
            self.reply(200, exp)
        elif method == "GET" and parts == ["runs"]:
            runs = [r for r in state.runs.values() if not q.get("experiment_id") or r["experiment_id"] == q["experiment_id"]]
            self.reply(200, {"runs": _filtered(runs, q.get("filter"))})
        elif method == "POST" and parts == ["runs"]:
            body = self.body()
            check_model(km.V2beta1Run, body, "run")
            ref = body.get("pipeline_version_reference") or {}
            pipeline = state.pipelines.get(ref.get("pipeline_id", ""))
            if not body.get("display_name") or pipeline is None or ref.get("pipeline_version_id") not in pipeline["versions"]:
                raise ValueError("run: display_name and an existing pipeline_version_reference are required")
            if body.get("experiment_id") not in state.experiments:
                raise ValueError("run.experiment_id: no such experiment")
            run = {**body, "run_id": str(uuid.uuid4()), "state": "PENDING", "created_at": "2026-01-01T00:00:00Z"}
            state.runs[run["run_id"]] = run
            state.created.append(body)
            if state.on_create is not None:
                state.on_create(run)
            self.reply(200, run)
        elif method == "GET" and len(parts) == 2 and parts[0] == "runs":
            if parts[1] not in state.runs:
                raise LookupError(parts[1])
            self.reply(200, state.runs[parts[1]])
        else:
            raise LookupError("/".join(parts))

    def do_GET(self) -> None:
        self._route("GET")

    def do_POST(self) -> None:
        self._route("POST")


class FakeKFP(_Server):
    def __init__(self, pipeline: str = "churn-training") -> None:
        super().__init__(_KfpHandler)
        self.state = KfpState()
        self.state.pipelines[str(uuid.uuid4())] = {"display_name": pipeline, "versions": [str(uuid.uuid4()), str(uuid.uuid4())]}

    def finish(self, run_id: str, state: str = "SUCCEEDED") -> None:
        self.state.runs[run_id]["state"] = state


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


# --- MLflow (benchmarks only; the tests use a real server) ---------------------------------------------


@dataclass
class MlflowState:
    versions: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    aliases: dict[tuple[str, str], str] = field(default_factory=dict)


class _MlflowHandler(_Handler):
    def do_GET(self) -> None:
        url = urlparse(self.path)
        q = {k: v[0] for k, v in parse_qs(url.query).items()}
        state: MlflowState = self.owner.state
        if url.path.endswith("/model-versions/get"):
            mv = state.versions.get((q.get("name", ""), q.get("version", "")))
            self.reply(200, {"model_version": mv}) if mv else self.reply(404, {"error_code": "RESOURCE_DOES_NOT_EXIST"})
        elif url.path.endswith("/registered-models/alias"):
            version = state.aliases.get((q.get("name", ""), q.get("alias", "")))
            body = {"model_version": state.versions[(q["name"], version)]} if version else {"error_code": "RESOURCE_DOES_NOT_EXIST"}
            self.reply(200 if version else 404, body)
        elif url.path.endswith("/runs/get"):
            self.reply(200, {"run": {"data": {"metrics": [{"key": "roc_auc", "value": 0.85}]}}})
        else:
            self.reply(404, {"error_code": "ENDPOINT_NOT_FOUND"})

    def do_POST(self) -> None:
        url = urlparse(self.path)
        body = self.body()
        state: MlflowState = self.owner.state
        if url.path.endswith("/registered-models/alias"):
            state.aliases[(body["name"], body["alias"])] = str(body["version"])
        self.reply(200, {})


class FakeMLflow(_Server):
    def __init__(self) -> None:
        super().__init__(_MlflowHandler)
        self.state = MlflowState()

    def register(self, model: str, versions: int) -> None:
        for v in range(1, versions + 1):
            self.state.versions[(model, str(v))] = {"name": model, "version": str(v), "source": f"s3://m/{model}/{v}", "run_id": "r"}


# --- an outage in front of a real server -----------------------------------------------------------------


class _ProxyHandler(_Handler):
    def _forward(self, method: str) -> None:
        owner: Outage = self.owner
        if owner.down:
            self.reply(503, {"error_code": "TEMPORARILY_UNAVAILABLE", "message": "injected outage"})
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        headers = {"Content-Type": self.headers.get("Content-Type") or "application/json"}
        answer = owner.client.request(method, self.path, content=body, headers=headers)
        self.send_response(answer.status_code)
        self.send_header("Content-Type", answer.headers.get("Content-Type", "application/json"))
        self.send_header("Content-Length", str(len(answer.content)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self.wfile.write(answer.content)

    def do_GET(self) -> None:
        self._forward("GET")

    def do_POST(self) -> None:
        self._forward("POST")


class Outage(_Server):
    """A pass-through proxy to a real server (MLflow) that answers 503 while ``down``."""

    def __init__(self, target: str) -> None:
        import httpx  # noqa: PLC0415 - the fakes above need no HTTP client

        super().__init__(_ProxyHandler)
        self.client = httpx.Client(base_url=target, timeout=10)
        self.down = False
