"""The KFP batch scoring pipeline on the engine: golden spec with the shared claim and the scheduler's address,
and a local run whose step finds a real Dask scheduler in DASK_SCHEDULER_ADDRESS."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from kfp import local

from churnops.cli import main
from churnops.parallel.choice import ADDRESS_ENV
from churnops.parallel.runner import DaskEngine
from churnops_pipelines.scoring import SHARED_MOUNT, churn_batch_scoring_engine, compile_engine_pipeline
from tests.support import groups
from tests.support.serving import Registered

pytestmark = groups.SERVING_MODELS

GOLDEN = Path(__file__).resolve().parents[2] / "pipelines" / "compiled" / "churn_batch_scoring_engine.yaml"


def test_compiled_pipeline_matches_golden_file(tmp_path: Path) -> None:
    out = tmp_path / "pipeline.yaml"
    compile_engine_pipeline(str(out))
    assert out.read_text() == GOLDEN.read_text(), "pipeline changed: run `make pipelines` and review the diff"
    assert "pip install" not in out.read_text()


def test_both_steps_mount_the_shared_claim_and_the_scorer_gets_the_scheduler() -> None:
    docs = list(yaml.safe_load_all(GOLDEN.read_text()))
    executors = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for name in ("exec-batch-score-partitions", "exec-summarize-partitions"):
        (mount,) = executors[name]["pvcMount"]
        assert mount["mountPath"] == SHARED_MOUNT and mount["pvcNameParameter"]["componentInputParameter"] == "shared_claim"
    optional = [c for c in executors["exec-batch-score-partitions"]["configMapAsEnv"] if c.get("optional")]
    assert any(k["envVar"] == ADDRESS_ENV for c in optional for k in c["keyToEnv"])  # from churnops-pipeline-env


@pytest.fixture
def scheduler(dask_engine: DaskEngine, monkeypatch: pytest.MonkeyPatch) -> DaskEngine:
    """The pipeline's step finds the cluster as it would in the chart's namespace."""
    monkeypatch.setenv(ADDRESS_ENV, str(dask_engine.client.scheduler_info()["address"]))
    return dask_engine


def task_prefixes(dask_scheduler: Any) -> list[str]:
    return sorted(dask_scheduler.task_prefixes)


@pytest.mark.timeout(600)
def test_pipeline_scores_partitions_on_the_engine(
    registered: Registered, churn_table: pd.DataFrame, scheduler: DaskEngine, tmp_path: Path
) -> None:
    src = tmp_path / "customers.parquet"
    table = churn_table.drop(columns=["churned_30d"]).head(1_500)
    pq.write_table(pa.Table.from_pandas(table, preserve_index=False), src, row_group_size=500)
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path / "kfp"))
    out = tmp_path / "shared" / "scores"
    task = churn_batch_scoring_engine(
        input_path=str(src),
        output_dir=str(out),
        tracking_uri=registered.cfg.tracking_uri,
        shared_claim="ignored-by-kfp-local",
        model_ref="champion",
        top_k=3,
        chunk_rows=400,
        partition_rows=500,
    )
    assert task is not None
    manifests = [p for p in (tmp_path / "kfp").rglob("scores") if p.is_file()]
    (manifest,) = [json.loads(p.read_text()) for p in manifests]
    assert [Path(m["output"]).name for m in manifest] == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert "score_partition" in scheduler.client.run_on_scheduler(task_prefixes)  # type: ignore[no-untyped-call]  # the step ran its tasks there
    engine_scores = pd.read_parquet(out)
    assert engine_scores["customer_id"].tolist() == table["customer_id"].tolist()
    # the engine's partitions are the CLI's single-process scores for the same rows and model
    cli_out = tmp_path / "cli_scores.parquet"
    args = ["--data-dir", str(tmp_path / "data"), "score", str(src), "--out", str(cli_out), "--model", "champion", "--top-k", "3"]
    assert main([*args, "--tracking-uri", registered.cfg.tracking_uri, "--engine", "local"]) == 0
    pd.testing.assert_frame_equal(engine_scores.reset_index(drop=True), pd.read_parquet(cli_out), check_exact=True)
