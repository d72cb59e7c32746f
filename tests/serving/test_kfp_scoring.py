"""The KFP batch scoring pipeline: golden spec, and a local run against a registered model."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from kfp import local

from churnops.cli import main
from churnops_pipelines.scoring import churn_batch_scoring, compile_pipeline
from tests.support import groups
from tests.support.serving import Registered

pytestmark = groups.SERVING_MODELS

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "churn_batch_scoring.yaml"


def test_compiled_pipeline_matches_golden_file(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compile_pipeline(str(out))
    assert out.read_text() == GOLDEN.read_text(), "pipeline changed: run `make pipelines` and review the diff"
    assert "comp-batch-score:" in out.read_text() and "comp-summarize-scores:" in out.read_text()
    assert "pip install" not in out.read_text()


@pytest.mark.timeout(600)
def test_pipeline_scores_a_table_locally(registered: Registered, churn_table: pd.DataFrame, tmp_path: Path) -> None:
    src = tmp_path / "customers.parquet"
    churn_table.drop(columns=["churned_30d"]).head(1_500).to_parquet(src)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    churn_batch_scoring(input_path=str(src), tracking_uri=registered.cfg.tracking_uri, model_ref="champion", top_k=3, chunk_rows=400)
    scores = [p for p in (tmp_path / "kfp").rglob("scores") if p.is_file()]
    assert len(scores) == 1
    out = pd.read_parquet(scores[0])
    assert len(out) == 1_500 and {"churn_probability", "risk_band", "reason_3_feature"} <= set(out.columns)
    assert out["customer_id"].tolist() == churn_table["customer_id"].head(1_500).tolist()
    # the pipeline's scores are the CLI's scores for the same rows and model
    cli_out = tmp_path / "cli_scores.parquet"
    args = ["--data-dir", str(tmp_path / "data"), "score", str(src), "--out", str(cli_out), "--model", "champion", "--top-k", "3"]
    assert main([*args, "--tracking-uri", registered.cfg.tracking_uri]) == 0
    cli = pd.read_parquet(cli_out)
    pd.testing.assert_frame_equal(out.reset_index(drop=True), cli.reset_index(drop=True), check_exact=False, rtol=1e-9)
