"""A NetworkPolicy flow simulation over the rendered chart: every flow the platform needs is allowed, a few that
it must never have are denied.

The evaluator follows the semantics of kubernetes/kubernetes v1.33 ``pkg/apis/networking/types.go`` (the
NetworkPolicy API documentation): a pod is isolated for a direction when any policy in its namespace selects it
with that policy type (``policyTypes`` defaults to Ingress, plus Egress when egress rules exist); an isolated
pod accepts a connection only if some selecting policy has a rule whose peers and ports match; peers are an
``ipBlock`` (with ``except``), or a ``namespaceSelector`` and/or ``podSelector`` (a lone podSelector means the
policy's own namespace); an empty or missing ``ports`` list means every port. A flow needs both the egress of
its source and the ingress of its destination. Addresses outside the cluster carry no policy of their own.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.charts.render import NAMESPACE, SCENARIOS, dask_pod_labels, objects, rendered

Labels = Mapping[str, str]


@dataclass(frozen=True)
class Peer:
    """A pod (namespace and labels) or an address outside the cluster (ip)."""

    name: str
    namespace: str | None = None
    labels: Labels = field(default_factory=dict)
    ip: str | None = None

    @property
    def namespace_labels(self) -> Labels:
        return {"kubernetes.io/metadata.name": self.namespace} if self.namespace else {}


@dataclass(frozen=True)
class Flow:
    source: Peer
    destination: Peer
    port: int
    protocol: str = "TCP"

    def __str__(self) -> str:
        return f"{self.source.name} -> {self.destination.name}:{self.port}/{self.protocol}"


def selector_matches(selector: Mapping[str, Any], labels: Labels) -> bool:
    """A LabelSelector: matchLabels and matchExpressions (In, NotIn, Exists, DoesNotExist); empty selects all."""
    if any(labels.get(k) != v for k, v in (selector.get("matchLabels") or {}).items()):
        return False
    for expr in selector.get("matchExpressions") or []:
        key, op, vals = expr["key"], expr["operator"], expr.get("values") or []
        ok = {
            "In": key in labels and labels[key] in vals,
            "NotIn": key not in labels or labels[key] not in vals,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not ok:
            return False
    return True


def peer_matches(rule_peer: Mapping[str, Any], other: Peer, policy_namespace: str) -> bool:
    if "ipBlock" in rule_peer:
        if other.ip is None:
            return False
        address = ipaddress.ip_address(other.ip)
        block = rule_peer["ipBlock"]
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except") or []
        )
    if other.namespace is None:
        return False
    if "namespaceSelector" in rule_peer:
        if not selector_matches(rule_peer["namespaceSelector"], other.namespace_labels):
            return False
    elif other.namespace != policy_namespace:
        return False
    return "podSelector" not in rule_peer or selector_matches(rule_peer["podSelector"], other.labels)


def port_matches(ports: Sequence[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for p in ports:
        if p.get("protocol", "TCP") != protocol:
            continue
        if "port" not in p:
            return True
        if not isinstance(p["port"], int):
            raise AssertionError(f"named port {p['port']!r}: give numbers, the simulation cannot resolve names")
        if p["port"] <= port <= p.get("endPort", p["port"]):
            return True
    return False


def policy_types(policy: Mapping[str, Any]) -> set[str]:
    spec = policy["spec"]
    if "policyTypes" in spec:
        return set(spec["policyTypes"])
    return {"Ingress"} | ({"Egress"} if "egress" in spec else set())


def direction_allows(policies: Sequence[Mapping[str, Any]], direction: str, subject: Peer, other: Peer, port: int, protocol: str) -> bool:
    """Whether ``subject``'s policies let it talk to (Egress) or hear from (Ingress) ``other``."""
    if subject.namespace is None:
        return True  # outside the cluster: no NetworkPolicy of ours applies
    selecting = [
        p
        for p in policies
        if p["metadata"]["namespace"] == subject.namespace
        and selector_matches(p["spec"]["podSelector"], subject.labels)
        and direction in policy_types(p)
    ]
    if not selecting:
        return True
    rules_key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    return any(
        port_matches(rule.get("ports"), port, protocol)
        and (not rule.get(peers_key) or any(peer_matches(peer, other, p["metadata"]["namespace"]) for peer in rule[peers_key]))
        for p in selecting
        for rule in p["spec"].get(rules_key) or []
    )


