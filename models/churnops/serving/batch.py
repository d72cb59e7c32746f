"""Batch scoring: Parquet or CSV in, Parquet out with scores and top-k reasons, in chunks.

The input is streamed (pyarrow batches), so memory stays bounded by the chunk
size whatever the file size. Output columns: the input's id/time columns when
present, ``churn_probability``, ``risk_band``, and for each of the top-k
reasons ``reason_<i>_feature``, ``reason_<i>_value`` (as text) and
``reason_<i>_contribution`` (log-odds). Reasons are exact TreeSHAP evaluated for whole blocks of rows
(``churnops.serving.treeshap``) and chosen per chunk with array operations: a partition per row, and only the
chosen cells formatted as text; no Python object is built per row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from churnops.errors import InvalidInputError
from churnops.serving.explain import CompiledModel
from churnops.serving.inputs import MAX_ABS_VALUE
from churnops.serving.scoring import risk_bands

PASSTHROUGH = ("customer_id", "event_timestamp")


class BatchInputError(InvalidInputError):
    """The input file cannot be scored (unreadable, missing columns, wrong types)."""


@dataclass(frozen=True)
class BatchReport:
    rows: int
    seconds: float
    output: Path
    explained: bool

    @property
    def rows_per_minute(self) -> float:
        return self.rows / self.seconds * 60 if self.seconds > 0 else float("inf")


def _batches(path: Path, model: CompiledModel, chunk_rows: int) -> tuple[Iterator[pa.RecordBatch], int | None]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".parquet":
            pf = pq.ParquetFile(path)
            return pf.iter_batches(batch_size=chunk_rows), pf.metadata.num_rows
        if suffix == ".csv":
            types = {f: (pa.string() if f in model.categorical else pa.float64()) for f in model.features}
            reader = pacsv.open_csv(
                path,
                read_options=pacsv.ReadOptions(block_size=1 << 22),
                convert_options=pacsv.ConvertOptions(column_types=types, strings_can_be_null=True),
            )
            return _rechunk(reader, chunk_rows), None
    except (pa.ArrowInvalid, OSError) as e:
        raise BatchInputError(f"{path}: cannot read: {e}") from None
    raise BatchInputError(f"{path}: unsupported file type {suffix!r}; use .parquet or .csv")


def _rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """CSV blocks are sized in bytes; slice them (zero-copy) to at most ``rows`` rows."""
    for batch in batches:
        for start in range(0, batch.num_rows, rows):
            yield batch.slice(start, rows)


def _check_columns(frame: pd.DataFrame, model: CompiledModel, path: Path) -> None:
    missing = [f for f in model.features if f not in frame.columns]
    if missing:
        raise BatchInputError(f"{path}: missing feature column(s) {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    for f in model.features:
        if f in model.categorical:
            continue
        if not (pd.api.types.is_numeric_dtype(frame[f]) or frame[f].isna().all()):
            raise BatchInputError(f"{path}: column {f!r} must be numeric, found {frame[f].dtype}")
        values = pd.to_numeric(frame[f]).to_numpy(dtype=np.float64, na_value=np.nan)
        bad = ~np.isnan(values) & ~(np.abs(values) <= MAX_ABS_VALUE)
        if bad.any():
            raise BatchInputError(f"{path}: column {f!r} has {int(bad.sum())} infinite or out-of-range value(s)")


def score_chunk(model: CompiledModel, frame: pd.DataFrame, threshold: float, top_k: int) -> pd.DataFrame:
    # the columns as they are (a timezone-aware timestamp through to_numpy() becomes one Python object per row)
    out = frame.loc[:, [c for c in PASSTHROUGH if c in frame.columns]].reset_index(drop=True)
    explain = top_k > 0 and model.explainable
    scored = model.explain(frame, vectorised=True) if explain else model.predict(frame)
    out["churn_probability"] = scored.probability
    out["risk_band"] = risk_bands(scored.probability, threshold)
    if explain:
        assert scored.contributions is not None
        idx, contributions = top_k_by_magnitude(scored.contributions, top_k)
        names = np.asarray(model.features, dtype=object)
        values = reason_values(frame, model.features, idx)
        for i in range(idx.shape[1]):
            out[f"reason_{i + 1}_feature"] = names[idx[:, i]]
            out[f"reason_{i + 1}_value"] = values[:, i]
            out[f"reason_{i + 1}_contribution"] = contributions[:, i]
    return out


def top_k_by_magnitude(contributions: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the columns of the k largest |contribution| (strongest first, ties by column) and their values."""
    k = min(k, contributions.shape[1])
    magnitude = np.abs(contributions)
    # a partition of each row, then a sort of its k survivors only
    idx = np.argpartition(-magnitude, k - 1, axis=1)[:, :k] if k < contributions.shape[1] else np.tile(np.arange(k), (len(magnitude), 1))
    idx.sort(axis=1)  # ties keep the column order, as a stable sort of the whole row would
    order = np.argsort(-np.take_along_axis(magnitude, idx, axis=1), axis=1, kind="stable")
    idx = np.take_along_axis(idx, order, axis=1)
    return idx, np.take_along_axis(contributions, idx, axis=1)


