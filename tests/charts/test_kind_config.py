"""kind-config.yaml: pinned node images, ports published on loopback only, and the ports published are the\nEnvoy Gateway proxy's and Grafana's nodePorts (manifests/addons)."""

from __future__ import annotations

from typing import Any

import yaml

from tests.charts.render import rendered
from tests.support.k8s_tools import ROOT


def test_kind_config() -> None:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    images = {n["image"] for n in config["nodes"]}
    assert len(images) == 1 and images.pop().startswith("kindest/node:v1.")
    assert sum(n["role"] == "worker" for n in config["nodes"]) >= 2  # the operator's replicas spread over nodes
    for node in config["nodes"]:
        for mapping in node.get("extraPortMappings", []):
            assert mapping["listenAddress"] == "127.0.0.1", mapping


ADDONS = ROOT / "manifests" / "addons"


def host_mapped_ports() -> set[int]:
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    return {m["containerPort"] for n in config["nodes"] for m in n.get("extraPortMappings", [])}


def envoy_gateway_objects() -> dict[str, dict[str, Any]]:
    return {o["kind"]: o for o in yaml.safe_load_all((ADDONS / "envoy-gateway-kind.yaml").read_text()) if o}


def test_gateway_node_ports_are_the_ones_kind_publishes() -> None:
    """The EnvoyProxy fixes the proxy Service's nodePorts; kind-config.yaml publishes exactly those (and Grafana's).

    envoyproxy/gateway v1.8.3 internal/infrastructure/kubernetes/proxy/resource_provider.go (Service) names a
    listener's port irListenerPortName "<protocol>-<port>" (internal/gatewayapi/helpers.go) and
    servicePortToContainerPort (internal/gatewayapi/listener.go) moves ports below 1024 up by 10000; the
    patch is a strategic merge on Service ports (merge key: port).
    """
    service = envoy_gateway_objects()["EnvoyProxy"]["spec"]["provider"]["kubernetes"]["envoyService"]
    assert service["type"] == "NodePort"
    ports = service["patch"]["value"]["spec"]["ports"]
    node_ports = {p["nodePort"] for p in ports}
    for p in ports:
        assert p["name"] == f"{'https' if p['port'] == 443 else 'http'}-{p['port']}", p
        assert p["targetPort"] == p["port"] + 10000, p
    grafana = yaml.safe_load((ADDONS / "kube-prometheus-stack-values.yaml").read_text())["grafana"]["service"]
    assert grafana["type"] == "NodePort"
    assert host_mapped_ports() == node_ports | {grafana["nodePort"]}


def test_gateway_class_eg_uses_the_envoy_proxy() -> None:
    objects = envoy_gateway_objects()
    proxy, gateway_class = objects["EnvoyProxy"], objects["GatewayClass"]
    assert gateway_class["metadata"]["name"] == "eg"
    assert gateway_class["spec"]["controllerName"] == "gateway.envoyproxy.io/gatewayclass-controller"
    ref = gateway_class["spec"]["parametersRef"]
    assert (ref["group"], ref["kind"]) == ("gateway.envoyproxy.io", "EnvoyProxy")
    assert (ref["name"], ref["namespace"]) == (proxy["metadata"]["name"], proxy["metadata"]["namespace"])
    assert proxy["metadata"]["namespace"] == "envoy-gateway-system"  # where the Makefile installs Envoy Gateway


def test_the_kind_gateway_is_served_on_the_published_ports() -> None:
    """The chart's Gateway on kind uses class eg, and each of its listener ports has a published nodePort."""
    gateways = [o for o in rendered("kind") if o["kind"] == "Gateway"]
    assert gateways
    patched = {
        p["port"]
        for p in envoy_gateway_objects()["EnvoyProxy"]["spec"]["provider"]["kubernetes"]["envoyService"]["patch"]["value"]["spec"]["ports"]
    }
    for gateway in gateways:
        assert gateway["spec"]["gatewayClassName"] == "eg"
        assert {listener["port"] for listener in gateway["spec"]["listeners"]} <= patched


def test_every_published_gateway_port_has_a_listener() -> None:
    """kind-config.yaml publishes 30080 (HTTP) and 30443 (HTTPS): the kind Gateway listens on both 80 and 443,
    or a published port would lead to a Service port no Envoy listener serves."""
    patched = {
        (p["port"], p["name"].split("-")[0].upper())
        for p in envoy_gateway_objects()["EnvoyProxy"]["spec"]["provider"]["kubernetes"]["envoyService"]["patch"]["value"]["spec"]["ports"]
    }
    [gateway] = [o for o in rendered("kind") if o["kind"] == "Gateway"]
    assert {(listener["port"], listener["protocol"]) for listener in gateway["spec"]["listeners"]} == patched


def test_kind_up_swaps_in_the_node_port_gateway_class() -> None:
    """`make cluster-addons` applies the plain GatewayClass eg (LoadBalancer proxies, e.g. EKS); `make kind-up`
    passes the kind one, the same class name and controller with the NodePort EnvoyProxy."""
    plain = yaml.safe_load((ADDONS / "envoy-gateway.yaml").read_text())
    kind = envoy_gateway_objects()["GatewayClass"]
    assert plain["kind"] == "GatewayClass" and "parametersRef" not in plain["spec"]
    assert (plain["metadata"]["name"], plain["spec"]["controllerName"]) == (kind["metadata"]["name"], kind["spec"]["controllerName"])
    makefile = (ROOT / "Makefile").read_text()
    assert "GATEWAY_CLASS        ?= $(ADDONS)/envoy-gateway.yaml" in makefile
    kind_up = makefile.split("\nkind-up:", 1)[1].split("\n\n", 1)[0]
    assert "$(MAKE) cluster-addons GATEWAY_CLASS=$(ADDONS)/envoy-gateway-kind.yaml" in kind_up


def nodes_publishing_host_ports() -> tuple[int, int]:
    """(nodes with extraPortMappings, all nodes) of kind-config.yaml."""
    config = yaml.safe_load((ROOT / "kind-config.yaml").read_text())
    return sum(bool(n.get("extraPortMappings")) for n in config["nodes"]), len(config["nodes"])


def test_gateway_node_ports_reach_a_proxy_on_any_node() -> None:
    """kind publishes host ports on the nodes that carry extraPortMappings (here the control plane only), while
    the Envoy proxy pod runs wherever it is scheduled (a worker). With externalTrafficPolicy Local a node
    drops NodePort traffic for a Service with no local endpoint; Cluster forwards it to the proxy's node.

    envoyproxy/gateway v1.8.3 api/v1alpha1/shared_types.go (KubernetesServiceSpec.ExternalTrafficPolicy,
    +kubebuilder:default "Local") and api/v1alpha1/kubernetes_helpers.go
    (DefaultKubernetesServiceExternalTrafficPolicy returns Local): Local unless the EnvoyProxy says otherwise."""
    publishing, total = nodes_publishing_host_ports()
    assert publishing < total, "every node publishes the ports: then Local would do"
    service = envoy_gateway_objects()["EnvoyProxy"]["spec"]["provider"]["kubernetes"]["envoyService"]
    assert service.get("externalTrafficPolicy", "Local") == "Cluster"
    patched = service.get("patch", {}).get("value", {}).get("spec", {})
    assert patched.get("externalTrafficPolicy", "Cluster") == "Cluster", "the patch would set it back"
