"""Fixtures for serving: small fitted ensembles, a registry holding them, and a live predictor process."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.training import registry
from churnops.training.ensemble import ChurnEnsemble
from tests.support.serving import Registered, Server, fit_ensemble, register, start_server


@pytest.fixture(scope="session")
def xgb_single(churn_table: pd.DataFrame) -> ChurnEnsemble:
    return fit_ensemble(churn_table, ["xgboost"], "single")


@pytest.fixture(scope="session")
def tree_stack(churn_table: pd.DataFrame) -> ChurnEnsemble:
    return fit_ensemble(churn_table, ["lightgbm", "xgboost", "logistic_regression"], "stack")


@pytest.fixture(scope="session")
def registered(
    tmp_path_factory: pytest.TempPathFactory, churn_table: pd.DataFrame, xgb_single: ChurnEnsemble, tree_stack: ChurnEnsemble
) -> Registered:
    root = tmp_path_factory.mktemp("registry")
    cfg = registry.RegistryConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri())
    example = churn_table[list(xgb_single.feature_names)].head(5)
    champion = register(cfg, xgb_single, example, 0.3)
    registry.promote(cfg, champion, "test champion")
    corrupted = register(cfg, xgb_single, example, 0.3)
    challenger = register(cfg, tree_stack, example, 0.3)  # registered last: it holds the challenger alias
    uri = MlflowClient(cfg.tracking_uri, registry_uri=cfg.tracking_uri).get_model_version_download_uri(cfg.model_name, corrupted)
    artifact = Path(uri.removeprefix("file://")) / "artifacts" / registry.MODEL_FILE
    with artifact.open("ab") as f:
        f.write(b"tampered")
    return Registered(cfg, champion, challenger, corrupted)


@pytest.fixture(scope="session")
def served_layout(small_layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The small data set published to the embedded Feast store (SQLite online store)."""
    layout = Layout(tmp_path_factory.mktemp("served") / "data")
    shutil.copytree(small_layout.data_dir, layout.data_dir)
    foundation.publish(layout, "embedded", dict(os.environ))
    return layout


@pytest.fixture(scope="session")
def customers(served_layout: Layout) -> list[int]:
    return foundation.active_customers(served_layout, 50)


@pytest.fixture(scope="module")
def server(served_layout: Layout, registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """champion, challenger and the corrupted version, served together; low limits so tests can reach them."""
    tmp = tmp_path_factory.mktemp("server")
    srv = start_server(
        served_layout,
        registered.cfg.tracking_uri,
        ["champion", "challenger", registered.corrupted],
        tmp,
        ["--rate", "200", "--burst", "100", "--max-body-bytes", "200000"],
    )
    yield srv
    srv.stop()
