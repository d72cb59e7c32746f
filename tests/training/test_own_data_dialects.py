"""``train --data`` reads the CSV dialects users have: each detected, noted, and overridable by an option."""

from __future__ import annotations

import codecs
import json
from pathlib import Path

import pandas as pd
import pytest

from churnops.cli import main
from churnops.data.ingest import CsvDialect, IngestError, ingest, ingest_table
from tests.training.byod import contract_table, train_args

KEYS = ("customer", "as_of", "churned")


def small() -> pd.DataFrame:
    """A few hundred rows with a text column that needs more than ASCII and charges with cents."""
    frame = contract_table(n=400, seed=3)
    frame["city"] = ["São Paulo", "Zürich", "Malmö", "Kraków"] * 100
    frame["monthly_charges"] = frame["monthly_charges"] * 40  # thousands, for the grouping separator
    return frame


def european(frame: pd.DataFrame, date_format: str = "%d/%m/%Y") -> str:
    """The text a spreadsheet in a German or French locale exports: semicolons, decimal commas, 1.234,56."""
    out = frame.copy()
    out["as_of"] = out["as_of"].dt.strftime(date_format)
    out["monthly_charges"] = out["monthly_charges"].map(lambda v: f"{v:,.2f}".replace(",", "_").replace(".", ",").replace("_", "."))
    out["tenure_months"] = out["tenure_months"].map(lambda v: f"{v:.1f}".replace(".", ","))
    text: str = out.to_csv(index=False, sep=";")
    return text


def test_semicolons_decimal_commas_and_thousands_are_detected(tmp_path: Path) -> None:
    frame = small()
    path = tmp_path / "export.csv"
    path.write_text(european(frame), encoding="utf-8")
    table = ingest(path, *KEYS)
    assert "monthly_charges" in table.schema.numeric and "tenure_months" in table.schema.numeric
    assert table.frame["monthly_charges"].to_numpy() == pytest.approx(frame["monthly_charges"].round(2).to_numpy())
    assert table.frame["tenure_months"].to_numpy() == pytest.approx(frame["tenure_months"].to_numpy())
    assert "columns separated by ';' (detected; set --separator to override)" in table.notes
    assert "numbers written with a decimal comma and '.' grouping thousands (detected; set --decimal to override)" in table.notes


def test_decimal_point_with_semicolons_is_not_mistaken_for_commas(tmp_path: Path) -> None:
    frame = small()
    path = tmp_path / "export.csv"
    frame.assign(as_of=frame["as_of"].dt.strftime("%Y-%m-%d")).to_csv(path, index=False, sep=";")
    table = ingest(path, *KEYS)
    assert table.frame["tenure_months"].to_numpy() == pytest.approx(frame["tenure_months"].to_numpy())
    assert not any("decimal comma" in n for n in table.notes)


def test_utf8_byte_order_mark_is_removed_and_noted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(codecs.BOM_UTF8 + european(small()).encode("utf-8"))
    table = ingest(path, *KEYS)  # the id column is found: the mark is not part of its name
    assert table.frame["customer"].iloc[0] == "c00000"
    assert "file starts with a UTF-8 byte-order mark (removed from the first column's name)" in table.notes
    assert set(table.frame["city"].dropna()) == {"São Paulo", "Zürich", "Malmö", "Kraków"}


def test_latin1_is_read_when_the_file_is_not_utf8(tmp_path: Path) -> None:
    frame = small()
    frame["city"] = ["São Paulo", "Zürich", "Malmö", "Besançon"] * 100  # Kraków has no Latin-1 byte
    path = tmp_path / "latin1.csv"
    path.write_bytes(european(frame).encode("latin-1"))
    table = ingest(path, *KEYS)
    assert set(table.frame["city"].dropna()) == {"São Paulo", "Zürich", "Malmö", "Besançon"}
    assert "file is not UTF-8: read as cp1252 (Latin-1 family); set --encoding if its text looks wrong" in table.notes
    # an explicit encoding is used as given, and an unknown one names its option
    assert set(ingest_table(path, *KEYS, CsvDialect(encoding="latin-1")).frame["city"].dropna()) == set(frame["city"])
    with pytest.raises(IngestError, match=r"--encoding: unknown encoding 'latin-9000'"):
        CsvDialect(encoding="latin-9000")


