"""The Gateway retries only what a predictor never received, on every Standard-mode route.

Envoy Gateway v1.8.3 (envoyproxy/gateway): a BackendTrafficPolicy must sit in the namespace of its target
(api/v1alpha1/policy_helpers.go, PolicyTargetReferences) and, targeting a Gateway, applies to every route
attached to it; its retry triggers are Envoy's retry_on values (api/v1alpha1/retry_types.go, TriggerEnum).
Of those, connect-failure, refused-stream and reset-before-request fire only before the request reached the
upstream: retrying them never makes (and audits) a prediction twice. "5xx", "reset" or "gateway-error" could.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.charts.render import CHART, documents, objects, template
from tests.support.k8s_tools import validate_with_npm_schemas

NEVER_SENT = {"connect-failure", "refused-stream", "reset-before-request"}


def policy(scenario: str) -> dict[str, Any]:
    [found] = objects(scenario, "BackendTrafficPolicy")
    return found


@pytest.mark.parametrize("scenario", ["kind", "eks"])
def test_the_policy_covers_the_gateway_and_retries_only_requests_never_sent(scenario: str) -> None:
    btp = policy(scenario)
    [gateway] = objects(scenario, "Gateway")
    assert btp["metadata"]["namespace"] == gateway["metadata"]["namespace"]
    assert btp["spec"]["targetRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": gateway["metadata"]["name"]}]
    assert gateway["spec"]["gatewayClassName"] == "eg", "the policy is Envoy Gateway's: another class would ignore it"
    triggers = set(btp["spec"]["retry"]["retryOn"]["triggers"])
    assert triggers and triggers <= NEVER_SENT, f"would retry requests a predictor may have answered: {triggers - NEVER_SENT}"
    assert "timeout" not in (btp["spec"]["retry"].get("perRetry") or {}), "a per-try timeout also cuts the first attempt"
    assert btp["spec"]["healthCheck"]["passive"]["maxEjectionPercent"] < 100


def test_the_policy_passes_envoy_gateways_schema_and_the_schema_catches_a_typo() -> None:
    btp = policy("kind")
    broken = copy.deepcopy(btp)
    broken["spec"]["retry"]["retryOn"]["triggers"] = ["connect-failures"]
    good, bad = validate_with_npm_schemas([btp, broken])
    assert good == "ok"
    assert bad != "ok"


def test_no_policy_without_the_gateway_or_when_switched_off() -> None:
    assert not objects("minimal", "BackendTrafficPolicy")
    code, out, err = template("-f", CHART / "ci" / "kind-values.yaml", "--set", "gateway.envoyRetries=false")
    assert code == 0, err
    assert not [d for d in documents(out) if d["kind"] == "BackendTrafficPolicy"]
