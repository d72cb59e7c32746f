"""Bring your own data: read a user's CSV or Parquet table and infer its schema.

The table needs an id column, a timestamp column and a binary target column;
every other column is a numeric or categorical feature. Problems are reported
as ``IngestError`` with a message that names the file, the column and
examples of the offending values, never as a stack trace from deep in pandas.

Spreadsheet and database exports often write a missing value as a blank (one
or more spaces) rather than an empty cell. Such cells are missing values, not
text: they are counted in the notes, and only real text in a numeric column
stops ingestion.

CSV files come in the dialects of the tools that wrote them: semicolon
separators and decimal commas (European spreadsheet locales), a byte-order mark
(Excel's "CSV UTF-8", with its "sep=;" first line), UTF-16, Latin-1 /
Windows-1252 text, dates written day first. Whatever ``CsvDialect`` leaves unset
is detected and every detection is a note, so the model card records how the
file was read. Cells are read as text and typed here, on every value of the file
(``churnops.data.numbers``): the id column stays text, and a number that reads two
ways with nothing in the file to decide stops with the option that decides it.
Dates that read either way (03/04/2024) are ambiguous: they are read month
first, as before, unless ``day_first`` says otherwise, and the ambiguity is a note.
"""

from __future__ import annotations

import bz2
import codecs
import csv
import gzip
import io
import logging
import lzma
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, cast

import numpy as np
import pandas as pd

from churnops.data import numbers
from churnops.data.parquet import read_parquet
from churnops.errors import InvalidInputError

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y", "t", "churned"}
_FALSE = {"0", "false", "no", "n", "f", "retained", "active"}
NUMERIC_PARSE_SHARE = 0.95  # a text column this numeric is taken as a numeric column with typos
LOOKS_NUMERIC_SHARE = 0.5  # a categorical column this number-like is noted (5%, (12.50), $1,200 are not read as numbers)
MAX_EXAMPLES = 5


SNIFF_BYTES = 64 * 1024  # the sample the separator and the encoding's oddities are detected on
SEPARATORS = ",;\t|"
_BOMS = ((codecs.BOM_UTF8, "utf-8-sig"), (codecs.BOM_UTF16_LE, "utf-16"), (codecs.BOM_UTF16_BE, "utf-16"))
_MOJIBAKE_BOM = ("\ufeff", "ï»¿")  # a UTF-8 byte-order mark, kept, or read as Windows-1252 text
_EXCEL_SEP = re.compile(r'^"?sep=(.)"?\s*$')  # Excel's first line naming the separator: sep=;
THOUSANDS_MARKS = (".", ",", " ", "'", "")  # the marks that may group thousands ("" for none)
TEXT_SUFFIXES = (".csv", ".txt", ".tsv")
COMPRESSED = {".gz": "gzip", ".bz2": "bz2", ".zip": "zip", ".xz": "xz"}
# a date written with its day and month first, in either order: 03/04/2024, 3.4.24, 03-04-2024 10:00
_DAY_MONTH = re.compile(r"^\s*(\d{1,2})[./-](\d{1,2})[./-]\d{2,4}\b")
_TWO_DIGIT_YEAR = re.compile(r"^\s*\d{1,2}[./-]\d{1,2}[./-]\d{2}(?!\d)")


class IngestError(InvalidInputError):
    """The input table cannot be used; the message says what is wrong and where."""


