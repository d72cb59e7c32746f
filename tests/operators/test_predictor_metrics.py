"""Prometheus reaches every predictor pod, in both KServe modes.

Knative replaces the serving container's ports by one named ``user-port`` (knative/serving v0.48.1
pkg/reconciler/revision/resources/deploy.go buildContainerPorts, pkg/apis/serving/v1/revision_helpers.go
UserPortName); in Standard mode the runtime's ``http1`` stays. A PodMonitor endpoint names a container
port: an endpoint whose name no container has scrapes nothing, every canary analysis then waits for
metrics until its deadline and ``ChurnOpsPredictorDown`` fires.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.charts.render import objects
from tests.operators import predictor_pod as kserve
from tests.operators.test_kserve_pod import isvcs, runtime


def pod_monitor(scenario: str) -> dict[str, Any]:
    """The predictor's PodMonitor (the kind and EKS values enable it)."""
    (found,) = (d for d in objects(scenario, "PodMonitor") if d["metadata"]["name"].endswith("-predictor"))
    return found


def scraped(monitor: dict[str, Any], pod: dict[str, Any]) -> list[str]:
    """The ``container/port`` pairs the monitor's endpoints select on ``pod`` (none when its selector misses the pod)."""
    labels = pod["metadata"]["labels"]
    if any(labels.get(k) != v for k, v in monitor["spec"]["selector"]["matchLabels"].items()):
        return []
    found = []
    for endpoint in monitor["spec"]["podMetricsEndpoints"]:
        for c in pod["spec"]["containers"]:
            for port in c.get("ports") or []:
                by_name = endpoint.get("port") is not None and port.get("name") == endpoint["port"]
                by_number = str(endpoint.get("targetPort", "")) in (str(port["containerPort"]), port.get("name"))
                if by_name or by_number:
                    found.append(f"{c['name']}/{port.get('name')}")
    return found


@pytest.mark.parametrize("scenario", ["kind", "eks"])
@pytest.mark.parametrize("mode", ["Serverless", "Standard"])
def test_the_pod_monitor_scrapes_the_predictor_container_in_each_mode(scenario: str, mode: str) -> None:
    monitor = pod_monitor(scenario)
    for isvc in isvcs(mode):
        pod = kserve.pod_for(isvc, runtime(scenario))
        got = scraped(monitor, pod)
        # the predictor's own /metrics (churnops_*), not only Knative's queue-proxy figures
        assert any(p.startswith(f"{kserve.KSERVE_CONTAINER}/") for p in got), (mode, got, monitor["spec"]["podMetricsEndpoints"])
