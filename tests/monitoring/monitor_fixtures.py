"""Fixtures for the monitoring commands: a registry whose versions carry reference profiles, traffic, a prediction log, a predictor.

Test modules import the fixtures they use (``*_fixture``, registered under the
name without the suffix), as ``predlog_fixtures`` does, so the monitoring
conftest stays shared without edits.

- ``monitored``: a SQLite registry with a champion (XGBoost) and a challenger
  (LightGBM), each with the reference profile of its training table logged on
  its run (what training does), thresholds 0.3;
- ``traffic``: full feature records of other customers than the training
  table's, as generated (``normal``) and under the generator's covariate drift
  preset from the first day on (``drifted``: usage down a quarter, tickets up
  60 %, prices up 12 %);
- ``predictor``: a real ``churnops serve`` of the champion, its prediction log
  in its own directory, flushing every 0.2 s.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry

from churnops.data.config import GeneratorConfig, with_drift
from churnops.data.generator import generate_blocks
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS
from churnops.features.engine import compute_block_features
from churnops.layout import Layout
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.records import FeatureLayout, LogStore, PredictionBatch
from churnops.monitoring.predlog.writer import PredictionLog
from churnops.monitoring.profile import build_profile, log_profile
from churnops.serving.scoring import risk_bands
from churnops.training import registry
from churnops.training.ensemble import ChurnEnsemble
from tests.support.serving import Server, fit_ensemble, register, start_server

THRESHOLD = 0.3
TRAFFIC = GeneratorConfig(n_customers=3_000, block_size=3_000, seed=22)  # the training table's process, other customers


@dataclass(frozen=True)
class Monitored:
    cfg: registry.RegistryConfig
    champion: str
    challenger: str
    models: dict[str, ChurnEnsemble]

    @property
    def model_name(self) -> str:
        return self.cfg.model_name


def profile_version(cfg: registry.RegistryConfig, version: str, model: ChurnEnsemble, table: pd.DataFrame) -> None:
    """Log the reference profile of ``model`` on its training table with the version's run, as training does."""
    features = list(model.feature_names)
    categorical = [f for f in features if f in set(model.categorical)]
    numeric = [f for f in features if f not in set(categorical)]
    profile = build_profile(table[features], model.predict_proba(table[features]), numeric, categorical)
    run_id = registry.version_info(cfg, version)["run_id"]
    log_profile(profile, run_id, cfg.tracking_uri)


@pytest.fixture(name="monitored", scope="session")
def monitored_fixture(tmp_path_factory: pytest.TempPathFactory, churn_table: pd.DataFrame) -> Monitored:
    root = tmp_path_factory.mktemp("monitored-registry")
    cfg = registry.RegistryConfig(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_location=(root / "artifacts").as_uri())
    champion_model = fit_ensemble(churn_table, ["xgboost"], "single")
    challenger_model = fit_ensemble(churn_table, ["lightgbm"], "single")
    example = churn_table[list(champion_model.feature_names)].head(5)
    champion = register(cfg, champion_model, example, THRESHOLD)
    registry.promote(cfg, champion, "monitoring tests")
    challenger = register(cfg, challenger_model, example, THRESHOLD)
    for version, model in ((champion, champion_model), (challenger, challenger_model)):
        profile_version(cfg, version, model, churn_table)
    return Monitored(cfg, champion, challenger, {champion: champion_model, challenger: challenger_model})


def feature_table(cfg: GeneratorConfig) -> pd.DataFrame:
    """Every catalog feature at the labelled snapshots, with the label (what the training table holds)."""
    block = next(generate_blocks(cfg))
    feats = compute_block_features(cfg.calendar, block.tables, cfg.calendar.labelled_snapshot_days())
    frame = block.labels[[ENTITY, TIMESTAMP, "churned_30d"]]
    for domain in DOMAINS:
        frame = frame.merge(feats[domain], on=[ENTITY, TIMESTAMP], validate="one_to_one")
    return frame


@dataclass(frozen=True)
class Traffic:
    normal: pd.DataFrame
    drifted: pd.DataFrame


