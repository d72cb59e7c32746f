"""The prediction log: every online prediction and batch score, with the feature values it used.

Drift, delayed-label performance, business and fairness monitoring all start
from what the model actually saw and said. The audit trail keeps a digest of
each feature record so it can prove integrity; this log keeps the values so
monitoring can compute statistics on them, and a customer's rows can be
erased here on a privacy request without touching the hash chain.

Record layout (one row per scored customer, the same in every store):
``time`` (UTC, microseconds), ``customer_id`` (null when features were sent
without an id), ``model``, ``model_version``, ``score``, ``risk_band``,
``request_id``, ``source`` (online or batch), ``degraded``, then one typed
column per model feature named after the feature: float64 for numeric
features (a missing value or NaN is null) and string for categorical ones.
Typed columns rather than a JSON or struct blob because monitoring reads
features back by column: Parquet and PostgreSQL then read only the columns a
statistic needs, compress each column on its own, and hand Arrow arrays to
pandas without parsing text per row.

Writing (``PredictionLog``): ``record``/``record_many`` append a reference to
the caller's arrays to a bounded in-memory buffer and return (O(1), no I/O);
a background thread converts buffered batches to Arrow and hands them to the
store every ``flush_interval_s`` or as soon as ``flush_records`` rows wait.
- Full buffer: ``record`` waits at most ``max_block_s`` for room, then drops
  the records, counts them in ``churnops_prediction_log_dropped_total
  {reason="queue_full"}``, logs a warning (rate-limited) and returns False.
  Rows whose values do not fit their column type are dropped as
  ``invalid``, rows a store refuses for good as ``rejected``; nothing is lost
  without being counted.
- A failing store (disk full, PostgreSQL down) keeps the rows in the buffer
  and is retried with backoff; they still count against the capacity, so
  memory stays bounded and the overflow shows up as drops.
- Clean stop: ``close()`` drains the buffer (rows still unwritten when its
  timeout ends are counted as ``unwritten_at_close``).
- Crash (SIGKILL, OOM kill): the rows lost are exactly those accepted since
  the last completed flush began, i.e. at most one flush interval plus that
  flush's duration (plus any backoff while the store was failing). Each flush
  commits whole segments: a Parquet segment is written under a hidden
  temporary name, fsynced and renamed; a PostgreSQL flush is one COPY in one
  transaction.

Stores (``LogStore``): ``predlog_parquet.ParquetStore`` (embedded mode) and
``predlog_postgres.PostgresStore`` (cluster mode). Both read windows back
with ``read_window`` and erase a customer with ``erase_customer``; this
module holds what they share (record layout, Arrow conversion, window and
column rules) and imports neither.
"""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import math
import re
import threading
import time as _time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from itertools import chain
from typing import Protocol, TypeAlias

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge

from churnops.errors import ChurnOpsError, ConflictError, InvalidInputError, UnavailableError
from churnops_contract import metrics as c

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

DROP_REASONS = ("queue_full", "closed", "invalid", "rejected", "unwritten_at_close")
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


# --- conversion to Arrow (pure) -----------------------------------------------------------------


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

    return [
        pa.array(repeat([round(b.time * 1_000_000) for b in batches], np.int64), type=pa.timestamp("us", tz="UTC")),
        _joined([b.customer_id for b in batches], pa.int64()),
        pa.array(repeat([b.model for b in batches], object), type=pa.string()),
        pa.array(repeat([b.version for b in batches], object), type=pa.string()),
        _joined([b.score for b in batches], pa.float64()),
        _joined([b.risk_band for b in batches], pa.string()),
        _joined([b.request_id for b in batches], pa.string()),
        pa.array(repeat([b.source for b in batches], object), type=pa.string()),
        pa.array(repeat([b.degraded for b in batches], bool), type=pa.bool_()),
    ]


def _row_features(batches: Sequence[PredictionBatch], layout: FeatureLayout) -> list[pa.Array]:
    n = sum(len(b) for b in batches)
    matrix = np.empty((n, len(layout.names)), dtype=object)
    at = 0
    for b in batches:
        matrix[at : at + len(b)] = b.features
        at += len(b)
    by_column = matrix.T.copy()  # contiguous columns for Arrow
    return [_feature_array(by_column[j], layout.arrow_type(name)) for j, name in enumerate(layout.names)]