@dataclass(frozen=True)
class CsvDialect:
    """How a CSV file is written; a field left None is detected from the file, and the detection noted."""

    separator: str | None = None
    decimal: str | None = None  # "." or ","
    encoding: str | None = None  # e.g. "utf-8", "latin-1", "cp1252"
    day_first: bool | None = None  # dates such as 03/04/2024: True day first, False month first
    thousands: str | None = None  # the mark grouping thousands: "." "," " " "'" or "" (none)

    def __post_init__(self) -> None:
        if self.separator is not None and len(self.separator) != 1:
            raise IngestError(f"must be one character (e.g. ';' or a tab), got {self.separator!r}", field="--separator")
        if self.decimal not in (None, ".", ","):
            raise IngestError(f"must be '.' or ',', got {self.decimal!r}", field="--decimal")
        if self.decimal is not None and self.decimal == self.separator:
            raise IngestError(f"the decimal mark {self.decimal!r} cannot also be the separator", field="--decimal")
        if self.thousands is not None and self.thousands not in THOUSANDS_MARKS:
            raise IngestError(f"must be one of {list(THOUSANDS_MARKS)}, got {self.thousands!r}", field="--thousands")
        if self.thousands and self.thousands == self.decimal:
            raise IngestError(f"the thousands mark {self.thousands!r} cannot also be the decimal mark", field="--thousands")
        if self.encoding is not None:
            try:
                info = codecs.lookup(self.encoding)
            except LookupError as e:
                raise IngestError(f"unknown encoding {self.encoding!r} (e.g. utf-8, latin-1, cp1252)", field="--encoding") from e
            if not getattr(info, "_is_text_encoding", True):  # rot13, base64, hex: codecs, not text encodings
                raise IngestError(f"{self.encoding!r} is not a text encoding (e.g. utf-8, latin-1, cp1252)", field="--encoding")


@dataclass(frozen=True)
class TableSchema:
    id_column: str
    time_column: str
    target_column: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical


@dataclass
class IngestedTable:
    frame: pd.DataFrame
    schema: TableSchema
    notes: list[str] = field(default_factory=list)


def read_table(path: Path, dialect: CsvDialect | None = None) -> pd.DataFrame:
    """Read CSV or Parquet by extension, column types inferred by pandas; empty or unreadable files raise ``IngestError``."""
    return read_table_noted(path, dialect or CsvDialect(), as_text=False)[0]


def _kind(path: Path) -> tuple[str, str | None]:
    """("csv" | "parquet", compression) from the file name: data.csv, data.tsv, data.csv.gz, data.parquet."""
    suffixes = [s.lower() for s in path.suffixes[-2:]]
    compression = COMPRESSED.get(suffixes[-1]) if suffixes else None
    base = suffixes[-2] if compression and len(suffixes) == 2 else (suffixes[-1] if suffixes else "")
    if base in TEXT_SUFFIXES:
        return "csv", compression
    if base in (".parquet", ".pq") and compression is None:
        return "parquet", None
    shown = "".join(suffixes) or "(none)"
    raise IngestError(f"{path}: unsupported file type {shown!r}; use .csv, .tsv or .txt (optionally .gz, .bz2, .zip, .xz) or .parquet")


def read_table_noted(path: Path, dialect: CsvDialect, as_text: bool = True) -> tuple[pd.DataFrame, list[str]]:
    """The table and notes on how it was read; with ``as_text`` a CSV's cells stay text (``ingest_table`` types them)."""
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, expected a .csv or .parquet file")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    kind, compression = _kind(path)
    notes: list[str] = []
    try:
        if kind == "csv":
            frame, notes = _read_csv(path, dialect, compression, as_text)
        else:
            frame = read_parquet(path)
    except pd.errors.EmptyDataError as e:
        raise IngestError(f"{path}: file is empty (no header and no rows)") from e
    except (pd.errors.ParserError, OSError, ValueError) as e:
        if isinstance(e, IngestError):
            raise
        raise IngestError(f"{path}: cannot be read as {kind}: {e}") from e
    if frame.empty:
        raise IngestError(f"{path}: file has a header but no data rows")
    return frame, notes


def _open_binary(path: Path, compression: str | None) -> IO[bytes]:
    if compression is None:
        return path.open("rb")
    if compression == "zip":
        archive = zipfile.ZipFile(path)
        names = [n for n in archive.namelist() if not n.endswith("/")]
        if len(names) != 1:
            raise IngestError(f"{path}: a .zip must hold exactly one file, it holds {len(names)}")
        return archive.open(names[0])
    if compression == "gzip":
        return cast(IO[bytes], gzip.open(path, "rb"))
    if compression == "bz2":
        return bz2.open(path, "rb")
    return lzma.open(path, "rb")