def reason_values(frame: pd.DataFrame, features: list[str], idx: np.ndarray) -> np.ndarray:
    """The input values of the chosen features as text (None when missing): only those cells are converted."""
    out = np.full(idx.shape, None, dtype=object)
    for j in np.unique(idx):
        where = idx == j
        rows = where.any(axis=1)
        column = frame[features[j]].iloc[rows]
        text = column.astype(str).to_numpy(dtype=object)  # str() of each value, as pandas' "string" dtype writes them
        text[column.isna().to_numpy()] = None
        out[where] = text  # a row names a feature at most once: one slot per chosen row, in row order
    return out


def score_file(
    model: CompiledModel,
    threshold: float,
    src: Path,
    dst: Path,
    chunk_rows: int = 50_000,
    top_k: int = 5,
    progress: Callable[[int, int | None], Any] | None = None,
    on_chunk: Callable[[pd.DataFrame, pd.DataFrame, int], Any] | None = None,
) -> BatchReport:
    """Score ``src`` into ``dst`` (Parquet). Per chunk, ``progress(rows_done, total_or_None)`` is called, and
    ``on_chunk(inputs, scores, first_row)`` (the prediction log's hook)."""
    if chunk_rows < 1:
        raise InvalidInputError("chunk_rows must be at least 1")
    batches, total = _batches(src, model, chunk_rows)
    return write_scores(model, threshold, batches, total, src, dst, top_k, progress, on_chunk)


def write_scores(
    model: CompiledModel,
    threshold: float,
    batches: Iterator[pa.RecordBatch],
    total: int | None,
    src: Path,
    dst: Path,
    top_k: int = 5,
    progress: Callable[[int, int | None], Any] | None = None,
    on_chunk: Callable[[pd.DataFrame, pd.DataFrame, int], Any] | None = None,
    first_row: int = 0,
) -> BatchReport:
    """Score ``batches`` (read from ``src``) into ``dst``; ``first_row`` is the first batch's row in the whole input."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    writer: pq.ParquetWriter | None = None
    done = 0
    t0 = time.perf_counter()
    try:
        for batch in batches:
            frame = batch.to_pandas()
            if frame.empty:
                continue
            _check_columns(frame, model, src)
            scored = score_chunk(model, frame, threshold, top_k)
            if on_chunk is not None:
                on_chunk(frame, scored, first_row + done)
            table = pa.Table.from_pandas(scored, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema, compression="zstd")
            writer.write_table(table)
            done += len(frame)
            if progress is not None:
                progress(done, total)
    except BaseException as e:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        if isinstance(e, pa.ArrowInvalid):
            raise BatchInputError(f"{src}: {e}") from None
        raise
    if writer is None:
        raise BatchInputError(f"{src}: no rows to score")
    writer.close()
    tmp.replace(dst)  # a reader never sees a half-written output
    return BatchReport(done, time.perf_counter() - t0, dst, top_k > 0 and model.explainable)
