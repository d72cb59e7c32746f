from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churnops.cli import main
from churnops.data.ingest import IngestError, ingest

KEYS = {"id_column": "account", "time_column": "as_of", "target_column": "churned"}


def _good() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "account": ["a1", "a2", "a3", "a1"],
            "as_of": ["2026-01-01", "2026-01-01", "2026-01-01", "2026-02-01"],
            "churned": ["yes", "no", "no", "yes"],
            "mrr": [100.0, 250.5, None, 120.0],
            "seats": [3, 10, 4, 3],
            "plan": ["pro", "basic", "pro", None],
            "notes": [None, None, None, None],
        }
    )


def _write(frame: pd.DataFrame, path: Path) -> Path:
    if path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        frame.to_parquet(path, index=False)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_good_file_is_typed(tmp_path: Path, suffix: str) -> None:
    table = ingest(_write(_good(), tmp_path / f"data{suffix}"), **KEYS)
    assert table.schema.numeric == ("mrr", "seats")
    assert table.schema.categorical == ("plan",)
    assert table.frame["churned"].tolist() == [1, 0, 0, 1]
    assert str(table.frame["as_of"].dt.tz) == "UTC"
    assert any("notes" in n for n in table.notes)  # an all-empty column is reported, not silently dropped


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = _write(_good().drop(columns=["churned", "as_of"]), tmp_path / "d.csv")
    with pytest.raises(IngestError, match=r"missing column\(s\) \['as_of', 'churned'\]"):
        ingest(path, **KEYS)


def test_numeric_column_with_text_is_a_wrong_type(tmp_path: Path) -> None:
    frame = pd.concat([_good()] * 10, ignore_index=True)
    frame["as_of"] = pd.date_range("2026-01-01", periods=len(frame)).astype(str)
    frame["seats"] = frame["seats"].astype(object)
    frame.loc[7, "seats"] = "ten"
    with pytest.raises(IngestError, match=r"column 'seats' is numeric but has non-numeric values: 'ten' \(rows 9\)"):
        ingest(_write(frame, tmp_path / "d.csv"), **KEYS)


def test_non_binary_target_is_a_wrong_type(tmp_path: Path) -> None:
    frame = _good()
    frame.loc[2, "churned"] = "maybe"
    with pytest.raises(IngestError, match=r"target column 'churned' must be binary .*'maybe'"):
        ingest(_write(frame, tmp_path / "d.csv"), **KEYS)


def test_single_class_target_is_rejected(tmp_path: Path) -> None:
    frame = _good().assign(churned="no")
    with pytest.raises(IngestError, match="single class"):
        ingest(_write(frame, tmp_path / "d.csv"), **KEYS)


def test_unparseable_time_is_a_wrong_type(tmp_path: Path) -> None:
    frame = _good()
    frame.loc[1, "as_of"] = "last tuesday"
    with pytest.raises(IngestError, match=r"time column 'as_of' has values that are not timestamps: 'last tuesday' \(rows 3\)"):
        ingest(_write(frame, tmp_path / "d.csv"), **KEYS)


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    frame = pd.concat([_good(), _good().iloc[[0]]], ignore_index=True)
    with pytest.raises(IngestError, match=r"2 rows share an \(account, as_of\) key, e.g. \('a1', 2026-01-01"):
        ingest(_write(frame, tmp_path / "d.csv"), **KEYS)


def test_missing_ids_are_rejected(tmp_path: Path) -> None:
    frame = _good()
    frame.loc[0, "account"] = None
    with pytest.raises(IngestError, match="id column 'account' has 1 missing"):
        ingest(_write(frame, tmp_path / "d.parquet"), **KEYS)


def test_zero_byte_file_is_empty(tmp_path: Path) -> None:
    path = tmp_path / "d.csv"
    path.write_bytes(b"")
    with pytest.raises(IngestError, match="file is empty"):
        ingest(path, **KEYS)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_header_only_file_has_no_rows(tmp_path: Path, suffix: str) -> None:
    path = _write(_good().head(0), tmp_path / f"d{suffix}")
    with pytest.raises(IngestError, match="no data rows"):
        ingest(path, **KEYS)


def test_unsupported_and_missing_files(tmp_path: Path) -> None:
    (tmp_path / "d.xlsx").write_text("x")
    with pytest.raises(IngestError, match=r"unsupported file type '\.xlsx'"):
        ingest(tmp_path / "d.xlsx", **KEYS)
    with pytest.raises(IngestError, match="file not found"):
        ingest(tmp_path / "nope.csv", **KEYS)


def test_corrupt_parquet_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(IngestError, match="cannot be read as parquet"):
        ingest(path, **KEYS)


def test_blank_cells_are_missing_values_and_counted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """CSV exports often write a missing number as a space: a missing value, counted, not a wrong type."""
    frame = pd.concat([_good()] * 10, ignore_index=True)
    frame["as_of"] = pd.date_range("2026-01-01", periods=len(frame)).astype(str)
    frame["seats"] = frame["seats"].astype(object)
    frame.loc[[3, 11, 25], "seats"] = [" ", "   ", "\t"]
    frame.loc[5, "plan"] = " "
    path = _write(frame, tmp_path / "export.csv")
    table = ingest(path, **KEYS)
    assert "seats" in table.schema.numeric and "plan" in table.schema.categorical
    assert table.frame["seats"].isna().sum() == 3 and table.frame["seats"].dtype == "float64"
    assert table.frame["seats"].iloc[[0, 1, 2]].tolist() == [3.0, 10.0, 4.0]
    assert table.frame["plan"].isna().iloc[5]  # a blank category is missing too, not a level " "
    assert "column 'seats': 3 blank cells (only whitespace) read as missing values" in table.notes
    assert "column 'plan': 1 blank cell (only whitespace) read as missing values" in table.notes
    assert main(["data", "ingest", str(path), "--id-column", "account", "--time-column", "as_of", "--target-column", "churned"]) == 0
    assert "note: column 'seats': 3 blank cells (only whitespace) read as missing values" in capsys.readouterr().out


def test_text_next_to_blanks_is_still_a_wrong_type(tmp_path: Path) -> None:
    frame = pd.concat([_good()] * 10, ignore_index=True)
    frame["as_of"] = pd.date_range("2026-01-01", periods=len(frame)).astype(str)
    frame["seats"] = frame["seats"].astype(object)
    frame.loc[[3, 11], "seats"] = [" ", "about 10"]
    with pytest.raises(IngestError, match=r"column 'seats' is numeric but has non-numeric values: 'about 10' \(rows 13\)"):
        ingest(_write(frame, tmp_path / "d.csv"), **KEYS)
