"""A pass never waits on one outside system for another's answer, and one resource's stuck reads never hold back another's.

The operator runs every resource's passes on one event loop: a read that waits
where it need not makes every pass longer, and a shared limit that one stuck
resource can fill stops every other resource's checks. These tests hold an
answer on the server's side (the Prometheus fake, the Kubernetes emulator) and
assert on what was answered while it was held: ordering, not durations. The
clients' timeouts are far longer than the tests' safety bounds, so a hold never
ends by a timeout.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from churnops_contract import queries
from churnops_contract.rollout.spec import KIND
from churnops_operator import reconcile as rec
from churnops_operator.kube import Credentials, Kube
from churnops_operator.mlflow import MLflow
from churnops_operator.prom import Prometheus
from churnops_operator.telemetry import OperatorMetrics
from tests.operators.fakes import FakePrometheus, Traffic
from tests.operators.harness import NS, Cluster
from tests.operators.kubemock import OPERATOR_TOKEN

CLIENT_TIMEOUT_S = 120.0  # the clients' own: a held answer is never ended by it within the safety bound
SAFETY_S = 30.0  # how long a test waits for what must happen before it fails (a bound, not a measurement)


async def until(what: str, check: Callable[[], Awaitable[bool]]) -> None:
    deadline = time.monotonic() + SAFETY_S
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not seen while the answer was held: {what}")
        await asyncio.sleep(0.02)


@pytest.fixture
def prom() -> Iterator[FakePrometheus]:
    with FakePrometheus() as fake:
        for version in ("1", "2"):
            fake.set(version, Traffic())
        yield fake
        fake.state.release.set()


def test_a_resource_whose_queries_hang_does_not_hold_back_another_resources_check(prom: FakePrometheus) -> None:
    prom.state.hold_model = "churn-stuck"
    stuck_queries = queries.analysis_queries("churn-stuck", "2", "1", 60.0, 60.0, 100.0)
    other_queries = queries.analysis_queries("churn-other", "2", "1", 60.0, 60.0, 100.0)

    async def scenario() -> None:
        client = Prometheus(prom.url, CLIENT_TIMEOUT_S)
        try:
            stuck = asyncio.create_task(client.answers(stuck_queries, time.time()))

            async def reached() -> bool:
                return prom.state.held >= client.per_call

            await until("the stuck resource's queries at Prometheus", reached)
            other = await asyncio.wait_for(client.answers(other_queries, time.time()), SAFETY_S)
            # Every one of the other resource's questions was answered while the stuck ones were still held.
            assert not stuck.done() and prom.state.held > 0
            assert other.keys() == other_queries.keys() and not any(a.failed for a in other.values())
            prom.state.release.set()
            answered = await stuck
            assert not any(a.failed for a in answered.values())
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_pass_writes_the_registry_while_a_kubernetes_read_is_still_unanswered(k8s: Cluster, model: str) -> None:
    """The serving objects (Kubernetes) and the registry (MLflow) are independent: a slow API server must not delay the
    champion alias of a version just deployed."""
    k8s.register(model, 1)
    k8s.apply_md("churn", {"model": {"registeredModel": model, "version": "1"}, "featureService": "churn_v1"})

    async def scenario() -> None:
        systems = rec.Systems(
            kube=Kube(Credentials(server=k8s.kube.url, token=OPERATOR_TOKEN), timeout_s=CLIENT_TIMEOUT_S),
            prom=Prometheus(k8s.prom.url, CLIENT_TIMEOUT_S),
            mlflow=MLflow(k8s.mlflow_url, CLIENT_TIMEOUT_S),
            kfp=None,
            metrics=OperatorMetrics(CollectorRegistry()),
        )

        async def one_pass() -> rec.Result:
            res = rec.Resource.from_object(await systems.kube.get(KIND, NS, "churn") or {})
            result = await rec.reconcile(systems, res)
            patch = rec.status_patch(res.status, result.status)
            await systems.kube.patch_status(KIND, NS, "churn", patch, res.resource_version)
            return result

        try:
            first = await one_pass()  # version 1 is deployed: a decision the registry has not seen yet
            assert first.status["stableVersion"] == "1" and first.status.get("registrySynced", 0) < first.status["eventSeq"]
            k8s.kube.call(lambda: k8s.kube.k.hold("inferenceservices"))
            second = asyncio.create_task(one_pass())

            async def champion() -> bool:
                return await asyncio.to_thread(k8s.alias, model, "champion") == "1"

            async def isvc_read_pending() -> bool:
                held: list[Any] = await asyncio.to_thread(k8s.kube.call, lambda: list(k8s.kube.k.held))
                return bool(held)

            await until("the pass reading the InferenceService", isvc_read_pending)
            await until("the champion alias on version 1", champion)
            assert not second.done() and await isvc_read_pending()  # the Kubernetes read is still unanswered
            k8s.kube.call(lambda: k8s.kube.k.release("inferenceservices"))
            result = await second
            assert result.status["registrySynced"] == result.status["eventSeq"]
            assert (k8s.isvc("churn") or {}).get("metadata", {}).get("labels", {}).get("churnops.io/model-version") == "1"
        finally:
            for client in (systems.kube, systems.prom, systems.mlflow):
                await client.aclose()

    asyncio.run(scenario())