def _column_features(batch: PredictionBatch) -> list[pa.Array | pa.ChunkedArray]:
    f = batch.features
    layout = batch.layout
    if isinstance(f, pd.DataFrame):
        return [_feature_array(pa.Array.from_pandas(f[name]), layout.arrow_type(name)) for name in layout.names]
    assert isinstance(f, pa.Table | pa.RecordBatch)
    return [_feature_array(f.column(name), layout.arrow_type(name)) for name in layout.names]


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
    for b in batches:
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


# --- the writer ---------------------------------------------------------------------------------------


class PredictionLogMetrics:
    """The prediction log's series, per the metrics contract (labelled by sink)."""

    def __init__(self, registry: CollectorRegistry, sink: str) -> None:
        self.records = Counter(c.PREDICTION_LOG_RECORDS, "Prediction log records written", [c.LABEL_SINK], registry=registry).labels(sink)
        dropped = Counter(c.PREDICTION_LOG_DROPPED, "Prediction log records dropped", [c.LABEL_SINK, c.LABEL_REASON], registry=registry)
        self.dropped = {reason: dropped.labels(sink, reason) for reason in DROP_REASONS}
        self.last_flush = Gauge(
            c.PREDICTION_LOG_LAST_FLUSH, "When the prediction log last completed a flush", [c.LABEL_SINK], registry=registry
        ).labels(sink)
        self.queue = Gauge(
            c.PREDICTION_LOG_QUEUE, "Prediction log records waiting to be written", [c.LABEL_SINK], registry=registry
        ).labels(sink)


@dataclass
class _Throttle:
    """At most one log line per ``every_s`` per key, with the count of what was held back."""

    every_s: float = 10.0
    _last: dict[str, float] = field(default_factory=dict)
    _held: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)  # producers and the flusher both report

    def __call__(self, key: str, n: int = 1) -> int | None:
        now = _time.monotonic()
        with self._lock:
            self._held[key] = self._held.get(key, 0) + n
            if now - self._last.get(key, -1e18) < self.every_s:
                return None
            self._last[key] = now
            return self._held.pop(key)


