"""The prediction log's writer: a bounded buffer flushed by a background thread (see the package docstring for its guarantees)."""

from __future__ import annotations

import atexit
import datetime as dt
import logging
import threading
import time as _time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from prometheus_client import CollectorRegistry, Counter, Gauge

from churnops.errors import ChurnOpsError, ConflictError, InvalidInputError, UnavailableError
from churnops.monitoring.predlog.records import (
    DROP_REASONS,
    SOURCE_ONLINE,
    FeatureLayout,
    LogStore,
    Pacer,
    PredictionBatch,
    group,
    pace_this_thread,
    to_table_checked,
)
from churnops_contract import metric_names as c

log = logging.getLogger(__name__)


class Suppressor(Protocol):
    """The suppression list of erased customers (``churnops.privacy.cached.Suppression``)."""

    def erased(self, customer_ids: Iterable[int]) -> set[int]:
        """The ids among ``customer_ids`` that belong to erased customers."""


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
        suppressor: Suppressor | None = None,
        pacer: Pacer | None = None,
    ) -> None:
        """``suppressor``: rows of customers it names are dropped at flush (counted as ``erased``), also rows buffered before
        their erasure. ``pacer``: the flusher lets go of the interpreter this often while it converts, for a process
        that answers requests beside it (None: it converts flat out, as a batch job wants)."""
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
        self.suppressor = suppressor
        self.pacer = pacer
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
        pace_this_thread(self.pacer)
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
            erased = 0
            try:
                # checked at every flush, right before the write: a row buffered before its customer's erasure is not written
                table, erased = self._suppress(table)
                if table.num_rows:
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
                if erased:
                    self._drop("erased", erased, "customers erased on request")
            done.extend(good)
        self._commit(done)
        if written:
            self.metrics.records.inc(written)
        if ok:
            self.metrics.last_flush.set(self.clock())
        return ok

    def _suppress(self, table: pa.Table) -> tuple[pa.Table, int]:
        """``table`` without the rows of erased customers, and how many those were."""
        if self.suppressor is None:
            return table, 0
        ids = table.column("customer_id")
        erased = self.suppressor.erased(pc.unique(pc.drop_null(ids)).to_pylist())
        if not erased:
            return table, 0
        hit = pc.fill_null(pc.is_in(ids, value_set=pa.array(sorted(erased), pa.int64())), False)
        return table.filter(pc.invert(hit)), int(pc.sum(hit).as_py() or 0)

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
