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

Writing (``writer.PredictionLog``): ``record``/``record_many`` append a reference to
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
- Pacing: in the predictor the flusher shares one interpreter with the event
  loop, and a thread waiting for the interpreter lock waits out its holder's
  switch interval (5 ms) unless the holder lets go first. Converting a second
  of online rows is several milliseconds of work, so a request arriving
  during a flush would wait that long at each of its awaits. The predictor's
  log is built with a ``records.Pacer``: its flusher rests for about 20 µs
  after each 100 µs of work (between columns and between blocks of
  ``PAUSE_ROWS`` rows). A batch job's log converts flat out.

Stores (``records.LogStore``): ``parquet.ParquetStore`` (embedded mode) and
``postgres.PostgresStore`` (cluster mode). Both read windows back
with ``read_window`` and erase a customer with ``erase_customer``; this
module holds what they share (record layout, Arrow conversion, window and
column rules) and imports neither.
"""
