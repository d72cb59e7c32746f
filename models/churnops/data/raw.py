"""Reading and writing the raw tables and their calendar under ``<data-dir>/raw``.

Each table is a folder of Parquet parts (``<table>/part-NNNNN.parquet``); parts
with the same name across tables hold the same customers, so the feature
engine can work one block of customers at a time. ``calendar.json`` records the
calendar the tables follow (``churnops.data.schema.Calendar``).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import asdict
from pathlib import Path

import pandas as pd

from churnops.data.parquet import read_parquet
from churnops.data.schema import Calendar
from churnops.errors import NotFoundError

CALENDAR_FILE = "calendar.json"


def parts(raw_dir: Path, table: str) -> list[Path]:
    return sorted((raw_dir / table).glob("part-*.parquet"))


def raw_bytes(raw_dir: Path) -> int:
    """Bytes of every raw table's parts: the input size an engine choice weighs."""
    return sum(p.stat().st_size for p in raw_dir.glob("*/part-*.parquet"))


def read_raw(raw_dir: Path, table: str) -> pd.DataFrame:
    """Read one raw table (all parts)."""
    found = parts(raw_dir, table)
    if not found:
        raise NotFoundError(f"no parts of table {table!r} under {raw_dir / table}; run `churnops data generate` first")
    return pd.concat([read_parquet(p) for p in found], ignore_index=True)


def write_calendar(raw_dir: Path, calendar: Calendar) -> Path:
    path = raw_dir / CALENDAR_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(calendar), indent=2, default=str) + "\n")
    return path


def read_calendar(raw_dir: Path) -> Calendar:
    path = raw_dir / CALENDAR_FILE
    if not path.exists():
        raise NotFoundError(
            f"{path} not found: generate data with `churnops data generate`, or describe your own tables' calendar in that file "
            '(e.g. {"start_date": "2026-01-01", "history_days": 180})'
        )
    doc = json.loads(path.read_text())
    doc["start_date"] = dt.date.fromisoformat(doc["start_date"])
    return Calendar(**doc)


def count_rows(raw_dir: Path, table: str) -> int:
    import pyarrow.parquet as pq  # noqa: PLC0415 - metadata only

    return sum(pq.ParquetFile(p).metadata.num_rows for p in parts(raw_dir, table))
