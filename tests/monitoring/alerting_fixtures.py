"""Real Prometheus and Alertmanager processes for the alerting tests, and a predictor-like exporter they scrape.

``PredictorExporter`` serves ``churnops_*`` series the way a predictor does
(counters that grow with time at the rates of its current mode: healthy,
drifted or erroring) through prometheus_client's own HTTP server.
``prometheus`` and ``alertmanager`` start the Debian binaries on free loopback
ports with private storage; ``WebhookSink`` records what Alertmanager sends.
A missing binary fails the test with the package to install: nothing is
skipped silently.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from churnops_contract import metric_names as c
from tests.support import waiting

MONITORING = Path(__file__).resolve().parents[2] / "manifests" / "monitoring"
RULES = MONITORING / "rules" / "churnops.rules.yaml"
ALERTMANAGER_CONFIG = MONITORING / "alertmanager.yaml"
PACKAGES = {
    "promtool": "prometheus",
    "prometheus": "prometheus",
    "amtool": "prometheus-alertmanager",
    "prometheus-alertmanager": "prometheus-alertmanager",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def binary(name: str) -> str:
    """Path of a required tool; fails (never skips) with the Debian package to install."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed; the alerting tests need it (apt-get install -y {PACKAGES.get(name, name)})")
    return path


def run(args: list[str], cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([binary(args[0]), *args[1:]], capture_output=True, text=True, timeout=300, check=False, cwd=cwd)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as r:
        return json.loads(r.read())


# Prometheus evaluates rules on its own clock: poll more slowly, give up sooner than the predictor tests.
poll = partial(waiting.poll, deadline_s=90.0, every_s=0.5)


# --- metric names in PromQL ------------------------------------------------------------------------------

_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^}]*\}")
_RANGES = re.compile(r"\[[^\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left", "group_right", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (functions, keywords, label names and durations left out)."""
    e = _STRINGS.sub('""', expr)
    e = _MATCHERS.sub("", e)
    e = _RANGES.sub("", e)
    e = _GROUPING.sub("", e)
    names: set[str] = set()
    for m in _IDENT.finditer(e):
        before = e[m.start() - 1] if m.start() else " "
        if before.isdigit() or before == ".":
            continue  # the exponent or unit of a number
        if e[m.end() :].lstrip().startswith("(") or m.group().lower() in _KEYWORDS:
            continue
        names.add(m.group())
    return names


def contract_names() -> set[str]:
    """Every series name the contract allows: its metrics with the suffixes the client library adds."""
    base = {v for k, v in vars(c).items() if k.isupper() and isinstance(v, str) and v.startswith(c.METRIC_PREFIX) and v != c.METRIC_PREFIX}
    return base | {f"{n}{s}" for n in base for s in ("_total", "_bucket", "_sum", "_count")}


def recording_rules() -> set[str]:
    doc = yaml.safe_load(RULES.read_text())
    return {r["record"] for g in doc["groups"] for r in g["rules"] if "record" in r}


# --- the exporter -------------------------------------------------------------------------------------

MODES = ("healthy", "drifted", "erroring")
LABELS = {"model": "churn", "version": "7"}


@dataclass(eq=False)  # identity-hashed: the registry keys collectors by object
class PredictorExporter(Collector):
    """A predictor's metrics for model churn v7; ``mode`` switches what it reports from the next scrape on."""

    mode: str = "healthy"
    _totals: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    _last: float = field(default_factory=time.monotonic)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def rates(self) -> dict[str, float]:
        """Per-second rates of the counters in the current mode."""
        ok = 0.0 if self.mode == "erroring" else 20.0
        return {
            "requests": ok,
            "predictions": ok,
            "errors_422": 0.2,
            "errors_503": 30.0 if self.mode == "erroring" else 0.0,
            "feature_values": ok * 116,
            "missing": ok * 2,
            "degraded": 0.0,
            "unseen": 0.1,
            "log_records": ok,
        }

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            now = time.monotonic()
            for key, rate in self.rates().items():
                self._totals[key] += rate * (now - self._last)
            self._last = now
            t = dict(self._totals)
        drifted = self.mode == "drifted"
        mv = [c.LABEL_MODEL, c.LABEL_VERSION]
        values = list(LABELS.values())
        yield _counter(c.REQUESTS, [*mv, c.LABEL_PROTOCOL], [*values, "v1"], t["requests"])
        yield _counter(c.PREDICTIONS, mv, values, t["predictions"])
        errors = CounterMetricFamily(c.ERRORS, "errors", labels=[c.LABEL_MODEL, c.LABEL_CODE])
        errors.add_metric(["churn", "422"], t["errors_422"])
        errors.add_metric(["churn", "503"], t["errors_503"])
        yield errors
        yield _counter(c.FEATURE_VALUES, mv, values, t["feature_values"])
        yield _counter(c.MISSING_FEATURE_VALUES, mv, values, t["missing"])
        latency = HistogramMetricFamily(c.LATENCY, "latency", labels=[*mv, c.LABEL_STAGE])
        n = t["requests"]
        latency.add_metric([*values, "total"], [("0.002", n * 0.9), ("0.005", n), ("+Inf", n)], sum_value=n * 0.002)
        yield latency
        yield _counter(c.DEGRADED, [*mv, c.LABEL_REASON], [*values, "store_error"], t["degraded"])
        yield _counter(c.UNSEEN_CATEGORIES, [*mv, c.LABEL_FEATURE], [*values, "plan"], t["unseen"])
        score = HistogramMetricFamily(c.SCORE, "score", labels=mv)
        score.add_metric(values, [("0.1", n * 0.6), ("0.5", n * 0.9), ("1.0", n), ("+Inf", n)], sum_value=n * 0.2)
        yield score
        yield _gauge(c.MODEL_INFO, [*mv, c.LABEL_ALIAS], [*values, "champion"], 1.0)
        yield _counter(c.PREDICTION_LOG_RECORDS, [c.LABEL_SINK], ["parquet"], t["log_records"])
        yield _counter(c.PREDICTION_LOG_DROPPED, [c.LABEL_SINK, c.LABEL_REASON], ["parquet", "queue_full"], 0.0)
        yield _gauge(c.PREDICTION_LOG_QUEUE, [c.LABEL_SINK], ["parquet"], 12.0)
        yield _gauge(c.DRIFT_DETECTED, mv, values, 1.0 if drifted else 0.0)
        yield _gauge(c.DRIFTED_FEATURES_SHARE, mv, values, 0.6 if drifted else 0.01)
        yield _gauge(c.SCORE_DRIFT, [*mv, c.LABEL_METHOD], [*values, "psi"], 0.6 if drifted else 0.01)
        yield _gauge(c.PREDICTION_LOG_LAST_FLUSH, [c.LABEL_SINK], ["parquet"], time.time())


def _counter(name: str, labels: list[str], values: list[str], value: float) -> Metric:
    family = CounterMetricFamily(name, name, labels=labels)
    family.add_metric(values, value)
    return family


def _gauge(name: str, labels: list[str], values: list[str], value: float) -> Metric:
    family = GaugeMetricFamily(name, name, labels=labels)
    family.add_metric(values, value)
    return family


@contextmanager
def serving_exporter(exporter: PredictorExporter) -> Iterator[str]:
    """Serve the exporter's /metrics on a free loopback port; yields host:port."""
    registry = CollectorRegistry()
    registry.register(exporter)
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=registry)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


