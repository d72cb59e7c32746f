"""The operator judging canaries from a real Prometheus that scrapes predictor metrics.

Two exporters stand in for the stable and the canary predictor pods: each
exports the predictor's own ``ServingMetrics`` (``churnops.serving.instruments``,
the same names, labels and buckets as the KServe predictor) and is fed by a
traffic loop that routes requests as KServe's Serverless canary would from
the InferenceService the operator writes (``canaryTrafficPercent`` to the
latest revision, the rest to the previous rolled-out one). A real
``prometheus`` scrapes both every second; the operator queries it over its
HTTP API. Nothing in the verdict path is canned.
"""

from __future__ import annotations

import random
import shutil
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, start_http_server

from churnops.processes import free_port
from churnops.serving.instruments import ServingMetrics
from tests.monitoring.alerting_fixtures import prometheus
from tests.operators.harness import Cluster, OperatorProcess, crd_defaults

pytestmark = pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (Debian: apt-get install prometheus)")


class Predictors:
    """Exporters for versions 1 and 2 and a traffic loop that follows the InferenceService."""

    def __init__(self, k8s: Cluster, model: str, bad: bool) -> None:
        self.k8s, self.model, self.bad = k8s, model, bad
        self.metrics: dict[str, ServingMetrics] = {}
        self.ports: dict[str, int] = {}
        self.servers: list[Any] = []
        for version in ("1", "2"):
            registry = CollectorRegistry()
            self.metrics[version] = ServingMetrics(registry)
            self.ports[version] = free_port()
            self.servers.append(start_http_server(self.ports[version], addr="127.0.0.1", registry=registry))
        self.split: dict[str, float] = {}
        self.previous: str | None = None
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.route, daemon=True), threading.Thread(target=self.serve, daemon=True)]

    def route(self) -> None:
        """KServe Serverless: canaryTrafficPercent to the spec's revision, the rest to the previous rolled-out one."""
        while not self.stop.is_set():
            isvc = self.k8s.isvc("churn")
            if isvc is not None:
                version = isvc["metadata"]["labels"]["churnops.io/model-version"]
                percent = isvc["spec"]["predictor"].get("canaryTrafficPercent")
                if percent is None or self.previous is None:
                    self.previous, self.split = version, {version: 1.0}
                else:
                    self.split = {version: percent / 100.0, self.previous: 1.0 - percent / 100.0}
            time.sleep(0.2)

    def serve(self) -> None:
        rng = random.Random(3)
        while not self.stop.is_set():
            for version, share in list(self.split.items()):
                m = self.metrics[version]
                worse = self.bad and version == "2"
                for i in range(round(20 * share)):
                    m.requests.labels(self.model, version, "v1").inc()
                    if i % 5 == 0:  # a client's mistakes (4xx) are not the model's errors
                        m.errors.labels(self.model, version, "422").inc()
                    m.latency.labels(self.model, version, "total").observe(rng.lognormvariate(-1.5 if worse else -5.0, 0.3))
                    m.score.labels(self.model, version).observe(rng.betavariate(5, 2) if worse else rng.betavariate(2, 5))
            time.sleep(0.05)

    def __enter__(self) -> Predictors:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)
        for server in self.servers:
            if isinstance(server, tuple):
                server[0].shutdown()


@contextmanager
def real_prometheus(k8s: Cluster, predictors: Predictors, tmp: Path) -> Iterator[str]:
    rules = tmp / "rules.yaml"
    rules.write_text("groups: []\n")
    targets = {f"predictor-{v}": [f"127.0.0.1:{port}"] for v, port in predictors.ports.items()}
    with prometheus(tmp / "prometheus", rules, targets) as url:
        # The operator under test reads this Prometheus, not the fake.
        k8s.operator = OperatorProcess(tmp / "kubeconfig", url, k8s.mlflow_url, None, tmp / "operator-real-prometheus.log")
        yield url


@pytest.mark.parametrize("bad", [False, True], ids=["healthy-promoted", "bad-rolled-back"])
def test_verdicts_from_a_real_prometheus(k8s: Cluster, model: str, bad: bool, tmp_path: Path) -> None:
    k8s.register(model, 2)
    with Predictors(k8s, model, bad) as predictors, real_prometheus(k8s, predictors, tmp_path):
        k8s.operator.start()
        spec = {"model": {"registeredModel": model, "version": "1"}, "featureService": "churn_v1"}
        # a limit whose bucket is le="1.0" as exported (a query for le="1" would match nothing and fail every check)
        analysis = {"maxLatencyP95Ms": 800}
        spec["rollout"] = {"interval": "3s", "minSamples": 50, "failureThreshold": 2, "steps": [20, 50, 100], "analysis": analysis}
        k8s.apply_md("churn", crd_defaults(spec))
        k8s.wait("version 1 serving", lambda: predictors.split.get("1") == 1.0, 60)
        time.sleep(3)  # let Prometheus collect the stable version's series
        k8s.patch_md_spec("churn", {"model": {"version": "2"}})
        if bad:
            k8s.wait("rollback", lambda: "2" in (k8s.status("churn").get("rejectedVersions") or []), 120)
        else:
            k8s.wait("promotion", lambda: k8s.status("churn").get("stableVersion") == "2", 120)
    status = k8s.status("churn")
    if bad:
        reason = status["history"][-1]["reason"]
        assert status["stableVersion"] == "1" and ("score_psi fail" in reason or "latency_p95_ms fail" in reason), reason
    else:
        assert status["stableVersion"] == "2" and status["history"][-1]["event"] == "Promoted"
        verdict = status["lastVerdict"]
        assert verdict["outcome"] == "pass" and verdict["error_rate"]["outcome"] == "pass" and verdict["score_psi"]["canary"] is not None
        assert verdict["error_rate"]["canary"] == 0.0 and verdict["latency_p95_ms"]["outcome"] == "pass"