class PredictionLog:
    """Off-the-request-path writer of the prediction log (see the module docstring for its guarantees).

    One per process and store; thread-safe. Construct it at the entry point,
    call ``record``/``record_many`` from request handlers and ``close`` on
    shutdown (an interpreter exit without ``close`` still drains it).
    """

    def __init__(
        self,
        store: LogStore,
        registry: CollectorRegistry,
        *,
        flush_interval_s: float = 1.0,
        flush_records: int = 20_000,
        capacity: int = 100_000,
        max_block_s: float = 0.005,
        close_timeout_s: float = 30.0,
        max_backoff_s: float = 30.0,
        clock: Callable[[], float] = _time.time,
    ) -> None:
        if flush_interval_s <= 0 or flush_records < 1 or capacity < 1 or max_block_s < 0 or close_timeout_s < 0:
            raise InvalidInputError(
                "flush_interval_s, flush_records and capacity must be positive; timeouts not negative", field="prediction_log"
            )
        self.store = store
        self.flush_interval_s = flush_interval_s
        self.flush_records = flush_records
        self.capacity = capacity
        self.max_block_s = max_block_s
        self.close_timeout_s = close_timeout_s
        self.max_backoff_s = max_backoff_s
        self.clock = clock
        self.metrics = PredictionLogMetrics(registry, store.sink)
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)  # the flusher waits here
        self._space = threading.Condition(self._lock)  # producers wait here when the buffer is full
        self._done = threading.Condition(self._lock)  # flush() waits here
        self._buffer: deque[PredictionBatch] = deque()
        self._size = 0  # rows in the buffer, including rows a failed flush will retry
        self._accepted = 0  # rows ever accepted
        self._handled = 0  # rows ever written or dropped after acceptance
        self._flush_wanted = False
        self._closing = False
        self._close_deadline = float("inf")
        self._last_error: str | None = None
        self._throttle = _Throttle()
        self.metrics.queue.set_function(lambda: self._size)
        # Arrow imports its pandas bridge on first use; do it now, not in a flush at interpreter exit (imports fail then).
        pa.array(np.empty(0, dtype=object), type=pa.float64(), from_pandas=True)
        self._thread = threading.Thread(target=self._run, name=f"prediction-log-{store.sink}", daemon=True)
        self._thread.start()
        self._atexit = _closer(weakref.ref(self))
        atexit.register(self._atexit)

    # producers
    def record(
        self,
        *,
        model: str,
        version: str,
        layout: FeatureLayout,
        customer_id: int | None,
        score: float,
        risk_band: str,
        request_id: str,
        values: Sequence[object] | np.ndarray,
        time: float | None = None,
        source: str = SOURCE_ONLINE,
        degraded: bool = False,
    ) -> bool:
        """Log one prediction (``values`` in ``layout.names`` order); False when it was dropped (counted)."""
        batch = PredictionBatch(
            model,
            version,
            layout,
            (customer_id,),
            (score,),
            (risk_band,),
            (request_id,),
            (values,),
            self.clock() if time is None else time,
            source,
            degraded,
        )
        return self._offer(batch, self.max_block_s)

    def record_many(self, batch: PredictionBatch, timeout_s: float | None = None) -> int:
        """Log a batch; waits up to ``timeout_s`` (default ``max_block_s``) per chunk for room. Returns rows accepted."""
        wait = self.max_block_s if timeout_s is None else timeout_s
        n = len(batch)
        if n <= self.capacity:
            return n if self._offer(batch, wait) else 0
        step = max(1, self.capacity // 2)  # a batch larger than the buffer goes in pieces
        return sum(min(step, n - i) for i in range(0, n, step) if self._offer(batch.slice(i, min(i + step, n)), wait))

    def _offer(self, batch: PredictionBatch, wait_s: float) -> bool:
        n = len(batch)
        if n == 0:
            return True
        with self._lock:
            if self._size + n > self.capacity and not self._closing:
                deadline = _time.monotonic() + wait_s
                while self._size + n > self.capacity and not self._closing:
                    remaining = deadline - _time.monotonic()
                    if remaining <= 0:
                        break
                    self._space.wait(remaining)
            if self._closing or self._size + n > self.capacity:
                reason = "closed" if self._closing else "queue_full"
            else:
                self._buffer.append(batch)
                before = self._size
                self._size += n
                self._accepted += n
                if before < self.flush_records <= self._size:
                    self._wake.notify()
                return True
        self._drop(reason, n)
        return False

    # flushing
    def flush(self, timeout_s: float = 30.0) -> None:
        """Return once every record accepted before the call is written (or dropped and counted)."""
        deadline = _time.monotonic() + timeout_s
        with self._lock:
            target = self._accepted
            self._flush_wanted = True
            self._wake.notify()
            while self._handled < target:
                remaining = deadline - _time.monotonic()
                if remaining <= 0 or not self._thread.is_alive():
                    raise UnavailableError(
                        f"{target - self._handled} records not written within {timeout_s:g} s (last error: {self._last_error})",
                        field=f"prediction_log.{self.store.sink}",
                    )
                self._done.wait(min(remaining, 0.5))

    def close(self, timeout_s: float | None = None) -> None:
        """Stop accepting, write what is buffered, stop the flusher; idempotent."""
        with self._lock:
            if self._closing and not self._thread.is_alive():
                return
            self._closing = True
            self._close_deadline = _time.monotonic() + (self.close_timeout_s if timeout_s is None else timeout_s)
            self._wake.notify()
            self._space.notify_all()
        self._thread.join(timeout=max(0.0, self._close_deadline - _time.monotonic()) + 5.0)
        if self._thread.is_alive():  # the store hangs inside a write: give up on what is buffered, but say so
            with self._lock:
                left = self._size
                self._buffer.clear()
                self._size = 0
                self._handled += left
                self._done.notify_all()
            self._drop("unwritten_at_close", left, f"the {self.store.sink} store did not finish a write")
        atexit.unregister(self._atexit)
        self.store.close()

    def __enter__(self) -> PredictionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # reading and privacy go straight to the store
    def read_window(
        self,
        start: dt.datetime,
        end: dt.datetime,
        model: str | None = None,
        version: str | None = None,
        features: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        return self.store.read_window(start, end, model, version, features)

    def erase_customer(self, customer_id: int) -> int:
        """Write what is buffered, then remove the customer's records from the store; returns how many."""
        self.flush()
        return self.store.erase_customer(customer_id)

    # the flusher thread
    def _run(self) -> None:
        failures = 0
        next_at = _time.monotonic() + self.flush_interval_s
        while True:
            with self._lock:
                while not (self._closing or self._flush_wanted or self._size >= self.flush_records):
                    remaining = next_at - _time.monotonic()
                    if remaining <= 0:
                        break
                    self._wake.wait(remaining)
                pending = list(self._buffer)
                closing = self._closing
                self._flush_wanted = False
            try:
                ok = self._flush(pending)
            except Exception as e:  # a bug must not stop the flusher: the rows stay buffered and the failure is reported
                log.exception("prediction log (%s): flush failed unexpectedly", self.store.sink)
                ok = self._failed(e)
            failures = 0 if ok else failures + 1
            backoff = min(self.max_backoff_s, self.flush_interval_s * 2**failures) if failures else self.flush_interval_s
            next_at = _time.monotonic() + backoff
            if closing and (ok or _time.monotonic() >= self._close_deadline):
                break
            if closing:
                _time.sleep(min(backoff, max(0.0, self._close_deadline - _time.monotonic())))
        with self._lock:
            left = self._size
            self._buffer.clear()
            self._size = 0
            self._handled += left
            self._done.notify_all()
        if left:
            self._drop("unwritten_at_close", left)

    def _flush(self, pending: list[PredictionBatch]) -> bool:
        """Write pending batches segment by segment; False (keep the rest buffered) when the store fails."""
        done: list[PredictionBatch] = []
        written = 0
        ok = True
        for key, batches in group(pending).items():
            table, bad = to_table_checked(batches)
            for b, why in bad:
                self._drop("invalid", len(b), why)
                done.append(b)
            good = [b for b in batches if all(b is not x for x, _ in bad)]
            if table is None:
                continue
            try:
                self.store.write(key, table)
            except ChurnOpsError as e:
                if not isinstance(e, InvalidInputError | ConflictError):
                    ok = self._failed(e)
                    break
                self._drop("rejected", table.num_rows, str(e))
            except Exception as e:  # the store's own errors (OSError, psycopg.Error, ...): retried
                ok = self._failed(e)
                break
            else:
                written += table.num_rows
            done.extend(good)
        self._commit(done)
        if written:
            self.metrics.records.inc(written)
        if ok:
            self.metrics.last_flush.set(self.clock())
        return ok

    def _failed(self, e: Exception) -> bool:
        self._last_error = f"{type(e).__name__}: {e}"
        held = self._throttle("write_failed")
        if held is not None:
            log.error("prediction log (%s): write failed %d time(s), records kept for retry: %s", self.store.sink, held, self._last_error)
        return False

    def _commit(self, done: list[PredictionBatch]) -> None:
        if not done:
            return
        ids = {id(b) for b in done}
        total = sum(len(b) for b in done)
        with self._lock:
            rows = 0
            # Only the flusher removes batches, and it took a prefix of the buffer: usually that prefix is done.
            while self._buffer and id(self._buffer[0]) in ids:
                rows += len(self._buffer.popleft())
            if rows < total:  # a later batch is done while an earlier one waits for a retry
                keep: deque[PredictionBatch] = deque()
                for b in self._buffer:
                    if id(b) in ids:
                        rows += len(b)
                    else:
                        keep.append(b)
                self._buffer = keep
            self._size -= rows
            self._handled += rows
            self._space.notify_all()
            self._done.notify_all()

    def _drop(self, reason: str, n: int, why: str = "") -> None:
        self.metrics.dropped[reason].inc(n)
        held = self._throttle(f"drop:{reason}", n)
        if held is not None:
            log.warning("prediction log (%s): dropped %d record(s) (%s)%s", self.store.sink, held, reason, f": {why}" if why else "")


def _closer(ref: weakref.ReferenceType[PredictionLog]) -> Callable[[], None]:
    def close() -> None:
        plog = ref()
        if plog is not None:
            plog.close()

    return close
