"""kind-config.yaml: pinned node images and ports published on loopback only."""

from __future__ import annotations

import yaml

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
