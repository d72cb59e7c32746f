"""Fixtures for the embedded rollout: a published feature store, three registered versions, and a predictor serving the route.

Versions (registered in this order, so their numbers are fixed):
1. XGBoost, the champion;
2. LightGBM, a healthy challenger: scores distributed like the champion's;
3. logistic regression fitted on permuted labels: it learned nothing, so it
   gives every customer about the base rate, a score histogram unlike the
   champion's (the canary analysis must reject it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.metrics import roc_auc_score

from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.rollout.runner import Runner, RunnerConfig
from churnops.rollout.store import DeploymentStore
from churnops.training import registry
from churnops.training.ensemble import ChurnEnsemble
from tests.support.serving import Server, fit_ensemble, start_server

ROUTE = "churn"
STABLE, HEALTHY, BAD = "1", "2", "3"


@pytest.fixture(scope="session")
def rollout_models(churn_table: pd.DataFrame) -> dict[str, ChurnEnsemble]:
    permuted = churn_table.assign(churned_30d=np.random.default_rng(5).permutation(churn_table["churned_30d"].to_numpy()))
    return {
        STABLE: fit_ensemble(churn_table, ["xgboost"], "single"),
        HEALTHY: fit_ensemble(churn_table, ["lightgbm"], "single"),
        BAD: fit_ensemble(permuted, ["logistic_regression"], "single"),
    }


@pytest.fixture(scope="session")
def rollout_data(small_layout: Layout, tmp_path_factory: pytest.TempPathFactory, churn_table: pd.DataFrame, rollout_models: Any) -> Layout:
    """The small data set in the embedded Feast store, with the three versions registered and version 1 the champion."""
    layout = Layout(tmp_path_factory.mktemp("rollout") / "data")
    shutil.copytree(small_layout.data_dir, layout.data_dir)
    foundation.publish(layout, "embedded", dict(os.environ))
    cfg = registry.RegistryConfig.embedded(layout.data_dir)
    for version, model in rollout_models.items():
        example = churn_table[list(model.feature_names)].head(5)
        auc = float(roc_auc_score(churn_table["churned_30d"], model.predict_proba(churn_table[list(model.feature_names)])))
        got = registry.log_and_register(cfg, model, example, {"threshold": 0.3}, {"roc_auc": auc}, {}, {}).version
        assert got == version
    registry.promote(cfg, STABLE, "first champion")
    return layout


@pytest.fixture(scope="session")
def route_customers(rollout_data: Layout) -> list[int]:
    return foundation.active_customers(rollout_data, 300)


@dataclass
class Setup:
    """A private copy of the data directory and a predictor serving the route ``churn`` from it."""

    data_dir: Path
    server: Server
    customers: list[int]
    rng: np.random.Generator

    @property
    def registry(self) -> registry.RegistryConfig:
        return registry.RegistryConfig.embedded(self.data_dir)

    @property
    def store(self) -> DeploymentStore:
        return DeploymentStore(self.data_dir, ROUTE)

    def runner(self, clock: Any = None) -> Runner:
        cfg = RunnerConfig(self.data_dir, ROUTE, predictor_url=self.server.url)
        return Runner.build(cfg, clock=clock) if clock is not None else Runner.build(cfg)

    def predict(self, client: httpx.Client, customers: list[int], top_k: int = 0) -> list[dict[str, Any]]:
        body = {"instances": [{"customer_id": c} for c in customers], "parameters": {"top_k": top_k}}
        r = client.post(f"/v1/models/{ROUTE}:predict", json=body)
        assert r.status_code == 200, r.text
        predictions: list[dict[str, Any]] = r.json()["predictions"]
        return predictions

    def serves(self, version: str) -> bool:
        """Whether the route answers with ``version`` now (a 503 while it loads is a no)."""
        with self.server.client() as c:
            r = c.post(f"/v1/models/{ROUTE}:predict", json={"instances": [{"customer_id": self.customers[0]}]})
        return r.status_code == 200 and r.json()["predictions"][0]["model_version"] == version

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The predictor's samples of one metric now, keyed by their labels."""
        text = httpx.get(f"{self.server.url}/metrics", timeout=30).text
        return {
            tuple(sorted(s.labels.items())): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == name
        }

    def loaded(self) -> set[str]:
        """Versions the predictor has loaded (churnops_model_info is 1)."""
        return {dict(labels)["version"] for labels, value in self.samples("churnops_model_info").items() if value == 1}

    def send(self, requests: int, batch: int = 10) -> Counter[str]:
        """``requests`` requests of ``batch`` random customers each; how many each version answered."""
        answered: Counter[str] = Counter()
        with self.server.client() as c:
            for _ in range(requests):
                chosen = [int(x) for x in self.rng.choice(self.customers, size=batch, replace=False)]
                versions = {p["model_version"] for p in self.predict(c, chosen)}
                assert len(versions) == 1  # one request, one version
                answered[versions.pop()] += 1
        return answered


@pytest.fixture
def setup(rollout_data: Layout, route_customers: list[int], tmp_path: Path) -> Iterator[Setup]:
    data_dir = tmp_path / "data"
    shutil.copytree(rollout_data.data_dir, data_dir)
    registry.RegistryConfig.embedded(data_dir)  # moves the copied registry's artifact paths here, before two processes open it
    server = start_server(Layout(data_dir), None, [], tmp_path / "server", ["--route", ROUTE, "--route-seed", "11"])
    yield Setup(data_dir, server, route_customers, np.random.default_rng(3))
    server.stop()


# --- helpers for the tests that drive the command line ---------------------------------------------------

CHURNOPS = str(Path(sys.executable).parent / "churnops")
OPTIONS = ["--steps", "5,25,50,100", "--min-samples", "20", "--failure-threshold", "2", "--retraining", "off"]


def cli(setup: Setup, *args: str, code: int = 0) -> str:
    done = subprocess.run(
        [CHURNOPS, "--data-dir", str(setup.data_dir), "rollout", *args], check=False, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == code, f"exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return done.stdout + done.stderr


def wait_for(condition: Any, what: str, seconds: float = 300.0) -> None:
    """Poll until ``condition()``; the deadline is generous and only bounds a hung test."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.2)


def status(setup: Setup) -> dict[str, Any]:
    doc: dict[str, Any] = setup.store.load().status
    return doc


class Traffic:
    """Requests through the route from a thread, until stopped."""

    def __init__(self, setup: Setup) -> None:
        self.setup = setup
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._send)

    def _send(self) -> None:
        while not self.stop.is_set():
            try:
                self.setup.send(5)
            except AssertionError as e:  # any failed answer is a finding
                self.errors.append(str(e))

    def __enter__(self) -> Traffic:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()


def start_runner(setup: Setup, log: Path, *extra: str, source: list[str] | None = None) -> subprocess.Popen[bytes]:
    """`churnops rollout run` reading the predictor's metrics (or ``source``, e.g. a Prometheus)."""
    metrics = source or ["--predictor-url", setup.server.url]
    cmd = [CHURNOPS, "--data-dir", str(setup.data_dir), "rollout", "run", *metrics, "--tick", "0.2s", *extra]
    with log.open("ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
