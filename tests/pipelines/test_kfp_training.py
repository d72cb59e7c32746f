"""The KFP training pipeline: compiled spec matches its golden file, and it runs end to end with kfp.local."""

from __future__ import annotations

from pathlib import Path

import mlflow
import pytest
from kfp import local

from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.training import registry
from churnops_pipelines.training import churn_training, compile_pipeline

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "churn_training.yaml"


def test_compiled_pipeline_matches_golden_file(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(str(out))
    assert out.read_text() == GOLDEN.read_text(), "pipeline changed: run `make pipelines` and review the diff"


def test_every_step_is_a_task() -> None:
    text = GOLDEN.read_text()
    for step in (
        "load-training-data",
        "validate-training-data",
        "split-data",
        "select-features",
        "automl-search",
        "build-ensemble",
        "evaluate-model",
        "quality-gates",
        "register-model",
        "write-model-card",
    ):
        assert f"comp-{step}:" in text, step
    assert "pip install" not in text  # components run in the project image; nothing is installed at run time


@pytest.mark.timeout(900)
def test_pipeline_runs_locally_and_registers_a_challenger(layout_copy: Layout) -> None:
    foundation.publish(layout_copy, "embedded", {})
    reg = registry.RegistryConfig.embedded(layout_copy.data_dir)
    outputs = layout_copy.data_dir / "kfp"
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(outputs))
    churn_training(
        data_dir=str(layout_copy.data_dir),
        store_mode="embedded",
        tracking_uri=reg.tracking_uri,
        n_trials=6,
        timeout_s=0.0,
        n_folds=2,
        min_auc=0.7,
    )
    assert registry.alias_version(reg, registry.CHALLENGER) == "1"
    version = mlflow.tracking.MlflowClient(reg.tracking_uri).get_model_version(reg.model_name, "1")
    assert version.run_id is not None
    run = mlflow.tracking.MlflowClient(reg.tracking_uri).get_run(version.run_id)
    assert run.data.tags["feature_service"] == "churn_v1"
    assert len(run.data.tags["dataset_sha256"]) == 64
    assert run.data.metrics["roc_auc"] > 0.7
    cards = list(outputs.rglob("card"))
    assert cards and "data:image/png;base64," in cards[0].read_text()
    card_text = next(outputs.rglob("card_markdown")).read_text()
    assert "# Model card: churn-classifier v1" in card_text
    assert "holdout ROC-AUC" in card_text and ">= 0.7000" in card_text  # the gates as applied in this run
