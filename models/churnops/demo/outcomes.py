"""What the demo knows that production only learns later: the served customers' outcomes.

The served population is the last labelled snapshot of the simulation, so each
served customer's 30-day outcome is known. The demo releases those outcomes
into ``<data-dir>/labels/`` only after it has predicted for a while ("labels
arrive late"), stamped with the start of the observation window they close, in
the layout ``churnops monitor performance`` and the rollout runner read.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pandas as pd

from churnops.data.raw import read_calendar, read_raw
from churnops.data.schema import ENTITY, TARGET, TIMESTAMP


def served_outcomes(raw_dir: Path, serve_day: int) -> pd.DataFrame:
    """(customer_id, churned_30d) of every customer in the served snapshot."""
    labels = read_raw(raw_dir, "labels")
    at = read_calendar(raw_dir).day_timestamp(serve_day)
    served = labels.loc[labels[TIMESTAMP] == at, [ENTITY, TARGET]]
    return served.reset_index(drop=True)


def release(outcomes: pd.DataFrame, window_start: dt.datetime, labels_dir: Path, name: str) -> Path:
    """Write outcomes as observed for the 30-day window starting at ``window_start`` (atomically: readers poll)."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    frame = outcomes.assign(**{TIMESTAMP: pd.Timestamp(window_start)})[[ENTITY, TIMESTAMP, TARGET]]
    path = labels_dir / f"{name}.parquet"
    tmp = labels_dir / f".{name}.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path