def _read_csv(path: Path, dialect: CsvDialect, compression: str | None, as_text: bool) -> tuple[pd.DataFrame, list[str]]:
    notes: list[str] = []
    encoding = dialect.encoding or _detect_encoding(path, compression, notes)
    sample = _sample(path, compression, encoding)
    if "\x00" in sample:
        raise IngestError(
            f"{path}: the text read as {encoding} holds NUL characters: it looks like UTF-16 without a byte-order mark; "
            "set --encoding utf-16-le (or utf-16-be)",
            field="--encoding",
        )
    skip = 0
    excel = _EXCEL_SEP.match(sample.split("\n", 1)[0].lstrip("\ufeff"))
    if excel:  # Excel writes "sep=;" as the first line of a CSV it means to be read with that separator
        skip = 1
        sample = sample.split("\n", 1)[1] if "\n" in sample else ""
        if dialect.separator is None:
            notes.append(f"columns separated by {_shown(excel.group(1))} (the file's first line says sep={excel.group(1)})")
    separator = dialect.separator or (excel.group(1) if excel else sniff_separator(sample, path.suffix.lower() == ".tsv"))
    if dialect.separator is None and not excel and separator != ",":
        notes.append(f"columns separated by {_shown(separator)} (detected; set --separator to override)")
    header = _header(path, compression, encoding, separator, skip)
    _check_header(path, header)
    try:
        with _open_binary(path, compression) as raw:
            frame = pd.read_csv(raw, sep=separator, encoding=encoding, skiprows=skip, dtype=str if as_text else None, low_memory=False)
    except UnicodeDecodeError as e:
        raise IngestError(
            f"{path}: not {encoding} text ({e.reason}: byte {e.object[e.start : e.start + 1]!r} at position {e.start}); "
            "set --encoding (e.g. utf-8, cp1252, latin-1)",
            field="--encoding",
        ) from e
    first = str(frame.columns[0])
    for mark in _MOJIBAKE_BOM:
        if first.startswith(mark):  # a BOM read as text (an explicit --encoding that does not expect one)
            frame = frame.rename(columns={first: first.removeprefix(mark)})
            notes.append(
                f"file starts with a UTF-8 byte-order mark read as {mark!r} under {encoding}: removed from the first column's name"
            )
    if len(frame.columns) == 1 and dialect.separator is None:
        notes.append(f"one column only: no separator among {[_shown(c) for c in SEPARATORS]} was found (set --separator)")
    return frame, notes


def _header(path: Path, compression: str | None, encoding: str, separator: str, skip: int) -> list[str]:
    """The header row as written (pandas renames a repeated name to name.1; the check needs the original)."""
    with _open_binary(path, compression) as raw, io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as text:
        for _ in range(skip):
            text.readline()
        return next(csv.reader(text, delimiter=separator), [])


def _check_header(path: Path, header: list[str]) -> None:
    names = [h.strip().lstrip("\ufeff") for h in header]
    repeated = sorted({n for n in names if n and names.count(n) > 1})
    if repeated:
        raise IngestError(
            f"{path}: column name {repeated[0]!r} appears {names.count(repeated[0])} times in the header"
            f"{f' (and {repeated[1:]})' if len(repeated) > 1 else ''}; rename the repeats so that every column has one name",
            field=repeated[0],
        )


def _shown(separator: str) -> str:
    return "tabs" if separator == "\t" else repr(separator)


def _detect_encoding(path: Path, compression: str | None, notes: list[str]) -> str:
    """UTF-8 unless a byte-order mark or the bytes say otherwise (UTF-16 without a mark, else Windows-1252, else Latin-1)."""
    with _open_binary(path, compression) as f:
        head = f.read(4096)
    for bom, encoding in _BOMS:
        if head.startswith(bom):
            name = encoding.upper().replace("-SIG", "")
            if not _decodes(path, compression, encoding):
                raise IngestError(
                    f"{path}: starts with a {name} byte-order mark but is not {name} text throughout; "
                    "set --encoding to the encoding it was written in (e.g. cp1252, latin-1)",
                    field="--encoding",
                )
            notes.append(f"file starts with a {name} byte-order mark (removed from the first column's name)")
            return encoding
    utf16 = _utf16_without_bom(head)
    if utf16:
        notes.append(f"file is UTF-16 without a byte-order mark (every other byte is zero): read as {utf16}; set --encoding if wrong")
        return utf16
    if _decodes(path, compression, "utf-8"):
        return "utf-8"
    encoding = "cp1252" if _decodes(path, compression, "cp1252") else "latin-1"
    notes.append(f"file is not UTF-8: read as {encoding} (Latin-1 family); set --encoding if its text looks wrong")
    return encoding


