"""The churnops command line, end to end on a small data set."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from churnops.cli import main
from churnops.cli.features import CATALOG
from churnops.errors import DataValidationError
from churnops_feast.catalog import render_catalog


def test_token_and_audit_verify_commands(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path), "token", "--subject", "ops", "--role", "viewer"]) == 0
    assert capsys.readouterr().out.count(".") == 2  # a compact JWT
    assert (tmp_path / "secrets" / "jwt.key").stat().st_mode & 0o077 == 0  # owner-only secret
    assert main(["--data-dir", str(tmp_path), "token", "--subject", "ops", "--role", "root"]) == 2
    assert "unknown role" in capsys.readouterr().err
    assert main(["--data-dir", str(tmp_path), "audit", "verify"]) == 0  # an empty trail is intact
    assert "OK: 0 records" in capsys.readouterr().out


def test_failed_validation_stops_the_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(tmp_path), "data", "generate", "--customers", "300"]) == 0
    part = tmp_path / "raw" / "nps" / "part-00000.parquet"
    nps = pd.read_parquet(part)
    nps.loc[0, "score"] = 42
    nps.to_parquet(part)
    code = main(["--data-dir", str(tmp_path), "data", "validate"])
    captured = capsys.readouterr()
    assert code == DataValidationError.exit_code == 4  # rejected by a check (see churnops.errors)
    assert "[FAIL] nps" in captured.out and "column 'score'" in captured.err
    assert json.loads((tmp_path / "reports" / "validation_raw.json").read_text())["pass_rate"] < 1.0


def test_ingest_reports_bad_files_clearly(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.csv"
    pd.DataFrame({"id": [1, 2], "ts": ["2026-01-01", "2026-01-02"], "mrr": [1.0, 2.0]}).to_csv(path, index=False)
    code = main(["data", "ingest", str(path), "--id-column", "id", "--time-column", "ts", "--target-column", "churn"])
    assert code == 2
    assert "missing column(s) ['churn']" in capsys.readouterr().err


def test_ingest_writes_typed_parquet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "mine.csv"
    pd.DataFrame({"id": [1, 2, 3], "ts": ["2026-01-01"] * 3, "churn": [0, 1, 0], "plan": ["a", "b", "a"], "mrr": [1, 2, 3]}).to_csv(
        path, index=False
    )
    out = tmp_path / "typed.parquet"
    assert (
        main(["data", "ingest", str(path), "--id-column", "id", "--time-column", "ts", "--target-column", "churn", "--out", str(out)]) == 0
    )
    assert "1 numeric and 1 categorical" in capsys.readouterr().out
    assert pd.read_parquet(out)["churn"].tolist() == [0, 1, 0]


def test_checked_in_feature_catalog_is_current() -> None:
    assert CATALOG.read_text() == render_catalog(), "run `churnops features catalog`"
    assert main(["features", "catalog", "--check"]) == 0
