"""Bring your own data: read a user's CSV or Parquet table and infer its schema.

The table needs an id column, a timestamp column and a binary target column;
every other column is a numeric or categorical feature. Problems are reported
as ``IngestError`` with a message that names the file, the column and
examples of the offending values, never as a stack trace from deep in pandas.

Spreadsheet and database exports often write a missing value as a blank (one
or more spaces) rather than an empty cell. Such cells are missing values, not
text: they are counted in the notes, and only real text in a numeric column
stops ingestion.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from churnops.data.parquet import read_parquet
from churnops.errors import InvalidInputError

log = logging.getLogger(__name__)

_TRUE = {"1", "true", "yes", "y", "t", "churned"}
_FALSE = {"0", "false", "no", "n", "f", "retained", "active"}
NUMERIC_PARSE_SHARE = 0.95  # a text column this numeric is taken as a numeric column with typos
MAX_EXAMPLES = 5


class IngestError(InvalidInputError):
    """The input table cannot be used; the message says what is wrong and where."""


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


def read_table(path: Path) -> pd.DataFrame:
    """Read CSV or Parquet by extension; empty or unreadable files raise ``IngestError``."""
    if not path.exists():
        raise IngestError(f"{path}: file not found")
    if path.is_dir():
        raise IngestError(f"{path}: is a directory, expected a .csv or .parquet file")
    if path.stat().st_size == 0:
        raise IngestError(f"{path}: file is empty")
    suffix = path.suffix.lower()
    try:
        if suffix in (".csv", ".txt"):
            frame = pd.read_csv(path, low_memory=False)
        elif suffix in (".parquet", ".pq"):
            frame = read_parquet(path)
        else:
            raise IngestError(f"{path}: unsupported file type {suffix!r}; use .csv or .parquet")
    except pd.errors.EmptyDataError as e:
        raise IngestError(f"{path}: file is empty (no header and no rows)") from e
    except (pd.errors.ParserError, UnicodeDecodeError, OSError, ValueError) as e:
        if isinstance(e, IngestError):
            raise
        raise IngestError(f"{path}: cannot be read as {suffix[1:]}: {e}") from e
    if frame.empty:
        raise IngestError(f"{path}: file has a header but no data rows")
    return frame


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


def _parse_time(col: pd.Series, name: str) -> pd.Series:
    if col.isna().any():
        raise IngestError(f"time column {name!r} has {int(col.isna().sum())} missing values, e.g. at rows {_examples(col[col.isna()])}")
    if pd.api.types.is_datetime64_any_dtype(col):
        parsed = pd.to_datetime(col, utc=True)
    else:
        parsed = pd.to_datetime(col, utc=True, errors="coerce", format="mixed")
    bad = parsed.isna()
    if bad.any():
        raise IngestError(f"time column {name!r} has values that are not timestamps: {_examples(col[bad])}")
    return parsed


def blanks_to_missing(col: pd.Series) -> tuple[pd.Series, int]:
    """Cells of only whitespace become missing; returns the column and how many there were."""
    if not (pd.api.types.is_object_dtype(col) or pd.api.types.is_string_dtype(col)):
        return col, 0
    blank = col.map(lambda v: isinstance(v, str) and not v.strip()).astype(bool)
    return col.mask(blank), int(blank.sum())


def _infer_feature(col: pd.Series, name: str) -> tuple[str, pd.Series]:
    """Return ("numeric" | "categorical", converted column)."""
    if pd.api.types.is_bool_dtype(col):
        return "numeric", col.astype("float64")
    if pd.api.types.is_numeric_dtype(col):
        return "numeric", col.astype("float64")
    if pd.api.types.is_datetime64_any_dtype(col):
        raise IngestError(f"column {name!r} holds timestamps; only the time column may, derive a numeric feature (e.g. days since) first")
    present = col.dropna()
    numbers = pd.to_numeric(present, errors="coerce")
    parsed_share = float(numbers.notna().mean()) if len(present) else 0.0
    if parsed_share == 1.0:
        return "numeric", pd.to_numeric(col, errors="coerce").astype("float64")
    if parsed_share >= NUMERIC_PARSE_SHARE:
        bad = present[numbers.isna()]
        raise IngestError(f"column {name!r} is numeric but has non-numeric values: {_examples(bad)}")
    return "categorical", col.astype("string")


def ingest(path: Path, id_column: str, time_column: str, target_column: str) -> IngestedTable:
    """Read a user's table, check the key columns and infer feature types."""
    frame = read_table(path)
    required = [id_column, time_column, target_column]
    if len(set(required)) < 3:
        raise IngestError(f"id, time and target columns must differ, got {required}")
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise IngestError(f"{path}: missing column(s) {missing}; the file has {list(frame.columns)[:20]}")
    ids = frame[id_column]
    if ids.isna().any():
        raise IngestError(f"id column {id_column!r} has {int(ids.isna().sum())} missing values, e.g. at rows {_examples(ids[ids.isna()])}")

    out = pd.DataFrame(
        {
            id_column: ids,
            time_column: _parse_time(frame[time_column], time_column),
            target_column: _parse_target(frame[target_column], target_column),
        }
    )
    dup = out.duplicated([id_column, time_column], keep=False)
    if dup.any():
        pairs = out.loc[dup, [id_column, time_column]].head(MAX_EXAMPLES)
        listed = ", ".join(f"({i!r}, {t.isoformat()})" for i, t in pairs.itertuples(index=False))
        raise IngestError(f"{int(dup.sum())} rows share an ({id_column}, {time_column}) key, e.g. {listed}; each key must appear once")

    numeric: list[str] = []
    categorical: list[str] = []
    notes: list[str] = []
    for name in frame.columns:
        if name in required:
            continue
        col, blanks = blanks_to_missing(frame[name])
        if blanks:
            notes.append(f"column {name!r}: {blanks:,} blank cell{'s' if blanks > 1 else ''} (only whitespace) read as missing values")
        if col.isna().all():
            notes.append(f"column {name!r} is empty in every row and is not used as a feature")
            continue
        kind, converted = _infer_feature(col, name)
        out[name] = converted
        (numeric if kind == "numeric" else categorical).append(name)
    if not numeric and not categorical:
        raise IngestError(f"{path}: no feature columns besides {required}")
    for note in notes:
        log.warning(note)
    schema = TableSchema(id_column, time_column, target_column, tuple(numeric), tuple(categorical))
    return IngestedTable(frame=out, schema=schema, notes=notes)
