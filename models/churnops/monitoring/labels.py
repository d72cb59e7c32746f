"""Delayed labels: the outcomes monitoring joins to what the model said.

Layout (what ``churnops monitor performance --labels`` reads and what the
monitoring page picks up from ``<data-dir>/labels/``): CSV or Parquet files
with one row per customer and observation window, columns ``customer_id``,
``event_timestamp`` (the window's start, UTC) and ``churned_30d`` (0 or 1:
churned within the horizon after it). Several files are read as one table;
rows received twice count once.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from churnops.data.ingest import read_table
from churnops.errors import InvalidInputError
from churnops.monitoring.performance import LabelColumns

if TYPE_CHECKING:  # jobs reads labels too: the window type is only named here
    from churnops.monitoring.windows import Window

LABEL_SUFFIXES = (".csv", ".parquet")


def read_labels(path: Path) -> pd.DataFrame:
    """A labels file (CSV or Parquet, see the module docstring) with its three columns checked."""
    frame = read_table(path)
    lc = LabelColumns()
    missing = [c for c in (lc.customer, lc.start, lc.target) if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"required columns are missing: {missing} (have {list(frame.columns)[:10]})", field=str(path))
    return frame[[lc.customer, lc.start, lc.target]]


def label_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith("."))


def read_labels_dir(directory: Path) -> pd.DataFrame | None:
    """Every labels file in ``directory`` as one table; None when there is none."""
    files = label_files(directory)
    if not files:
        return None
    return pd.concat([read_labels(p) for p in files], ignore_index=True)


def labels_for(labels: pd.DataFrame, window: Window, horizon_days: float) -> tuple[pd.DataFrame, int]:
    """Labels whose observation window [ts, ts + horizon) overlaps the prediction window, and how many were left out."""
    lc = LabelColumns()
    try:
        ts = pd.to_datetime(labels[lc.start], utc=True)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"not a timestamp ({e})", field=f"labels.{lc.start}") from None
    keep = (ts < pd.Timestamp(window.end)) & (ts + pd.Timedelta(days=horizon_days) > pd.Timestamp(window.start))
    return labels.loc[keep.to_numpy()], int((~keep).sum())