def _utf16_without_bom(head: bytes) -> str | None:
    """ASCII text in UTF-16 has a zero byte in every other place: the odd ones (little-endian) or the even ones."""
    pairs = len(head) // 2
    if pairs < 8:
        return None
    even, odd = head[0 : 2 * pairs : 2].count(0), head[1 : 2 * pairs : 2].count(0)
    if odd > 0.9 * pairs and even < 0.1 * pairs:
        return "utf-16-le"
    if even > 0.9 * pairs and odd < 0.1 * pairs:
        return "utf-16-be"
    return None


def _decodes(path: Path, compression: str | None, encoding: str) -> bool:
    """Whether the whole file decodes, read in chunks (a large file is never held as text)."""
    decoder = codecs.getincrementaldecoder(encoding)()
    try:
        with _open_binary(path, compression) as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                decoder.decode(chunk)
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def _sample(path: Path, compression: str | None, encoding: str) -> str:
    with _open_binary(path, compression) as raw, io.TextIOWrapper(raw, encoding=encoding, errors="replace", newline="") as f:
        return f.read(SNIFF_BYTES)


def sniff_separator(sample: str, tab_default: bool = False) -> str:
    """The separator among , ; tab | that splits the header into the most columns with every sampled row as wide.

    Quoted fields (with separators or line breaks inside) are parsed as CSV does. A separator that
    splits the header but not the rows consistently (a comma inside unquoted text) loses to one that does.
    """
    lines = sample.splitlines(keepends=True)
    complete = "".join(lines[:-1] if len(lines) > 2 else lines)  # the sample may end mid-line
    best, best_width = ("\t" if tab_default else ","), 1
    for sep in SEPARATORS:
        try:
            rows = [r for r in csv.reader(io.StringIO(complete), delimiter=sep) if r]
        except csv.Error:
            continue
        if not rows or len(rows[0]) < 2:
            continue
        width = len(rows[0])
        consistent = sum(len(r) == width for r in rows[1:]) >= 0.9 * (len(rows) - 1)
        if consistent and width > best_width:
            best, best_width = sep, width
    return best


def _examples(values: pd.Series) -> str:
    shown = [repr(v) for v in values.head(MAX_EXAMPLES).tolist()]
    rows = [str(i + 2) for i in values.head(MAX_EXAMPLES).index]  # +2: header line and 1-based rows
    return f"{', '.join(shown)} (rows {', '.join(rows)})"


def _parse_target(col: pd.Series, name: str) -> pd.Series:
    if col.isna().any():
        raise IngestError(f"target column {name!r} has {int(col.isna().sum())} missing values, e.g. at rows {_examples(col[col.isna()])}")
    if pd.api.types.is_bool_dtype(col):
        return col.astype(np.int64)
    text = col.astype(str).str.strip().str.lower()
    text = text.where(~text.isin(["1.0"]), "1").where(~text.isin(["0.0"]), "0")
    bad = ~text.isin(_TRUE | _FALSE)
    if bad.any():
        raise IngestError(
            f"target column {name!r} must be binary (0/1, true/false, yes/no); found {sorted(set(col[bad].astype(str)))[:MAX_EXAMPLES]} at {_examples(col[bad])}"
        )
    target = text.isin(_TRUE).astype(np.int64)
    if target.nunique() < 2:
        raise IngestError(
            f"target column {name!r} has a single class ({int(target.iloc[0])}); a churn model needs churned and retained rows"
        )
    return target


