"""Batch scoring: streamed chunks give the same scores and reasons as online scoring; bad files fail clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnops.errors import IntegrityError
from churnops.serving.audit import verify_file
from churnops.serving.batch import BatchInputError, score_file
from churnops.serving.explain import CompiledModel, top_reasons
from churnops.training.ensemble import ChurnEnsemble
from churnops.training.registry import sha256_file
from tests.support import groups
from tests.support.audit import audit_keys
from tests.support.serving import Registered

pytestmark = groups.SERVING_MODELS


@pytest.fixture(scope="module")
def table(churn_table: pd.DataFrame) -> pd.DataFrame:
    return churn_table.drop(columns=["churned_30d"]).tail(2_500).reset_index(drop=True)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_batch_equals_online_scoring(tree_stack: ChurnEnsemble, table: pd.DataFrame, tmp_path: Path, suffix: str) -> None:
    src = tmp_path / f"in{suffix}"
    table.to_parquet(src) if suffix == ".parquet" else table.to_csv(src, index=False)
    model = CompiledModel(tree_stack)
    progress: list[tuple[int, int | None]] = []
    report = score_file(model, 0.3, src, tmp_path / "out.parquet", chunk_rows=700, top_k=5, progress=lambda d, t: progress.append((d, t)))
    out = pd.read_parquet(report.output)
    assert report.rows == len(out) == len(table) and report.explained
    assert progress[-1][0] == len(table) and len(progress) >= 2  # streamed in chunks
    assert out["customer_id"].tolist() == table["customer_id"].tolist()
    expected = tree_stack.predict_proba(table)
    assert out["churn_probability"].to_numpy() == pytest.approx(expected, abs=1e-6)
    assert set(out["risk_band"]) <= {"low", "medium", "high"}
    # batch reasons (vectorised TreeSHAP, chunks of rows) against the online path: one row at a time, native TreeSHAP
    rows = table[model.features].astype(object).where(table[model.features].notna(), None).to_numpy()
    for r in range(0, len(table), 25):
        scored = model.explain(rows[r : r + 1])
        assert scored.contributions is not None
        online = top_reasons(model, rows[r], scored.contributions[0], 5)
        assert [out.at[r, f"reason_{i + 1}_feature"] for i in range(5)] == [x.feature for x in online]
        assert [out.at[r, f"reason_{i + 1}_contribution"] for i in range(5)] == pytest.approx([x.contribution for x in online], abs=1e-6)
        assert [_parsed(out.at[r, f"reason_{i + 1}_value"]) for i in range(5)] == [x.value for x in online]


def _parsed(text: object) -> object:
    """A reason's value as the online path gives it (CSV columns arrive as floats: "198.0" is 198)."""
    try:
        return float(text) if isinstance(text, str) else text
    except ValueError:
        return text


def test_scores_only(xgb_single: ChurnEnsemble, table: pd.DataFrame, tmp_path: Path) -> None:
    table.to_parquet(tmp_path / "in.parquet")
    report = score_file(CompiledModel(xgb_single), 0.3, tmp_path / "in.parquet", tmp_path / "out.parquet", top_k=0)
    out = pd.read_parquet(report.output)
    assert not report.explained and list(out.columns) == ["customer_id", "event_timestamp", "churn_probability", "risk_band"]


def test_bad_files_fail_clearly_and_leave_no_output(xgb_single: ChurnEnsemble, table: pd.DataFrame, tmp_path: Path) -> None:
    model = CompiledModel(xgb_single)
    out = tmp_path / "out.parquet"
    table.drop(columns=["tenure_days"]).to_parquet(tmp_path / "missing.parquet")
    with pytest.raises(BatchInputError, match=r"missing feature column.*tenure_days"):
        score_file(model, 0.3, tmp_path / "missing.parquet", out)
    text = table.astype({"tenure_days": str})
    text.loc[5, "tenure_days"] = "lots"
    text.to_parquet(tmp_path / "text.parquet")
    with pytest.raises(BatchInputError, match="'tenure_days' must be numeric"):
        score_file(model, 0.3, tmp_path / "text.parquet", out)
    inf = table.copy()
    inf.loc[3, "mrr"] = np.inf
    inf.to_parquet(tmp_path / "inf.parquet")
    with pytest.raises(BatchInputError, match="'mrr' has 1 infinite"):
        score_file(model, 0.3, tmp_path / "inf.parquet", out)
    (tmp_path / "x.json").write_text("{}")
    with pytest.raises(BatchInputError, match="unsupported file type"):
        score_file(model, 0.3, tmp_path / "x.json", out)
    (tmp_path / "broken.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(BatchInputError, match="cannot read"):
        score_file(model, 0.3, tmp_path / "broken.parquet", out)
    assert not out.exists() and not list(tmp_path.glob("*.partial"))


def test_cli_scores_a_registered_model(registered: Registered, table: pd.DataFrame, tmp_path: Path) -> None:
    table.head(500).to_parquet(tmp_path / "in.parquet")
    cli = [str(Path(sys.executable).parent / "churnops"), "--data-dir", str(tmp_path / "data"), "score", str(tmp_path / "in.parquet")]
    cli += ["--out", str(tmp_path / "scores.parquet")]
    run = subprocess.run(
        [*cli, "--tracking-uri", registered.cfg.tracking_uri, "--model", "challenger"], capture_output=True, text=True, check=False
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert '"rows": 500' in run.stdout and '"version": "3"' in run.stdout
    assert len(pd.read_parquet(tmp_path / "scores.parquet")) == 500
    batch_log = tmp_path / "data" / "audit" / "batch.jsonl"  # the default under --data-dir
    record = json.loads(batch_log.read_text())
    assert record["kind"] == "batch" and record["rows"] == 500 and record["model_version"] == "3"
    assert record["output_sha256"] == sha256_file(tmp_path / "scores.parquet") and verify_file(batch_log, audit_keys()).ok
    bad = subprocess.run([*cli, "--tracking-uri", registered.cfg.tracking_uri, "--model", "2"], capture_output=True, text=True, check=False)
    # the corrupted version is refused: an integrity check, exit code 4 (see churnops.errors)
    assert bad.returncode == IntegrityError.exit_code and "does not match the registered" in bad.stderr
