"""Fixtures for the operator tests: a cluster of kmock, fakes and the session's real MLflow server."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.operators.harness import Cluster, cluster


@pytest.fixture
def k8s(mlflow_server: str, tmp_path: Path) -> Iterator[Cluster]:
    """A fresh Kubernetes API, Prometheus and KFP, and the operator (not started) pointed at them."""
    with cluster(mlflow_server, tmp_path) as c:
        yield c
        c.assert_rbac_clean()


@pytest.fixture
def model() -> str:
    """A registered-model name of the test's own on the shared MLflow server."""
    return f"churn-{uuid.uuid4().hex[:8]}"