def _parse_time(col: pd.Series, name: str, day_first: bool | None, notes: list[str]) -> pd.Series:
    if col.isna().any():
        raise IngestError(f"time column {name!r} has {int(col.isna().sum())} missing values, e.g. at rows {_examples(col[col.isna()])}")
    if pd.api.types.is_datetime64_any_dtype(col):
        return pd.to_datetime(col, utc=True)
    text = col.astype(str)
    order = date_order(text, name, day_first)
    if order.note:
        notes.append(order.note)
    parsed = pd.to_datetime(text, utc=True, errors="coerce", format="mixed", dayfirst=order.day_first)
    bad = parsed.isna()
    if bad.any():
        raise IngestError(f"time column {name!r} has values that are not timestamps: {_examples(col[bad])}")
    short = text.str.match(_TWO_DIGIT_YEAR)
    if short.any():  # dateutil puts a two-digit year within 50 years of today: '01/02/69' is 2069
        first = int(np.flatnonzero(short.to_numpy())[0])
        years = parsed[short.to_numpy()].dt.year
        notes.append(
            f"time column {name!r}: two-digit years (e.g. {text.iloc[first]!r} read as {parsed.iloc[first].date()}; years "
            f"{int(years.min())}-{int(years.max())}) are put within 50 years of today; write four-digit years if that is wrong"
        )
    return parsed


@dataclass(frozen=True)
class DateOrder:
    day_first: bool
    note: str | None


def date_order(text: pd.Series, name: str, day_first: bool | None) -> DateOrder:
    """Day or month first for dates such as 03/04/2024, from the values and the option; a contradiction is an error.

    A first field above 12 can only be a day, a second field above 12 only a day; pandas would
    silently swap the fields of such a value and read the rest in the other order.
    """
    fields = text.str.extract(_DAY_MONTH).dropna().astype(int)
    if fields.empty:
        return DateOrder(bool(day_first), None)
    day_rows = text.loc[fields.index[fields[0].to_numpy() > 12]]  # only a day can be above 12
    month_rows = text.loc[fields.index[fields[1].to_numpy() > 12]]
    if len(day_rows) and len(month_rows):
        raise IngestError(
            f"time column {name!r} mixes day-first and month-first dates: {_examples(day_rows)} and {_examples(month_rows)}",
            field="--day-first",
        )
    if day_first is False and len(day_rows):
        raise IngestError(f"time column {name!r} has day-first dates, e.g. {_examples(day_rows)}", field="--month-first")
    if day_first is True and len(month_rows):
        raise IngestError(f"time column {name!r} has month-first dates, e.g. {_examples(month_rows)}", field="--day-first")
    if day_first is not None:
        return DateOrder(day_first, f"time column {name!r}: dates read {'day' if day_first else 'month'} first (as set)")
    if len(day_rows) or len(month_rows):
        first, example = ("day", day_rows.iloc[0]) if len(day_rows) else ("month", month_rows.iloc[0])
        return DateOrder(first == "day", f"time column {name!r}: dates read {first} first (detected from values such as {example!r})")
    example = text.loc[fields.index[0]]
    return DateOrder(
        False,
        f"time column {name!r}: dates such as {example!r} read either way; read month first. Set --day-first or --month-first to say which",
    )


def blanks_to_missing(col: pd.Series) -> tuple[pd.Series, int]:
    """Cells of only whitespace become missing; returns the column and how many there were."""
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return col, 0
    blank = col.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    return col.mask(blank), int(blank.sum())


@dataclass(frozen=True)
class _Distinct:
    """A text column as its distinct normalized values, the row codes that point at them, and their counts."""

    codes: np.ndarray  # per row: index into ``values``, -1 where missing
    values: pd.Series
    counts: np.ndarray
    evidence: numbers.Evidence


def _distinct(col: pd.Series) -> _Distinct:
    codes, uniques = pd.factorize(col, use_na_sentinel=True)
    values = numbers.normalized(pd.Series(uniques, dtype=object))
    counts = np.bincount(codes[codes >= 0], minlength=len(values))
    return _Distinct(codes, values, counts, numbers.evidence(values))


def _rows(col: pd.Series, d: _Distinct, mask: pd.Series) -> pd.Series:
    """The rows of ``col`` whose distinct value ``mask`` selects (for examples with row numbers)."""
    return col[np.isin(d.codes, np.flatnonzero(mask.to_numpy()))]


def _per_row(d: _Distinct, per_value: pd.Series) -> np.ndarray:
    values = per_value.to_numpy(dtype="float64")
    return np.where(d.codes >= 0, values[np.maximum(d.codes, 0)], np.nan)


