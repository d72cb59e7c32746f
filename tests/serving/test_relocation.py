"""The embedded data directory is relocatable: a copy serves the same champion after the original is deleted."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from churnops.layout import Layout
from churnops.training import registry
from churnops.training.ensemble import ChurnEnsemble
from tests.support import groups
from tests.support.serving import register, start_server

pytestmark = groups.SERVING_MODELS


def _score(layout: Layout, customer: int, tmp: Path) -> dict[str, object]:
    server = start_server(layout, None, ["champion"], tmp, ["--fsync", "always"])
    try:
        with server.client() as client:
            r = client.post("/v1/models/champion:predict", json={"instances": [{"customer_id": customer}]})
        assert r.status_code == 200, r.text
        prediction: dict[str, object] = r.json()["predictions"][0]
        return prediction
    finally:
        server.stop()


@pytest.mark.timeout(600)
def test_a_copied_data_directory_serves_the_same_champion_with_the_original_deleted(
    served_layout: Layout, xgb_single: ChurnEnsemble, churn_table: pd.DataFrame, customers: list[int], tmp_path: Path
) -> None:
    original = Layout(tmp_path / "original" / "data")
    shutil.copytree(served_layout.data_dir, original.data_dir)
    reg = registry.RegistryConfig.embedded(original.data_dir)
    version = register(reg, xgb_single, churn_table[list(xgb_single.feature_names)].head(5), 0.3)
    registry.promote(reg, version, "relocation test")
    before = _score(original, customers[0], tmp_path / "before")

    moved = Layout(tmp_path / "elsewhere" / "data")
    shutil.copytree(original.data_dir, moved.data_dir)
    shutil.rmtree(tmp_path / "original")
    after = _score(moved, customers[0], tmp_path / "after")

    assert after["model_version"] == before["model_version"] == version
    assert after["churn_probability"] == before["churn_probability"]
    assert after["reasons"] == before["reasons"]
    db = sqlite3.connect(moved.mlflow / "mlflow.db")
    locations = [r[0] for r in db.execute("SELECT artifact_location FROM experiments WHERE name = 'churn-training'")]
    db.close()
    assert locations == [(moved.mlflow / "artifacts").resolve().as_uri()]


def test_relocate_rewrites_only_the_old_root(tmp_path: Path) -> None:
    db, marker = tmp_path / "mlflow.db", tmp_path / "store.json"
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE runs (artifact_uri VARCHAR(200), name TEXT, n INTEGER)")
        conn.executemany(
            "INSERT INTO runs VALUES (?, ?, ?)",
            [("file:///old/data/mlflow/artifacts/1/abc", "file:///old/data/mlflow/artifacts", 1), ("s3://bucket/x", "file:///other", 2)],
        )
    conn.close()
    assert registry.relocate(db, marker, "file:///old/data/mlflow/artifacts") == 0  # first open: the marker is written
    assert registry.relocate(db, marker, "file:///new/d/mlflow/artifacts") == 2
    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT artifact_uri, name FROM runs ORDER BY n").fetchall()
    conn.close()
    assert rows == [("file:///new/d/mlflow/artifacts/1/abc", "file:///new/d/mlflow/artifacts"), ("s3://bucket/x", "file:///other")]
    assert registry.relocate(db, marker, "file:///new/d/mlflow/artifacts") == 0  # idempotent