def verdict(policies: Sequence[Mapping[str, Any]], flow: Flow) -> tuple[bool, bool]:
    """(egress of the source allows it, ingress of the destination allows it)."""
    return (
        direction_allows(policies, "Egress", flow.source, flow.destination, flow.port, flow.protocol),
        direction_allows(policies, "Ingress", flow.destination, flow.source, flow.port, flow.protocol),
    )


# --- The platform's pods, with the labels the chart (or the upstream projects) give them --------


def pod_labels(scenario: str, kind: str, name_suffix: str) -> Labels:
    obj = next(o for o in objects(scenario, kind) if o["metadata"]["name"].endswith(name_suffix))
    spec = obj["spec"]["jobTemplate"]["spec"] if kind == "CronJob" else obj["spec"]
    labels: Labels = spec["template"]["metadata"]["labels"]
    return labels


def predictor(scenario: str) -> Peer:
    """A predictor pod: the runtime's labels plus those KServe adds (kserve/kserve v0.15 pkg/constants)."""
    labels = dict(objects(scenario, "ClusterServingRuntime")[0]["spec"]["labels"])
    labels |= {"serving.kserve.io/inferenceservice": "churn", "component": "predictor"}
    return Peer("predictor", "churn", labels)


OUTSIDE = {
    # Envoy Gateway's proxies run in its own namespace (envoyproxy/gateway v1.5 internal/infrastructure/kubernetes).
    "gateway": Peer(
        "gateway", "envoy-gateway-system", {"app.kubernetes.io/name": "envoy", "gateway.envoyproxy.io/owning-gateway-name": "churnops"}
    ),
    "prometheus": Peer("prometheus", "monitoring", {"app.kubernetes.io/name": "prometheus"}),
    "dns": Peer("kube-dns", "kube-system", {"k8s-app": "kube-dns"}),
    "kfp": Peer("ml-pipeline", "kubeflow", {"app": "ml-pipeline"}),
    "step": Peer("pipeline step", "kubeflow", {"pipelines.kubeflow.org/v2_component": "true"}),
    "random": Peer("random pod", "default", {"app": "random"}),
}
# Addresses outside the cluster in the EKS scenario (VPC 10.0.0.0/16, database subnets 10.0.64.0/18).
EKS_ADDRESSES = {
    "api": Peer("EKS API server", ip="10.0.1.20"),
    "rds": Peer("RDS", ip="10.0.64.10"),
    "elasticache": Peer("ElastiCache", ip="10.0.64.20"),
    "s3": Peer("S3", ip="52.218.1.10"),
    "sts": Peer("STS", ip="54.239.29.25"),
    "jwks": Peer("Cognito JWKS", ip="3.248.10.10"),
    "vpc-pod": Peer("another VPC address", ip="10.0.3.3"),
}


def platform(scenario: str) -> dict[str, Peer]:
    peers = dict(OUTSIDE)
    peers["operator"] = Peer("operator", NAMESPACE, pod_labels(scenario, "StatefulSet", "-operator"))
    peers["predictor"] = predictor(scenario)
    peers["mlflow"] = Peer("mlflow", NAMESPACE, pod_labels(scenario, "Deployment", "-mlflow"))
    peers["bootstrap"] = Peer("bootstrap job", NAMESPACE, pod_labels(scenario, "Job", "-bootstrap-pipelines"))
    if scenario == "kind":
        peers["postgresql"] = Peer("postgresql", NAMESPACE, pod_labels(scenario, "StatefulSet", "-postgresql"))
        peers["redis"] = Peer("redis", NAMESPACE, pod_labels(scenario, "Deployment", "-redis"))
        peers["backup"] = Peer("backup job", NAMESPACE, pod_labels(scenario, "CronJob", "-backup"))
        peers["api"] = Peer("kind API server", ip="172.18.0.2")
    else:
        peers |= EKS_ADDRESSES
        peers["postgresql"], peers["redis"] = peers["rds"], peers["elasticache"]
        # the engine's pods, labelled as the Dask operator labels them (tests/charts/test_engine.py)
        (cluster,) = objects(scenario, "DaskCluster")
        peers["dask-scheduler"] = Peer("dask scheduler", NAMESPACE, dask_pod_labels(cluster, "scheduler"))
        peers["dask-worker"] = Peer("dask worker", NAMESPACE, dask_pod_labels(cluster, "worker"))
        peers["dask-operator"] = Peer("dask operator", "dask-operator", {"app.kubernetes.io/name": "dask-kubernetes-operator"})
    return peers