@pytest.fixture(name="traffic", scope="session")
def traffic_fixture() -> Traffic:
    drifted = with_drift(TRAFFIC, "covariate", start_day=0)
    return Traffic(feature_table(TRAFFIC).sample(frac=1.0, random_state=3).reset_index(drop=True), feature_table(drifted))


# --- writing the prediction log like the predictor does -----------------------------------------------------


def write_predictions(
    target: Path | LogStore,
    model_name: str,
    version: str,
    model: ChurnEnsemble,
    rows: pd.DataFrame,
    at: float,
    *,
    scores: Sequence[float] | None = None,
    prefix: str = "t",
) -> np.ndarray:
    """Score ``rows`` with ``model`` and write them to a prediction log (Parquet segments under a directory, or a store) through the real writer."""
    features = list(model.feature_names)
    p = model.predict_proba(rows[features]) if scores is None else np.asarray(scores, dtype=float)
    layout = FeatureLayout(tuple(features), frozenset(model.categorical))
    batch = PredictionBatch(
        model_name,
        version,
        layout,
        rows[ENTITY].astype("int64").tolist(),
        p,
        risk_bands(p, THRESHOLD),
        [f"{prefix}-{i}" for i in range(len(rows))],
        rows[features].reset_index(drop=True),
        at,
    )
    store = ParquetStore(target) if isinstance(target, Path) else target
    plog = PredictionLog(store, CollectorRegistry(), flush_interval_s=0.1)
    try:
        assert plog.record_many(batch, timeout_s=30) == len(rows)
        plog.flush()
    finally:
        plog.close()
    return p


# --- a real predictor -------------------------------------------------------------------------------------


@pytest.fixture(name="served_data", scope="session")
def served_data_fixture(small_layout: Layout, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The small data set published to the embedded Feast store (the predictor opens it at start)."""
    layout = Layout(tmp_path_factory.mktemp("monitor-served") / "data")
    shutil.copytree(small_layout.data_dir, layout.data_dir)
    foundation.publish(layout, "embedded", dict(os.environ))
    return layout


@dataclass(frozen=True)
class Predictor:
    server: Server
    log_dir: Path
    model_name: str
    version: str
    features: tuple[str, ...]

    @property
    def host_port(self) -> str:
        return self.server.url.removeprefix("http://")


@pytest.fixture(name="predictor", scope="session")
def predictor_fixture(served_data: Layout, monitored: Monitored, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Predictor]:
    tmp = tmp_path_factory.mktemp("monitor-predictor")
    log_dir = tmp / "predictions"
    extra = ["--prediction-log", str(log_dir), "--prediction-log-flush-s", "0.2", "--rate", "1000", "--burst", "400"]
    srv = start_server(served_data, monitored.cfg.tracking_uri, ["champion"], tmp, extra)
    features = tuple(monitored.models[monitored.champion].feature_names)
    yield Predictor(srv, log_dir, monitored.model_name, monitored.champion, features)
    srv.stop()


def _json_value(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA:
        return None
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def instances(rows: pd.DataFrame, features: Sequence[str], ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """V1 instances with full feature records (null for a missing value), with customer ids."""
    cids = rows[ENTITY].astype("int64").tolist() if ids is None else list(ids)
    records = rows[list(features)].astype(object).to_dict(orient="records")
    return [
        {"customer_id": int(cid), "features": {k: _json_value(v) for k, v in rec.items()}} for cid, rec in zip(cids, records, strict=True)
    ]


def send(predictor: Predictor, rows: pd.DataFrame, ids: Sequence[int] | None = None, per_request: int = 200) -> list[dict[str, Any]]:
    """Score ``rows`` through the predictor's V1 API (no reasons: drift needs only the scores); returns the predictions."""
    out: list[dict[str, Any]] = []
    with predictor.server.client() as client:
        for start in range(0, len(rows), per_request):
            part = rows.iloc[start : start + per_request]
            part_ids = None if ids is None else ids[start : start + per_request]
            body = {"instances": instances(part, predictor.features, part_ids), "parameters": {"top_k": 0}}
            r = client.post("/v1/models/champion:predict", json=body)
            assert r.status_code == 200, r.text[:500]
            out += r.json()["predictions"]
    return out