def test_day_first_dates_are_detected_from_a_day_above_12(tmp_path: Path) -> None:
    frame = small()
    path = tmp_path / "dates.csv"
    path.write_text(european(frame))
    table = ingest(path, *KEYS)
    assert (table.frame["as_of"].dt.tz_localize(None) == frame["as_of"]).all()
    assert any(n.startswith("time column 'as_of': dates read day first (detected from values such as") for n in table.notes)


def test_month_first_dates_are_detected_and_contradicting_options_name_themselves(tmp_path: Path) -> None:
    frame = small()
    path = tmp_path / "us.csv"
    path.write_text(european(frame, "%m/%d/%Y"))
    table = ingest(path, *KEYS)
    assert (table.frame["as_of"].dt.tz_localize(None) == frame["as_of"]).all()
    assert any("dates read month first (detected" in n for n in table.notes)
    with pytest.raises(IngestError, match=r"--day-first: time column 'as_of' has month-first dates, e.g. '0\d/1\d/2025'"):
        ingest_table(path, *KEYS, CsvDialect(day_first=True))


def test_ambiguous_dates_are_reported_and_an_option_decides(tmp_path: Path) -> None:
    frame = small()
    frame["as_of"] = pd.Timestamp("2025-03-04") + pd.to_timedelta((frame.index % 4) * 31, unit="D")  # days 4-7: either way
    path = tmp_path / "ambiguous.csv"
    path.write_text(european(frame))
    table = ingest(path, *KEYS)
    note = next(n for n in table.notes if "read either way" in n)
    assert note.startswith("time column 'as_of': dates such as '04/03/2025' read either way; read month first.")
    assert "Set --day-first or --month-first to say which" in note
    assert table.frame["as_of"].iloc[0].month == 4  # month first, as the note says
    day_first = ingest_table(path, *KEYS, CsvDialect(day_first=True))
    assert (day_first.frame["as_of"].dt.tz_localize(None) == frame["as_of"]).all()
    assert "time column 'as_of': dates read day first (as set)" in day_first.notes


def test_mixed_date_orders_are_an_error_not_a_silent_swap(tmp_path: Path) -> None:
    frame = small()
    text = european(frame).replace("15/01/2025", "01/15/2025", 1)
    path = tmp_path / "mixed.csv"
    path.write_text(text)
    with pytest.raises(IngestError, match=r"--day-first: time column 'as_of' mixes day-first and month-first dates"):
        ingest(path, *KEYS)


def test_bad_dialect_options_name_the_option() -> None:
    with pytest.raises(IngestError, match="--decimal: the decimal mark ',' cannot also be the separator"):
        CsvDialect(separator=",", decimal=",")
    with pytest.raises(IngestError, match="--separator: must be one character"):
        CsvDialect(separator=";;")


def test_train_reads_a_european_export_and_records_how(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """End to end: Latin-1, semicolons, decimal commas and day-first dates, trained, the notes printed and in the card."""
    frame = contract_table(n=2_500, seed=4)
    frame["monthly_charges"] = frame["monthly_charges"] * 40
    # whole euros a year, grouped by dots with no decimals: '1.021' is read by the file's decimal commas, as 1021
    frame["annual_fee"] = (frame["monthly_charges"] * 3).round().astype(int).map(lambda v: f"{v:,}".replace(",", "."))
    path = tmp_path / "kunden.csv"
    path.write_bytes(european(frame).replace("month-to-month", "mensuel à mois").encode("latin-1"))
    data_dir = tmp_path / "d"
    assert main(train_args(data_dir, path, "--segment-column", "contract", "--min-auc", "0.7")) == 0
    out = capsys.readouterr().out
    for note in (
        "note: file is not UTF-8: read as cp1252",
        "note: columns separated by ';'",
        "note: numbers written with a decimal comma and '.' grouping thousands",
        "note: time column 'as_of': dates read day first",
        "note: column 'annual_fee': values such as",
    ):
        assert note in out
    card = (data_dir / "reports" / "training" / "model_card.md").read_text()
    assert "- notes: file is not UTF-8: read as cp1252" in card and "columns separated by ';'" in card
    assert "| mensuel à mois |" in card  # the Latin-1 text read as written
    evaluation = json.loads((data_dir / "reports" / "training" / "evaluation.json").read_text())
    assert evaluation["evaluation"]["roc_auc"] > 0.75
