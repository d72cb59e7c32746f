"""Reading single Parquet files synchronously.

``pandas.read_parquet`` goes through Arrow's dataset scanner, whose read-ahead
threads can still be winding down when a short-lived process (a CLI step, a
KFP component) exits; Arrow then aborts during interpreter shutdown with
"terminate called without an active exception" (apache/arrow#34314, #39862).
``ParquetFile`` reads on the calling thread and returns only when it is done.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pd.DataFrame:
    with pq.ParquetFile(path) as f:
        frame: pd.DataFrame = f.read(columns=columns).to_pandas()
    return frame
