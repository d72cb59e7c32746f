from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from churnops.cli import main
from churnops.data import ingest as ingest_module
from churnops.data.ingest import CsvDialect, IngestError, ingest, ingest_table

KEYS = {"id_column": "account", "time_column": "as_of", "target_column": "churned"}
KEY_NAMES = ("account", "as_of", "churned")


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


def test_data_ingest_takes_the_dialect_options_train_takes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``data ingest`` checks a file the way ``train --data`` will read it: same detection, same options."""
    path = tmp_path / "export.csv"
    path.write_bytes("account;as_of;churned;mrr\na1;03/04/2026;yes;12,5\na2;13/04/2026;no;7,25\na3;14/04/2026;no;9\n".encode("latin-1"))
    keys = ["--id-column", "account", "--time-column", "as_of", "--target-column", "churned"]
    out = tmp_path / "typed.parquet"
    assert main(["data", "ingest", str(path), *keys, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "separated by ';'" in printed and "decimal comma" in printed and "day first" in printed
    typed = pd.read_parquet(out)
    assert typed["mrr"].tolist() == [12.5, 7.25, 9.0]
    assert typed["as_of"].dt.month.tolist() == [4, 4, 4]  # 03/04 read as 3 April, like the unambiguous rows
    with pytest.raises(SystemExit, match="2"):
        main(["data", "ingest", str(path), *keys, "--day-first", "--month-first"])
    assert main(["data", "ingest", str(path), *keys, "--month-first"]) != 0
    assert "--month-first" in capsys.readouterr().err


# Numbers, ids and encodings as exports write them: read right with a note, or stopped naming the option.
HEAD = "account;as_of;churned"


def _lines(path: Path, header: str, rows: list[str], encoding: str = "utf-8") -> Path:
    path.write_bytes(("\n".join([header, *rows]) + "\n").encode(encoding))
    return path


def _rows(cells: list[str]) -> list[str]:
    """One row per cell, with distinct keys and both classes."""
    return [f"a{i};2026-01-{i % 28 + 1:02d};{'yes' if i % 2 else 'no'};{c}" for i, c in enumerate(cells)]


def test_european_integers_grouped_by_dots_are_read_by_the_files_decimal_comma(tmp_path: Path) -> None:
    """'1.021' beside '568' is a thousand and twenty-one in a file that writes '47,37' elsewhere."""
    cells = [f"{rev};{charge}" for rev, charge in [("568", "47,37"), ("1.021", "85,05"), ("2.400", "12,5"), ("999", "3,25")]]
    path = _lines(tmp_path / "eu.csv", f"{HEAD};annual;charges", _rows(cells))
    table = ingest(path, **KEYS)
    assert table.frame["annual"].tolist() == [568, 1021, 2400, 999]
    assert table.frame["charges"].tolist() == [47.37, 85.05, 12.5, 3.25]
    assert any(n.startswith("column 'annual': values such as '1.021' read as 1021: the file's other columns") for n in table.notes)
    # told explicitly, the same reading; told the dots are decimals, the option wins
    assert ingest_table(path, *KEY_NAMES, CsvDialect(decimal=",")).frame["annual"].tolist() == [568, 1021, 2400, 999]
    assert ingest_table(path, *KEY_NAMES, CsvDialect(decimal=".", thousands="")).schema.categorical == ("charges",)


def test_values_only_a_thousands_option_can_decide_stop_and_name_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _lines(
        tmp_path / "us.csv", "account,as_of,churned,revenue", [r.replace(";", ",", 3) for r in _rows(['"1,000"', '"2,100"', "7"])]
    )
    with pytest.raises(
        IngestError, match=r"--thousands: column 'revenue': values such as '1,000' read either as 1000 .* or as 1 \(a decimal comma\)"
    ):
        ingest(path, **KEYS)
    keys = ["--id-column", "account", "--time-column", "as_of", "--target-column", "churned"]
    out = tmp_path / "typed.parquet"
    assert main(["data", "ingest", str(path), *keys, "--thousands", ",", "--out", str(out)]) == 0
    assert pd.read_parquet(out)["revenue"].tolist() == [1000, 2100, 7]
    assert main(["data", "ingest", str(path), *keys, "--decimal", ",", "--out", str(out)]) == 0
    assert pd.read_parquet(out)["revenue"].tolist() == [1.0, 2.1, 7]
    # a comma group beside a decimal point decides itself: 1,234.56 is a grouped number
    grouped = _lines(tmp_path / "us2.csv", "account,as_of,churned,revenue", [r.replace(";", ",", 3) for r in _rows(['"1,234.56"', "12.5"])])
    table = ingest(grouped, **KEYS)
    assert table.frame["revenue"].tolist() == [1234.56, 12.5]
    assert "numbers written with ',' grouping thousands in ['revenue'] (detected; set --thousands to override)" in table.notes


def test_the_id_column_stays_text(tmp_path: Path) -> None:
    ids = ["007", "1e3", "1000", "12345678901234567890"]
    rows = [f"{i};2026-01-01;{'yes' if n % 2 else 'no'};{n}" for n, i in enumerate(ids)]
    table = ingest(_lines(tmp_path / "ids.csv", f"{HEAD};x", rows), **KEYS)
    assert table.frame["account"].tolist() == ids  # no leading zero lost, no 1e3 == 1000 collision, no float


def test_the_whole_column_decides_not_a_sample_and_near_numbers_are_noted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "SNIFF_BYTES", 200)  # the decimal commas come after the sample
    cells = [f"{i};{i % 4}%;({i}.50);\u2212{i}" for i in range(40)] + ["12,5;1%;(1.50);\u22121"]
    table = ingest(_lines(tmp_path / "late.csv", f"{HEAD};x;share;balance;delta", _rows(cells)), **KEYS)
    assert table.frame["x"].iloc[-1] == 12.5 and "x" in table.schema.numeric
    assert table.frame["delta"].iloc[:3].tolist() == [0, -1, -2]  # a Unicode minus is a minus
    assert table.schema.categorical == ("share", "balance")
    for column, example in (("share", "'0%'"), ("balance", "'(0.50)'")):
        note = next(n for n in table.notes if n.startswith(f"column {column!r}: 100% of values look like numbers"))
        assert example in note and "read as categorical" in note


def test_encoding_problems_name_the_option(tmp_path: Path) -> None:
    text = f"{HEAD};city\n" + "\n".join(_rows(["Zürich", "Malmö"])) + "\n"
    bom_latin = tmp_path / "bom.csv"
    bom_latin.write_bytes(b"\xef\xbb\xbf" + text.encode("cp1252"))
    with pytest.raises(IngestError, match=r"--encoding: .*starts with a UTF-8 byte-order mark but is not UTF-8 text"):
        ingest(bom_latin, **KEYS)
    table = ingest_table(bom_latin, *KEY_NAMES, CsvDialect(encoding="cp1252"))  # the mark read as text leaves the name
    assert table.frame["city"].tolist() == ["Zürich", "Malmö"]
    assert any("byte-order mark read as 'ï»¿'" in n for n in table.notes)
    latin = _lines(tmp_path / "cp.csv", f"{HEAD};city", _rows(["Zürich", "Malmö"]), "cp1252")
    with pytest.raises(IngestError, match=r"--encoding: .*not utf-8 text .*byte b'\\xfc'"):
        ingest_table(latin, *KEY_NAMES, CsvDialect(encoding="utf-8"))
    utf16 = _lines(tmp_path / "u16.csv", f"{HEAD};city", _rows(["Zürich", "Malmö"]), "utf-16-le")
    table = ingest(utf16, **KEYS)
    assert table.frame["city"].tolist() == ["Zürich", "Malmö"] and any("UTF-16 without a byte-order mark" in n for n in table.notes)
    with pytest.raises(IngestError, match="--encoding: 'rot13' is not a text encoding"):
        CsvDialect(encoding="rot13")


def test_separator_lines_merged_headers_and_repeated_names(tmp_path: Path) -> None:
    excel = tmp_path / "excel.csv"
    excel.write_text("sep=;\n" + f"{HEAD};x\n" + "\n".join(_rows(["0,5", "1,5"])) + "\n")
    table = ingest(excel, **KEYS)
    assert table.frame["x"].tolist() == [0.5, 1.5] and "columns separated by ';' (the file's first line says sep=;)" in table.notes
    # a comma inside unquoted text does not win over the separator every row agrees on
    mixed = _lines(tmp_path / "mixed.csv", f"{HEAD};x;name, full", _rows(["1;Smith, J", "2;Doe, A"]))
    assert ingest(mixed, **KEYS).schema.categorical == ("name, full",)
    with pytest.raises(IngestError, match=r"missing column\(s\).*if the columns look merged, set --separator"):
        ingest_table(mixed, *KEY_NAMES, CsvDialect(separator=","))
    repeated = _lines(tmp_path / "dup.csv", f"{HEAD};x;x", _rows(["1;2", "3;4"]))
    with pytest.raises(IngestError, match=r"x: .*column name 'x' appears 2 times in the header"):
        ingest(repeated, **KEYS)


def test_two_digit_years_are_noted(tmp_path: Path) -> None:
    rows = [f"a{i};{d};{c}" for i, (d, c) in enumerate([("03/04/24", "no"), ("13/04/24", "yes"), ("01/02/69", "no")])]
    table = ingest(_lines(tmp_path / "y2.csv", f"{HEAD};x", [f"{r};{i}" for i, r in enumerate(rows)]), **KEYS)
    assert table.frame["as_of"].dt.year.tolist() == [2024, 2024, 2069]
    assert any("two-digit years (e.g. '03/04/24' read as 2024-04-03; years 2024-2069)" in n for n in table.notes)


@pytest.mark.parametrize("name", ["data.tsv", "data.csv.gz"])
def test_tab_separated_and_compressed_files(tmp_path: Path, name: str) -> None:
    frame = _good()
    path = tmp_path / name
    frame.to_csv(path, index=False, sep="\t" if name.endswith(".tsv") else ",")
    table = ingest(path, **KEYS)
    assert table.schema.numeric == ("mrr", "seats") and table.frame["churned"].tolist() == [1, 0, 0, 1]