@dataclass
class _Typed:
    kind: str  # "numeric" | "categorical"
    column: pd.Series
    fmt: numbers.NumberFormat | None = None  # how a text column's numbers were read
    grouped: int = 0  # values read with a thousands mark


def _infer_feature(col: pd.Series, name: str, d: _Distinct | None, in_file: str | None, dialect: CsvDialect, notes: list[str]) -> _Typed:
    """A feature column typed: numeric (its numbers read in the file's format) or categorical."""
    if pd.api.types.is_bool_dtype(col) or pd.api.types.is_numeric_dtype(col):
        return _Typed("numeric", col.astype("float64"))
    if pd.api.types.is_datetime64_any_dtype(col):
        raise IngestError(f"column {name!r} holds timestamps; only the time column may, derive a numeric feature (e.g. days since) first")
    d = d or _distinct(col)
    lower = d.values.str.lower()
    if len(lower) and lower.isin(["true", "false"]).all():
        return _Typed("numeric", pd.Series(_per_row(d, (lower == "true").astype(float)), index=col.index))
    readings = (numbers.NumberFormat(".", ",", "default"), numbers.NumberFormat(",", ".", "default"))
    readable = max(numbers.share(numbers.parse(d.values, f)[0].notna(), d.counts) for f in readings)
    if readable >= NUMERIC_PARSE_SHARE:  # numeric under some reading: which one must be decided, never guessed
        try:
            fmt = numbers.column_format(name, d.evidence, in_file, dialect.decimal, dialect.thousands)
        except numbers.AmbiguousNumbersError as e:
            raise IngestError(e.message, field=e.field) from None
        parsed, grouped = numbers.parse(d.values, fmt)
        parsed_share = numbers.share(parsed.notna(), d.counts)
        if parsed_share == 1.0:
            return _Typed("numeric", pd.Series(_per_row(d, parsed), index=col.index), fmt, grouped)
        if parsed_share >= NUMERIC_PARSE_SHARE:
            bad = _rows(col, d, parsed.isna())
            marks = " (numbers here are read with decimal mark {fmt.decimal!r}: set --decimal or --thousands if they are written otherwise)"
            hint = marks.format(fmt=fmt) if bad.astype(str).str.contains("[.,]").any() else ""
            raise IngestError(f"column {name!r} is numeric but has non-numeric values: {_examples(bad)}{hint}")
    parsed = numbers.parse(d.values, numbers.NumberFormat(in_file or ".", "", "default"))[0]
    like = numbers.number_like(d.values) & parsed.isna()
    looks = numbers.share(like | parsed.notna(), d.counts)
    if looks >= LOOKS_NUMERIC_SHARE and like.any():
        notes.append(
            f"column {name!r}: {looks:.0%} of values look like numbers but not all are plain numbers "
            f"(e.g. {_examples(_rows(col, d, like))}): read as categorical; write them as plain numbers "
            "(no %, currency or parentheses) to use the column as a number"
        )
    return _Typed("categorical", col.astype("string"))


def _number_notes(typed: dict[str, _Typed], texts: dict[str, _Distinct], dialect: CsvDialect) -> list[str]:
    """How the file's numbers were read, once for the file, and for each column a file-wide verdict decided."""
    read = {n: t for n, t in typed.items() if t.fmt is not None}
    notes: list[str] = []
    comma = [t for t in read.values() if t.fmt is not None and t.fmt.decimal == "," and t.fmt.decided_by != "option"]
    if comma and dialect.decimal is None:
        grouping = " and '.' grouping thousands" if any(t.grouped for t in comma) else ""
        notes.append(f"numbers written with a decimal comma{grouping} (detected; set --decimal to override)")
    point_grouped = [n for n, t in read.items() if t.fmt is not None and t.fmt.decimal == "." and t.fmt.thousands == "," and t.grouped]
    if point_grouped and dialect.thousands is None:
        notes.append(f"numbers written with ',' grouping thousands in {point_grouped[:5]} (detected; set --thousands to override)")
    for name, t in read.items():
        ambiguous = texts[name].evidence.ambiguous or {}
        if t.fmt is not None and t.fmt.decided_by == "file" and ambiguous:
            example = next(iter(ambiguous.values()))
            value = float(numbers.parse(pd.Series([example]), t.fmt)[0].iloc[0])
            other = "comma" if t.fmt.decimal == "," else "point"
            notes.append(
                f"column {name!r}: values such as {example!r} read as {value:g}: the file's other columns write decimals with a "
                f"{other} (set --decimal or --thousands if this column is written otherwise)"
            )
    return notes