# --- configurations derived from the checked-in ones -------------------------------------------------------


def fast_rules(dst: Path) -> Path:
    """The checked-in rules with every ``for:`` set to 0s: the integration test checks evaluation, promtool checks timing."""
    doc = yaml.safe_load(RULES.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                rule["for"] = "0s"
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return dst


def local_alertmanager_config(dst: Path, webhook_url: str, secrets: Path) -> dict[str, str]:
    """The checked-in configuration with receivers pointed at ``webhook_url`` and token files under ``secrets``.

    Routes, grouping keys and inhibitions stay as they are; waits shrink to a second. Returns receiver -> token.
    """
    doc = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    tokens: dict[str, str] = {}
    secrets.mkdir(parents=True, exist_ok=True)
    for receiver in doc["receivers"]:
        for hook in receiver.get("webhook_configs", []):
            token = f"token-of-{receiver['name']}"
            path = secrets / Path(hook["http_config"]["authorization"]["credentials_file"]).name
            path.write_text(token)
            hook["http_config"]["authorization"]["credentials_file"] = str(path)
            hook["url"] = f"{webhook_url}/{receiver['name']}"
            tokens[receiver["name"]] = token
    _shorten(doc["route"], root=True)
    dst.write_text(yaml.safe_dump(doc, sort_keys=False))
    return tokens


def _shorten(route: dict[str, Any], root: bool = False) -> None:
    for key in ("group_wait", "group_interval"):
        if root or key in route:  # children without their own value inherit the root's
            route[key] = "1s"
    for child in route.get("routes", []):
        _shorten(child)


# --- processes ----------------------------------------------------------------------------------------------


@contextmanager
def _process(args: list[str], log: Path, ready_url: str, timeout_s: float = 60.0) -> Iterator[None]:
    with log.open("w") as out:
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT)
        try:
            end = time.monotonic() + timeout_s
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if proc.poll() is not None or time.monotonic() > end:
                    pytest.fail(f"{args[0]} did not become ready (exit code {proc.poll()}):\n{log.read_text()[-3000:]}")
                time.sleep(0.2)
            yield
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


@contextmanager
def prometheus(workdir: Path, rules: Path, targets: Mapping[str, list[str]], alertmanager: str | None = None) -> Iterator[str]:
    """A Prometheus scraping ``targets`` (job -> host:port) every second and evaluating ``rules`` every second; yields its URL."""
    config: dict[str, Any] = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": hosts}]} for job, hosts in targets.items()],
    }
    if alertmanager is not None:
        config["alerting"] = {"alertmanagers": [{"static_configs": [{"targets": [alertmanager]}]}]}
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    args = [
        binary("prometheus"),
        f"--config.file={workdir / 'prometheus.yml'}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(args, workdir / "prometheus.log", f"{url}/-/ready"):
        yield url


@contextmanager
def alertmanager(workdir: Path, config: Path) -> Iterator[str]:
    """An Alertmanager with ``config`` and private storage, clustering off; yields its URL."""
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    args = [
        binary("prometheus-alertmanager"),
        f"--config.file={config}",
        f"--storage.path={workdir / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--cluster.listen-address=",
    ]
    url = f"http://127.0.0.1:{port}"
    with _process(args, workdir / "alertmanager.log", f"{url}/-/ready"):
        yield url


@dataclass
class WebhookSink:
    """An HTTP endpoint that records each notification: (path, Authorization header, JSON body)."""

    received: list[tuple[str, str, dict[str, Any]]] = field(default_factory=list)
    url: str = ""

    def alerts(self, receiver: str) -> list[tuple[str, dict[str, Any]]]:
        """(token, alert) for every alert delivered to ``receiver``."""
        return [(auth, a) for path, auth, body in list(self.received) if path == f"/{receiver}" for a in body.get("alerts", [])]


@contextmanager
def webhook_sink() -> Iterator[WebhookSink]:
    sink = WebhookSink()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
            sink.received.append((self.path, self.headers.get("Authorization", ""), body))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    sink.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
