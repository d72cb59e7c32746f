"""Batch scoring as engine tasks over partitions: the same scores and reasons as one process, whole or nothing."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.parallel.runner import Engine, InProcess
from churnops.serving.audit import read_records, verify_file
from churnops.serving.batch import BatchInputError, score_file
from churnops.serving.batch_partitions import PartitionJob, plan_partitions, score_partitions
from churnops.serving.explain import CompiledModel
from churnops.training.ensemble import ChurnEnsemble
from churnops.training.registry import sha256_file
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import Registered

pytestmark = groups.SERVING_MODELS
EVER = (dt.datetime(2000, 1, 1, tzinfo=dt.UTC), dt.datetime(2100, 1, 1, tzinfo=dt.UTC))


@pytest.fixture(scope="module")
def table(churn_table: pd.DataFrame) -> pd.DataFrame:
    return churn_table.drop(columns=["churned_30d"]).tail(2_500).reset_index(drop=True)


@pytest.fixture
def parts_dir(table: pd.DataFrame, tmp_path: Path) -> Path:
    """The table as two files of small row groups (400 rows): partitions cross files and row groups."""
    src = tmp_path / "in"
    src.mkdir()
    pq.write_table(pa.Table.from_pandas(table.iloc[:1_700], preserve_index=False), src / "a.parquet", row_group_size=400)
    pq.write_table(pa.Table.from_pandas(table.iloc[1_700:], preserve_index=False), src / "b.parquet", row_group_size=400)
    return src


def job(out: Path, **kwargs: object) -> PartitionJob:
    return PartitionJob("batch-test", "churn", "7", 0.3, out, chunk_rows=300, **kwargs)  # type: ignore[arg-type]


def test_plan_takes_whole_row_groups_in_input_order(parts_dir: Path) -> None:
    parts = plan_partitions(parts_dir, 1_000)
    assert [(p.src.name, p.row_groups, p.rows, p.first_row) for p in parts] == [
        ("a.parquet", (0, 1, 2), 1_200, 0),
        ("a.parquet", (3, 4), 500, 1_200),  # the rest of a file is a partition of its own
        ("b.parquet", (0, 1), 800, 1_700),
    ]
    assert [p.index for p in parts] == [0, 1, 2]


@pytest.mark.parametrize("engine_kind", ["dask", "local"])
def test_partitions_give_what_one_process_gives(
    engine_kind: str, dask_engine: Engine, tree_stack: ChurnEnsemble, table: pd.DataFrame, parts_dir: Path, tmp_path: Path
) -> None:
    engine = dask_engine if engine_kind == "dask" else InProcess()
    table.to_parquet(tmp_path / "whole.parquet")
    score_file(CompiledModel(tree_stack, threads=2), 0.3, tmp_path / "whole.parquet", tmp_path / "whole-scores.parquet", chunk_rows=300)
    seen: list[int] = []
    results = score_partitions(engine, tree_stack, plan_partitions(parts_dir, 1_000), job(tmp_path / "scores"), seen.append)
    assert seen == [1_200, 500, 800]
    assert sorted(p.name for p in (tmp_path / "scores").iterdir()) == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    assert [r.output for r in results] == [tmp_path / "scores" / f"part-{i:05d}.parquet" for i in range(3)]
    assert all(r.output_sha256 == sha256_file(r.output) and r.explained for r in results)
    assert not (tmp_path / "scores.partial").exists()
    # reading the directory gives the partitions in order: the same rows, scores and reasons, exactly
    pd.testing.assert_frame_equal(
        pd.read_parquet(tmp_path / "scores"), pd.read_parquet(tmp_path / "whole-scores.parquet"), check_exact=True
    )


def test_a_bad_partition_fails_the_job_and_leaves_no_output(
    dask_engine: Engine, tree_stack: ChurnEnsemble, table: pd.DataFrame, parts_dir: Path, tmp_path: Path
) -> None:
    table.drop(columns=["tenure_days"]).to_parquet(parts_dir / "c.parquet")
    out = tmp_path / "scores"
    with pytest.raises(BatchInputError, match=r"c\.parquet: missing feature column.*tenure_days"):
        score_partitions(dask_engine, tree_stack, plan_partitions(parts_dir, 1_000), job(out))
    assert not out.exists() and not (tmp_path / "scores.partial").exists()


def test_a_path_that_is_not_an_earlier_output_is_never_replaced(tree_stack: ChurnEnsemble, parts_dir: Path, tmp_path: Path) -> None:
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    with pytest.raises(BatchInputError) as caught:
        score_partitions(InProcess(), tree_stack, plan_partitions(parts_dir, 1_000), job(mine))
    assert caught.value.field == "--out" and (mine / "notes.txt").read_text() == "keep me"
    # an earlier job's output is replaced whole: no partition of the old run survives beside the new ones
    score_partitions(InProcess(), tree_stack, plan_partitions(parts_dir, 600), job(tmp_path / "again"))
    assert len(list((tmp_path / "again").iterdir())) == 4
    score_partitions(InProcess(), tree_stack, plan_partitions(parts_dir, 10_000), job(tmp_path / "again"))
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]


def test_inputs_the_engine_cannot_partition_are_refused_clearly(tmp_path: Path, table: pd.DataFrame) -> None:
    table.head(10).to_csv(tmp_path / "in.csv", index=False)
    with pytest.raises(BatchInputError, match="--engine local"):
        plan_partitions(tmp_path / "in.csv", 1_000)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BatchInputError, match=r"no \.parquet files"):
        plan_partitions(tmp_path / "empty", 1_000)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BatchInputError, match="cannot read"):
        plan_partitions(tmp_path / "broken.parquet", 1_000)
    with pytest.raises(BatchInputError) as caught:
        plan_partitions(tmp_path / "broken.parquet", 0)
    assert caught.value.field == "--partition-rows"


def test_cli_on_dask_writes_partitions_one_audit_record_each_and_logs_every_row(
    registered: Registered, table: pd.DataFrame, parts_dir: Path, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    cli = [
        str(Path(sys.executable).parent / "churnops"),
        "--data-dir",
        str(data),
        "score",
        str(parts_dir),
        "--out",
        str(tmp_path / "scores"),
    ]
    cli += ["--tracking-uri", registered.cfg.tracking_uri, "--model", "challenger", "--engine", "dask", "--engine-workers", "2"]
    run = subprocess.run([*cli, "--partition-rows", "1000"], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads(run.stdout)
    assert summary["rows"] == len(table) and summary["partitions"] == 3 and summary["version"] == registered.challenger
    batch_log = data / "audit" / "batch.jsonl"
    records = list(read_records(batch_log))
    assert [r["partition"] for r in records] == [0, 1, 2] and {r["job"] for r in records} == {summary["job"]}
    assert [r["rows"] for r in records] == [1_200, 500, 800] and [r["first_row"] for r in records] == [0, 1_200, 1_700]
    for r in records:
        assert r["output_sha256"] == sha256_file(Path(r["output"])) and r["input_sha256"] == sha256_file(Path(r["input"]))
    assert verify_file(batch_log, audit_keys()).ok
    logged = ParquetStore(data / "predictions").read_window(*EVER)
    assert sorted(logged["request_id"]) == sorted(f"{summary['job']}/{i}" for i in range(len(table)))
    by_request = dict(zip(logged["request_id"], logged["customer_id"], strict=True))
    assert by_request[f"{summary['job']}/1700"] == int(table["customer_id"].iloc[1_700])  # request ids count rows across files