def _missing_hint(frame: pd.DataFrame) -> str:
    """A header read as one or two merged columns, or garbled, usually means the separator or the encoding is wrong."""
    names = [str(c) for c in frame.columns]
    merged = [n for n in names if any(s in n for s in SEPARATORS)]
    hints = []
    if merged or len(names) <= 2:
        hints.append("if the columns look merged, set --separator (e.g. ';' or '\\t')")
    if any("\x00" in n or "\ufffd" in n for n in names):
        hints.append("the names look garbled: set --encoding (e.g. utf-16-le, cp1252)")
    return f" ({'; '.join(hints)})" if hints else ""


def ingest(path: Path, id_column: str, time_column: str, target_column: str) -> IngestedTable:
    """Read a user's table (its CSV dialect detected), check the key columns and infer feature types."""
    return ingest_table(path, id_column, time_column, target_column, CsvDialect())


def ingest_table(path: Path, id_column: str, time_column: str, target_column: str, dialect: CsvDialect) -> IngestedTable:
    """Read a user's table as ``dialect`` says (what it leaves unset is detected), check the key columns and infer feature types."""
    frame, notes = read_table_noted(path, dialect)
    required = [id_column, time_column, target_column]
    if len(set(required)) < 3:
        raise IngestError(f"id, time and target columns must differ, got {required}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing}; the file has {list(frame.columns)[:20]}{_missing_hint(frame)}")
    ids = frame[id_column]
    if ids.isna().any():
        raise IngestError(f"id column {id_column!r} has {int(ids.isna().sum())} missing values, e.g. at rows {_examples(ids[ids.isna()])}")

    out = pd.DataFrame(
        {
            id_column: ids,
            time_column: _parse_time(frame[time_column], time_column, dialect.day_first, notes),
            target_column: _parse_target(frame[target_column], target_column),
        }
    )
    dup = out.duplicated([id_column, time_column], keep=False)
    if dup.any():
        pairs = out.loc[dup, [id_column, time_column]].head(MAX_EXAMPLES)
        listed = ", ".join(f"({i!r}, {t.isoformat()})" for i, t in pairs.itertuples(index=False))
        raise IngestError(f"{int(dup.sum())} rows share an ({id_column}, {time_column}) key, e.g. {listed}; each key must appear once")

    features: dict[str, pd.Series] = {}
    for name in frame.columns:
        if name in required:
            continue
        col, blanks = blanks_to_missing(frame[name])
        if blanks:
            notes.append(f"column {name!r}: {blanks:,} blank cell{'s' if blanks > 1 else ''} (only whitespace) read as missing values")
        if col.isna().all():
            notes.append(f"column {name!r} is empty in every row and is not used as a feature")
            continue
        features[str(name)] = col
    text = {n: c for n, c in features.items() if pd.api.types.is_object_dtype(c) or pd.api.types.is_string_dtype(c)}
    texts = {n: _distinct(c) for n, c in text.items()}
    in_file = numbers.file_decimal({n: d.evidence for n, d in texts.items()})
    typed = {n: _infer_feature(c, n, texts.get(n), in_file, dialect, notes) for n, c in features.items()}
    notes += _number_notes(typed, texts, dialect)
    numeric = [n for n, t in typed.items() if t.kind == "numeric"]
    categorical = [n for n, t in typed.items() if t.kind == "categorical"]
    out = pd.concat(
        [out, pd.DataFrame({n: t.column for n, t in typed.items()}, index=out.index)], axis=1
    )  # at once: one block per column would fragment
    if not numeric and not categorical:
        raise IngestError(f"{path}: no feature columns besides {required}")
    for note in notes:
        log.warning(note)
    schema = TableSchema(id_column, time_column, target_column, tuple(numeric), tuple(categorical))
    return IngestedTable(frame=out, schema=schema, notes=notes)
