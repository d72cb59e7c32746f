"""The prediction log's records: the layout every store shares, Arrow conversion, window and column rules, the store interface.

The stores (``parquet``, ``postgres``) and the writer build on this module; it imports none of them.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import chain
from typing import Protocol, TypeAlias, TypeVar

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from churnops.errors import ConflictError, InvalidInputError

log = logging.getLogger(__name__)

SOURCE_ONLINE = "online"
SOURCE_BATCH = "batch"
SOURCES = (SOURCE_ONLINE, SOURCE_BATCH)

TIME = "time"
FIXED_SCHEMA = pa.schema(
    [
        pa.field(TIME, pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("customer_id", pa.int64()),
        pa.field("model", pa.string(), nullable=False),
        pa.field("model_version", pa.string(), nullable=False),
        pa.field("score", pa.float64(), nullable=False),
        pa.field("risk_band", pa.string(), nullable=False),
        pa.field("request_id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("degraded", pa.bool_(), nullable=False),
    ]
)
FIXED_COLUMNS: tuple[str, ...] = tuple(FIXED_SCHEMA.names)
# Feature names become column names in Parquet and PostgreSQL (63-byte identifiers there).
_FEATURE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

DROP_REASONS = ("queue_full", "closed", "invalid", "rejected", "unwritten_at_close", "erased")  # erased: on a privacy request
US_PER_DAY = 86_400_000_000

Rows: TypeAlias = Sequence[Sequence[object]] | np.ndarray
Columns: TypeAlias = pd.DataFrame | pa.Table | pa.RecordBatch


# --- records ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureLayout:
    """The features of one served model, in the order its rows hold them; created once per model."""

    names: tuple[str, ...]
    categorical: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        for name in self.names:
            if not _FEATURE_NAME.match(name):
                raise InvalidInputError(f"{name!r} is not a usable column name (lower-case letters, digits, _)", field="layout.names")
            if name in FIXED_COLUMNS:
                raise InvalidInputError(f"{name!r} collides with a prediction log column", field="layout.names")
        if len(set(self.names)) != len(self.names):
            raise InvalidInputError("duplicate feature names", field="layout.names")
        unknown = sorted(self.categorical - set(self.names))
        if unknown:
            raise InvalidInputError(f"categorical features {unknown} are not in names", field="layout.categorical")

    def arrow_type(self, name: str) -> pa.DataType:
        return pa.string() if name in self.categorical else pa.float64()

    @cached_property
    def schema(self) -> pa.Schema:
        """The full record schema: fixed columns, then one column per feature."""
        return pa.schema([*FIXED_SCHEMA, *(pa.field(n, self.arrow_type(n)) for n in self.names)])

    @cached_property
    def _hash(self) -> int:
        return hash((self.names, self.categorical))

    def __hash__(self) -> int:  # used as a grouping key per batch; 116 names are worth hashing once
        return self._hash


@dataclass(slots=True, eq=False)
class PredictionBatch:
    """Predictions of one model version made at one time: a request, or one chunk of a batch job.

    ``features`` is either rows in ``layout.names`` order (what the predictor
    holds) or a frame/Arrow table with one column per feature (what the batch
    scorer holds). The log keeps references: do not mutate them, nor the
    batch, afterwards. (Not a frozen dataclass: one is built per request on
    the request path, and frozen fields cost a ``object.__setattr__`` each.)
    """

    model: str
    version: str
    layout: FeatureLayout
    customer_id: Sequence[int | None] | np.ndarray
    score: Sequence[float] | np.ndarray
    risk_band: Sequence[str] | np.ndarray
    request_id: Sequence[str] | np.ndarray
    features: Rows | Columns
    time: float  # seconds since the epoch (UTC)
    source: str = SOURCE_ONLINE
    degraded: bool = False

    def __post_init__(self) -> None:
        if not self.model or not self.version:
            raise InvalidInputError("model and version must be non-empty", field="prediction_log.model")
        n = len(self.score)
        if len(self.customer_id) != n or len(self.risk_band) != n or len(self.request_id) != n:
            name, values = next((k, v) for k, v in self._per_row() if len(v) != n)
            raise InvalidInputError(f"has {len(values)} values for {n} scores", field=f"prediction_log.{name}")
        if self.source not in SOURCES:
            raise InvalidInputError(f"must be one of {SOURCES}, got {self.source!r}", field="prediction_log.source")
        if not math.isfinite(self.time):
            raise InvalidInputError(f"must be a finite epoch time, got {self.time!r}", field="prediction_log.time")
        _check_features(self.features, self.layout, n)

    def _per_row(self) -> tuple[tuple[str, Sequence[object] | np.ndarray], ...]:
        return (("customer_id", self.customer_id), ("risk_band", self.risk_band), ("request_id", self.request_id))

    def __len__(self) -> int:
        return len(self.score)

    @property
    def columnar(self) -> bool:
        return isinstance(self.features, _COLUMNAR)

    @property
    def day(self) -> int:
        """UTC day number (days since the epoch): the partition this batch is written to."""
        return int(self.time // 86_400)

    def slice(self, start: int, stop: int) -> PredictionBatch:
        f = self.features
        part: Rows | Columns
        if isinstance(f, pd.DataFrame):
            part = f.iloc[start:stop]
        elif isinstance(f, pa.Table | pa.RecordBatch):
            part = f.slice(start, stop - start)
        else:
            part = f[start:stop]
        return PredictionBatch(
            self.model,
            self.version,
            self.layout,
            self.customer_id[start:stop],
            self.score[start:stop],
            self.risk_band[start:stop],
            self.request_id[start:stop],
            part,
            self.time,
            self.source,
            self.degraded,
        )


_COLUMNAR = (pd.DataFrame, pa.Table, pa.RecordBatch)


def _check_features(features: Rows | Columns, layout: FeatureLayout, n: int) -> None:
    width = len(layout.names)
    if isinstance(features, _COLUMNAR):
        names = features.columns if isinstance(features, pd.DataFrame) else features.schema.names
        missing = [f for f in layout.names if f not in set(names)]
        if missing:
            raise InvalidInputError(f"lacks feature column(s) {missing[:10]}", field="prediction_log.features")
        if len(features) != n:
            raise InvalidInputError(f"has {len(features)} rows for {n} scores", field="prediction_log.features")
        return
    if len(features) != n:
        raise InvalidInputError(f"has {len(features)} rows for {n} scores", field="prediction_log.features")
    if isinstance(features, np.ndarray):
        if features.ndim != 2 or features.shape[1] != width:
            raise InvalidInputError(f"has shape {features.shape}, expected ({n}, {width})", field="prediction_log.features")
        return
    for i, row in enumerate(features):
        if len(row) != width:
            raise InvalidInputError(f"has {len(row)} values for {width} features", field=f"prediction_log.features[{i}]")


@dataclass(frozen=True)
class SegmentKey:
    """What one written segment holds: one model version and layout, one UTC day."""

    model: str
    version: str
    layout: FeatureLayout
    day: int


# --- pacing --------------------------------------------------------------------------------------


@dataclass
class Pacer:
    """Lets go of the interpreter for ``rest_s`` after each ``every_s`` of work (see the package docstring)."""

    every_s: float = 100e-6
    rest_s: float = 20e-6
    _since: float = 0.0

    def __call__(self) -> None:
        now = time.perf_counter()
        if now - self._since >= self.every_s:
            time.sleep(self.rest_s)  # a positive sleep: the waiting thread must be scheduled before this one takes it back
            self._since = time.perf_counter()


_pacing = threading.local()
T = TypeVar("T")


def pace_this_thread(pacer: Pacer | None) -> None:
    """Make the conversions that run on the calling thread pause with ``pacer`` (None: never)."""
    _pacing.pacer = pacer


def pause() -> None:
    """A point where a paced thread lets others run; free on any other thread."""
    pacer: Pacer | None = getattr(_pacing, "pacer", None)
    if pacer is not None:
        pacer()


def paced(items: Iterable[T], every: int = 1) -> Iterator[T]:
    """``items``, with a ``pause`` before every ``every``-th one (a column is tens of microseconds of work; a row, less)."""
    for i, item in enumerate(items):
        if i % every == 0:
            pause()
        yield item


# --- conversion to Arrow (pure but for pauses) ------------------------------------------------------

PAUSE_ROWS = 128  # a Python loop over rows pauses this often


def _feature_array(values: np.ndarray | pa.Array | pa.ChunkedArray, typ: pa.DataType) -> pa.Array | pa.ChunkedArray:
    if isinstance(values, np.ndarray):
        return pa.array(values, type=typ, from_pandas=True)  # from_pandas: NaN and None become null
    arr = pc.cast(values, typ)
    if pa.types.is_floating(typ):
        arr = pc.if_else(pc.is_nan(arr), pa.scalar(None, typ), arr)
    return arr


def _joined(parts: Sequence[Sequence[object] | np.ndarray], typ: pa.DataType) -> pa.Array:
    """One Arrow array from per-batch value sequences (NumPy arrays are joined without a Python loop)."""
    if all(isinstance(p, np.ndarray) for p in parts):
        arrays = [np.asarray(p) for p in parts]
        return pa.array(arrays[0] if len(arrays) == 1 else np.concatenate(arrays), type=typ, from_pandas=True)
    return pa.array(list(chain.from_iterable(parts)), type=typ, from_pandas=True)


def _fixed_columns(batches: Sequence[PredictionBatch]) -> list[pa.Array]:
    counts = [len(b) for b in batches]

    def repeat(values: list[object], dtype: type) -> np.ndarray:
        return np.repeat(np.array(values, dtype=dtype), counts)

    builders: tuple[Callable[[], pa.Array], ...] = (  # one column each, with a pause before each
        lambda: pa.array(repeat([round(b.time * 1_000_000) for b in batches], np.int64), type=pa.timestamp("us", tz="UTC")),
        lambda: _joined([b.customer_id for b in batches], pa.int64()),
        lambda: pa.array(repeat([b.model for b in batches], object), type=pa.string()),
        lambda: pa.array(repeat([b.version for b in batches], object), type=pa.string()),
        lambda: _joined([b.score for b in batches], pa.float64()),
        lambda: _joined([b.risk_band for b in batches], pa.string()),
        lambda: _joined([b.request_id for b in batches], pa.string()),
        lambda: pa.array(repeat([b.source for b in batches], object), type=pa.string()),
        lambda: pa.array(repeat([b.degraded for b in batches], bool), type=pa.bool_()),
    )
    return [build() for build in paced(builders)]


def _row_features(batches: Sequence[PredictionBatch], layout: FeatureLayout) -> list[pa.Array]:
    n = sum(len(b) for b in batches)
    matrix = np.empty((n, len(layout.names)), dtype=object)
    at = 0
    for b in paced(batches, PAUSE_ROWS):
        matrix[at : at + len(b)] = b.features
        at += len(b)
    by_column = matrix.T.copy()  # contiguous columns for Arrow
    return [_feature_array(by_column[j], layout.arrow_type(name)) for j, name in paced(enumerate(layout.names))]


def _column_features(batch: PredictionBatch) -> list[pa.Array | pa.ChunkedArray]:
    f = batch.features
    layout = batch.layout
    if isinstance(f, pd.DataFrame):
        return [_feature_array(pa.Array.from_pandas(f[name]), layout.arrow_type(name)) for name in paced(layout.names)]
    assert isinstance(f, pa.Table | pa.RecordBatch)
    return [_feature_array(f.column(name), layout.arrow_type(name)) for name in paced(layout.names)]


def to_table(batches: Sequence[PredictionBatch]) -> pa.Table:
    """Batches of one model version and layout as one Arrow table; raises ValueError (or Arrow's error) when a value does not fit."""
    layout = batches[0].layout
    tables: list[pa.Table] = []
    rows = [b for b in batches if not b.columnar]
    if rows:
        tables.append(pa.Table.from_arrays([*_fixed_columns(rows), *_row_features(rows, layout)], schema=layout.schema))
    for b in batches:
        if b.columnar:
            tables.append(pa.Table.from_arrays([*_fixed_columns([b]), *_column_features(b)], schema=layout.schema))
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    for f in FIXED_SCHEMA:
        if not f.nullable and table.column(f.name).null_count:
            raise ValueError(f"{f.name} must not be null")
    return table


_DATA_ERRORS = (pa.ArrowException, ValueError, TypeError)


def to_table_checked(batches: Sequence[PredictionBatch]) -> tuple[pa.Table | None, list[tuple[PredictionBatch, str]]]:
    """Like ``to_table``, but batches whose values do not fit are set aside with the reason instead of failing the rest.

    Bisects on failure, so one bad request among thousands costs a few
    conversions rather than one per batch.
    """
    try:
        return to_table(batches), []
    except _DATA_ERRORS as e:
        if len(batches) == 1:
            return None, [(batches[0], f"{type(e).__name__}: {e}")]
    mid = len(batches) // 2
    left, bad_left = to_table_checked(batches[:mid])
    right, bad_right = to_table_checked(batches[mid:])
    tables = [t for t in (left, right) if t is not None]
    return (pa.concat_tables(tables) if tables else None), bad_left + bad_right


def group(batches: Sequence[PredictionBatch]) -> dict[SegmentKey, list[PredictionBatch]]:
    """Buffered batches by the segment they go to, in arrival order."""
    out: dict[SegmentKey, list[PredictionBatch]] = {}
    for b in paced(batches, PAUSE_ROWS):
        out.setdefault(SegmentKey(b.model, b.version, b.layout, b.day), []).append(b)
    return out


# --- reading helpers (pure) ---------------------------------------------------------------------


def window_us(start: dt.datetime, end: dt.datetime) -> tuple[int, int]:
    """A half-open window [start, end) as epoch microseconds; both ends must carry a time zone."""
    for name, t in (("start", start), ("end", end)):
        if not isinstance(t, dt.datetime):
            raise InvalidInputError(f"must be a datetime, got {type(t).__name__}", field=name)
        if t.tzinfo is None or t.utcoffset() is None:
            raise InvalidInputError("must carry a time zone (use UTC)", field=name)
    if end < start:
        raise InvalidInputError(f"end {end.isoformat()} is before start {start.isoformat()}", field="end")
    return _epoch_us(start), _epoch_us(end)


def _epoch_us(t: dt.datetime) -> int:
    delta = t.astimezone(dt.UTC) - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def empty_frame() -> pd.DataFrame:
    return to_frame(FIXED_SCHEMA.empty_table())


def to_frame(table: pa.Table) -> pd.DataFrame:
    """Rows sorted by time (then request id) as pandas; customer ids stay integers (nullable Int64)."""
    table = table.sort_by([(TIME, "ascending"), ("request_id", "ascending")])
    frame: pd.DataFrame = table.to_pandas(types_mapper={pa.int64(): pd.Int64Dtype()}.get)
    return frame


def arrange(table: pa.Table, layouts: Mapping[tuple[str, str], Sequence[str]]) -> pa.Table:
    """Fixed columns, then the features of the model versions present, by (model, version) and layout order.

    Both stores return the same columns in the same order for the same records,
    whatever order segments were read in.
    """
    present = set(table.column_names)
    order: dict[str, None] = {}
    for key in sorted(layouts):
        order.update((n, None) for n in layouts[key] if n in present)
    return table.select([*FIXED_COLUMNS, *order])


def concat(tables: Sequence[pa.Table]) -> pa.Table:
    """Segments of several layouts side by side: a feature absent from a segment is null there."""
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
        raise ConflictError(
            f"segments disagree on a column's type ({e}); read one model version at a time", field="prediction_log"
        ) from None


# --- stores ---------------------------------------------------------------------------------------


class LogStore(Protocol):
    """Where the writer puts segments and where monitoring reads them back."""

    @property
    def sink(self) -> str: ...  # the metrics' sink label

    def write(self, key: SegmentKey, table: pa.Table) -> None:
        """Commit ``table`` atomically (all rows or none); InvalidInputError if it can never be accepted."""

    def read_window(
        self,
        start: dt.datetime,
        end: dt.datetime,
        model: str | None = None,
        version: str | None = None,
        features: Sequence[str] | None = None,
    ) -> pd.DataFrame: ...

    def erase_customer(self, customer_id: int) -> int: ...

    def close(self) -> None: ...