def needed(scenario: str) -> list[Flow]:
    """Every flow the platform needs in ``scenario``."""
    p = platform(scenario)
    api_port = 6443 if scenario == "kind" else 443
    flows = [
        Flow(p["gateway"], p["predictor"], 8080),
        Flow(p["prometheus"], p["predictor"], 8080),
        Flow(p["prometheus"], p["operator"], 8080),
        Flow(p["operator"], p["api"], api_port),
        Flow(p["operator"], p["prometheus"], 9090),
        Flow(p["operator"], p["mlflow"], 5000),
        Flow(p["operator"], p["kfp"], 8888),
        Flow(p["predictor"], p["redis"], 6379),
        Flow(p["predictor"], p["postgresql"], 5432),
        Flow(p["predictor"], p["mlflow"], 5000),
        Flow(p["mlflow"], p["postgresql"], 5432),
        Flow(p["step"], p["postgresql"], 5432),
        Flow(p["step"], p["redis"], 6379),
        Flow(p["step"], p["mlflow"], 5000),
        Flow(p["bootstrap"], p["mlflow"], 5000),
        Flow(p["bootstrap"], p["kfp"], 8888),
        Flow(p["bootstrap"], p["postgresql"], 5432),
        Flow(p["bootstrap"], p["redis"], 6379),
    ]
    flows += [Flow(p[s], p["dns"], 53, proto) for s in ("operator", "predictor", "mlflow", "bootstrap") for proto in ("UDP", "TCP")]
    if scenario == "kind":
        flows += [Flow(p["backup"], p["postgresql"], 5432), Flow(p["backup"], p["dns"], 53, "UDP")]
    else:
        flows += [
            Flow(p["predictor"], p["jwks"], 443),
            Flow(p["mlflow"], p["s3"], 443),
            Flow(p["mlflow"], p["sts"], 443),
            # the engine: pipeline steps submit tasks and gather results, scheduler and workers talk both ways,
            # workers exchange data, the Dask operator asks the scheduler for its wanted workers, a batch
            # job's workers write the prediction log
            Flow(p["step"], p["dask-scheduler"], 8786),
            Flow(p["step"], p["dask-worker"], 8789),
            Flow(p["dask-worker"], p["dask-scheduler"], 8786),
            Flow(p["dask-scheduler"], p["dask-worker"], 8789),
            Flow(p["dask-worker"], p["dask-worker"], 8789),
            Flow(p["dask-operator"], p["dask-scheduler"], 8786),
            Flow(p["dask-operator"], p["dask-scheduler"], 8787),
            Flow(p["dask-worker"], p["postgresql"], 5432),
            Flow(p["dask-worker"], p["dns"], 53, "UDP"),
        ]
    return flows


def forbidden(scenario: str) -> list[Flow]:
    """Flows that must stay denied."""
    p = platform(scenario)
    flows = [
        Flow(p["predictor"], p["operator"], 8080),
        Flow(p["random"], p["mlflow"], 5000),
        Flow(p["gateway"], p["mlflow"], 5000),  # MLflow stays internal in both scenarios
        Flow(p["predictor"], p["api"], 443),
    ]
    if scenario == "kind":
        flows += [Flow(p["random"], p["postgresql"], 5432), Flow(p["random"], p["redis"], 6379), Flow(p["predictor"], p["backup"], 5432)]
    else:
        flows += [Flow(p["mlflow"], p["vpc-pod"], 443), Flow(p["predictor"], p["vpc-pod"], 443), Flow(p["operator"], p["s3"], 443)]
        flows += [
            Flow(p["random"], p["dask-scheduler"], 8786),
            Flow(p["predictor"], p["dask-worker"], 8789),
            Flow(p["dask-worker"], p["s3"], 443),
        ]
    return flows


def table(policies: Sequence[Mapping[str, Any]], flows: Sequence[Flow]) -> str:
    rows = [f"{'flow':70} egress  ingress"]
    for f in flows:
        out, into = verdict(policies, f)
        rows.append(f"{f!s:70} {'allow' if out else 'DENY':7} {'allow' if into else 'DENY'}")
    return "\n".join(rows)


FLOW_SCENARIOS = ["kind", "eks"]


@pytest.mark.parametrize("scenario", FLOW_SCENARIOS)
def test_every_needed_flow_is_allowed(scenario: str) -> None:
    assert set(FLOW_SCENARIOS) <= set(SCENARIOS)
    policies = objects(scenario, "NetworkPolicy")
    assert policies
    flows = needed(scenario)
    blocked = [f for f in flows if not all(verdict(policies, f))]
    assert not blocked, "\n" + table(policies, flows)


@pytest.mark.parametrize("scenario", FLOW_SCENARIOS)
def test_flows_the_platform_never_needs_are_denied(scenario: str) -> None:
    policies = objects(scenario, "NetworkPolicy")
    flows = forbidden(scenario)
    open_ = [f for f in flows if all(verdict(policies, f))]
    assert not open_, "\n" + table(policies, flows)


def test_every_rendered_pod_is_in_the_simulation() -> None:
    """A new workload needs its flows listed here: every pod template of the chart is one of the peers."""
    for scenario in FLOW_SCENARIOS:
        modelled = [dict(p.labels) for p in platform(scenario).values() if p.namespace == NAMESPACE]
        for obj in rendered(scenario):
            if obj["kind"] in {"Deployment", "StatefulSet", "Job", "CronJob"}:
                spec = obj["spec"]["jobTemplate"]["spec"] if obj["kind"] == "CronJob" else obj["spec"]
                assert spec["template"]["metadata"]["labels"] in modelled, (scenario, obj["metadata"]["name"])


# --- The evaluator itself ------------------------------------------------------------------------

A = Peer("a", "ns1", {"app": "a"})
B = Peer("b", "ns2", {"app": "b"})


def policy(namespace: str, selector: Mapping[str, Any], **spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": namespace}, "spec": {"podSelector": selector, **spec}}


def test_unselected_pods_are_open_and_default_deny_closes_them() -> None:
    assert verdict([], Flow(A, B, 80)) == (True, True)
    deny = [policy("ns1", {}, policyTypes=["Ingress", "Egress"]), policy("ns2", {}, policyTypes=["Ingress"])]
    assert verdict(deny, Flow(A, B, 80)) == (False, False)
    assert verdict([policy("ns1", {}, ingress=[])], Flow(A, B, 80)) == (True, True)  # policyTypes default to Ingress only


def test_namespace_and_pod_selectors_and_ports() -> None:
    allow_b = policy(
        "ns1",
        {"matchLabels": {"app": "a"}},
        policyTypes=["Egress"],
        egress=[
            {
                "to": [
                    {
                        "namespaceSelector": {
                            "matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["ns2"]}]
                        },
                        "podSelector": {"matchLabels": {"app": "b"}},
                    }
                ],
                "ports": [{"protocol": "TCP", "port": 80, "endPort": 90}],
            }
        ],
    )
    assert verdict([allow_b], Flow(A, B, 85))[0]
    assert not verdict([allow_b], Flow(A, B, 91))[0]
    assert not verdict([allow_b], Flow(A, B, 85, "UDP"))[0]
    assert not verdict([allow_b], Flow(A, Peer("c", "ns2", {"app": "c"}), 85))[0]
    same_ns_only = policy("ns1", {}, policyTypes=["Egress"], egress=[{"to": [{"podSelector": {}}]}])
    assert not verdict([same_ns_only], Flow(A, B, 80))[0]
    assert verdict([same_ns_only], Flow(A, Peer("a2", "ns1"), 80))[0]


def test_ip_blocks_with_exceptions() -> None:
    egress = [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/16"]}}], "ports": [{"port": 443}]}]
    p = policy("ns1", {}, policyTypes=["Egress"], egress=egress)
    assert verdict([p], Flow(A, Peer("s3", ip="52.218.1.10"), 443))[0]
    assert not verdict([p], Flow(A, Peer("vpc", ip="10.0.3.3"), 443))[0]
    assert not verdict([p], Flow(A, B, 443))[0]  # pods are reached by selectors, not by ipBlock
