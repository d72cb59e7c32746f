"""The prediction log in PostgreSQL (cluster mode): the same records as the Parquet segments, in one table.

Several predictor replicas and batch jobs write one table; monitoring jobs
read windows of it. Columns are typed like the Parquet segments (one column
per feature: ``double precision`` or ``text``), so a window reads back by
column without parsing JSON per row, and a new model version with a new
feature adds a nullable column (no table rewrite in PostgreSQL). A side table
``<table>_layouts`` remembers each model version's features so a window of
one version comes back with that version's columns only.

Writes are ``COPY ... FROM STDIN (FORMAT binary)``, one transaction per
segment (atomic like a renamed Parquet file). The binary rows are built
from the Arrow columns with NumPy, without a Python object per value: with
116 features, PostgreSQL ingests binary rows several times faster than CSV
(no text parsing of floats) and Arrow's CSV writer was itself slower than
the whole binary encoding. Reads are ``COPY (SELECT ...) TO STDOUT (FORMAT
csv)`` parsed by Arrow's CSV reader, split into time slices read on
parallel connections, because PostgreSQL's per-value output cost, not the
client, bounds one connection. Indexes: ``(customer_id, time)`` for label
joins and erasure, BRIN on ``time`` for windows of an append-only table.

Data errors (a value PostgreSQL refuses, a feature whose type changed) raise
``InvalidInputError`` and the writer drops that segment as ``rejected``;
connection and server errors propagate so the writer keeps the rows and
retries.
"""

from __future__ import annotations

import datetime as dt
import itertools
import re
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.csv as pacsv
from psycopg import sql
from psycopg.copy import QueuedLibpqWriter

from churnops.errors import InvalidInputError
from churnops.monitoring.predlog.records import (
    FIXED_SCHEMA,
    PAUSE_ROWS,
    TIME,
    FeatureLayout,
    SegmentKey,
    arrange,
    empty_frame,
    paced,
    to_frame,
    window_us,
)

_TABLE_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,40}$")
_PG_TYPES = {"float64": "double precision", "string": "text"}
_FIXED_DDL = (
    ("time", "timestamptz NOT NULL"),
    ("customer_id", "bigint"),
    ("model", "text NOT NULL"),
    ("model_version", "text NOT NULL"),
    ("score", "double precision NOT NULL"),
    ("risk_band", "text NOT NULL"),
    ("request_id", "text NOT NULL"),
    ("source", "text NOT NULL"),
    ("degraded", "boolean NOT NULL"),
)
assert tuple(n for n, _ in _FIXED_DDL) == tuple(FIXED_SCHEMA.names)


def _kind(layout: FeatureLayout, name: str) -> str:
    return "string" if name in layout.categorical else "float64"


class PostgresStore:
    """Prediction log table ``table`` (created if missing) in the database ``dsn`` points at."""

    sink = "postgres"

    def __init__(
        self,
        dsn: str,
        table: str = "prediction_log",
        *,
        statement_timeout_ms: int = 60_000,
        connect_timeout_s: int = 5,
        read_connections: int = 2,
    ) -> None:
        if not _TABLE_NAME.match(table):
            raise InvalidInputError(f"{table!r} is not a plain lower-case table name", field="prediction_log.table")
        if read_connections < 1:
            raise InvalidInputError(f"must be at least 1, got {read_connections}", field="prediction_log.read_connections")
        self.dsn = dsn
        self.table = table
        self.read_connections = read_connections
        self.statement_timeout_ms = statement_timeout_ms
        self.connect_timeout_s = connect_timeout_s
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None  # the writer's connection
        self._lock = threading.Lock()
        self._known: set[tuple[str, str, FeatureLayout]] = set()  # layouts whose columns exist

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        # UTC session: timestamps render and parse the same whatever the server's default zone.
        options = f"-c statement_timeout={self.statement_timeout_ms} -c timezone=UTC"
        return psycopg.connect(self.dsn, connect_timeout=self.connect_timeout_s, options=options)

    def _ident(self, suffix: str = "") -> sql.Identifier:
        return sql.Identifier(self.table + suffix)

    # schema
    def ensure_table(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        """Create the tables and indexes if missing (idempotent, safe when replicas race)."""
        t = self._ident()
        conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
        cols = sql.SQL(", ").join(sql.SQL("{} {}").format(sql.Identifier(n), sql.SQL(ddl)) for n, ddl in _FIXED_DDL)
        conn.execute(sql.SQL("CREATE TABLE IF NOT EXISTS {} ({})").format(t, cols))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} (customer_id, time)").format(self._ident("_customer_time"), t))
        conn.execute(sql.SQL("CREATE INDEX IF NOT EXISTS {} ON {} USING brin (time)").format(self._ident("_time_brin"), t))
        conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (model text NOT NULL, model_version text NOT NULL, feature text NOT NULL,"
                " kind text NOT NULL, position integer NOT NULL, PRIMARY KEY (model, model_version, feature))"
            ).format(self._ident("_layouts"))
        )

    def _ensure_layout(self, conn: psycopg.Connection[tuple[object, ...]], key: SegmentKey) -> None:
        if (key.model, key.version, key.layout) in self._known:
            return
        self.ensure_table(conn)
        rows = conn.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = current_schema() AND table_name = %s",
            (self.table,),
        ).fetchall()
        existing = {str(name): str(typ) for name, typ in rows}
        for name in key.layout.names:
            want = _PG_TYPES[_kind(key.layout, name)]
            if name not in existing:
                conn.execute(sql.SQL("ALTER TABLE {} ADD COLUMN {} {}").format(self._ident(), sql.Identifier(name), sql.SQL(want)))
            elif existing[name] != want:
                raise InvalidInputError(
                    f"feature {name!r} is {want} for {key.model} v{key.version} but the log stores it as {existing[name]}",
                    field="prediction_log.features",
                )
        with conn.cursor() as cur:
            cur.executemany(
                sql.SQL("INSERT INTO {} VALUES (%s, %s, %s, %s, %s) ON CONFLICT DO NOTHING").format(self._ident("_layouts")),
                [(key.model, key.version, n, _kind(key.layout, n), i) for i, n in enumerate(key.layout.names)],
            )
        self._known.add((key.model, key.version, key.layout))

    # writing
    def write(self, key: SegmentKey, table: pa.Table) -> None:
        """One segment in one transaction: every row or none."""
        with self._lock:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = self._connect()
                with self._conn.transaction():
                    self._ensure_layout(self._conn, key)
                    columns = sql.SQL(", ").join(sql.Identifier(n) for n in table.schema.names)
                    stmt = sql.SQL("COPY {} ({}) FROM STDIN (FORMAT binary)").format(self._ident(), columns)
                    # The queued writer sends from a worker thread: the next chunk is encoded while PostgreSQL ingests this one.
                    with self._conn.cursor() as cur, cur.copy(stmt, writer=QueuedLibpqWriter(cur)) as copy:
                        for chunk in binary_copy_chunks(table):
                            copy.write(chunk)
            except (psycopg.errors.DataError, psycopg.errors.IntegrityError) as e:
                raise InvalidInputError(f"PostgreSQL refused the rows: {e}", field="prediction_log") from None
            except psycopg.Error:
                self._discard()
                raise

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None
        self._known.clear()  # the table may have been dropped and re-created meanwhile

    # reading
    def read_window(
        self,
        start: dt.datetime,
        end: dt.datetime,
        model: str | None = None,
        version: str | None = None,
        features: Sequence[str] | None = None,
    ) -> pd.DataFrame:
        """Records with ``start <= time < end``, optionally of one model/version and only some features."""
        lo, hi = window_us(start, end)
        if hi <= lo:
            return empty_frame()
        with self._connect() as conn:
            if not self._exists(conn):
                return empty_frame()
            layouts = self._layouts(conn, model, version, features)
        kinds = {n: k for names in layouts.values() for n, k in names}
        slices = _slices(lo, hi, self.read_connections)
        with ThreadPoolExecutor(len(slices), thread_name_prefix="prediction-log-read") as pool:
            parts = list(pool.map(lambda s: self._read_slice(s[0], s[1], model, version, kinds), slices))
        tables = [t for t in parts if t is not None]
        if not tables:
            return empty_frame()
        table = pa.concat_tables(tables)
        pairs = table.group_by(["model", "model_version"]).aggregate([])
        present = set(zip(pairs.column("model").to_pylist(), pairs.column("model_version").to_pylist(), strict=True))
        return to_frame(arrange(table, {key: [n for n, _ in names] for key, names in layouts.items() if key in present}))

    def _read_slice(self, lo: int, hi: int, model: str | None, version: str | None, kinds: dict[str, str]) -> pa.Table | None:
        where = [sql.SQL("time >= {}").format(sql.Literal(_from_us(lo))), sql.SQL("time < {}").format(sql.Literal(_from_us(hi)))]
        if model is not None:
            where.append(sql.SQL("model = {}").format(sql.Literal(model)))
        if version is not None:
            where.append(sql.SQL("model_version = {}").format(sql.Literal(version)))
        # microseconds as an integer: exact, and no time-zone text for the CSV reader to interpret
        select: list[sql.Composable] = [sql.SQL("(extract(epoch FROM time) * 1000000)::bigint")]
        select += [sql.Identifier(n) for n in [*FIXED_SCHEMA.names[1:], *kinds]]
        query = sql.SQL("COPY (SELECT {} FROM {} WHERE {}) TO STDOUT (FORMAT csv)").format(
            sql.SQL(", ").join(select), self._ident(), sql.SQL(" AND ").join(where)
        )
        with self._connect() as conn, conn.cursor() as cur, cur.copy(query) as copy:
            data = b"".join(bytes(chunk) for chunk in copy)
        return _parse(data, kinds) if data else None

    def _exists(self, conn: psycopg.Connection[tuple[object, ...]]) -> bool:
        return conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self.table,)).fetchone() == (True,)

    def _layouts(
        self, conn: psycopg.Connection[tuple[object, ...]], model: str | None, version: str | None, features: Sequence[str] | None
    ) -> dict[tuple[str, str], list[tuple[str, str]]]:
        """(feature, kind) of each selected model version, in layout order (only ``features`` when given)."""
        rows = conn.execute(
            sql.SQL(
                "SELECT model, model_version, feature, kind FROM {} WHERE (%s::text IS NULL OR model = %s)"
                " AND (%s::text IS NULL OR model_version = %s) ORDER BY model, model_version, position"
            ).format(self._ident("_layouts")),
            (model, model, version, version),
        ).fetchall()
        wanted = None if features is None else set(features)
        out: dict[tuple[str, str], list[tuple[str, str]]] = {}
        for m, v, f, k in rows:
            if wanted is None or f in wanted:
                out.setdefault((str(m), str(v)), []).append((str(f), str(k)))
        return out

    # privacy
    def erase_customer(self, customer_id: int) -> int:
        """Delete every record of ``customer_id``; returns how many were removed."""
        with self._connect() as conn:
            if not self._exists(conn):
                return 0
            cur = conn.execute(sql.SQL("DELETE FROM {} WHERE customer_id = %s").format(self._ident()), (customer_id,))
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._discard()


def _slices(lo: int, hi: int, n: int) -> list[tuple[int, int]]:
    """[lo, hi) cut into at most ``n`` adjacent time slices (each microsecond in exactly one)."""
    n = max(1, min(n, hi - lo))
    cuts = [lo + (hi - lo) * i // n for i in range(n + 1)]
    return [(a, b) for a, b in itertools.pairwise(cuts) if b > a]


def _from_us(us: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=us)


# --- binary COPY -------------------------------------------------------------------------------------

PG_EPOCH_US = 946_684_800_000_000  # 2000-01-01, PostgreSQL's timestamp origin, in Unix microseconds
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00" * 8  # signature, flags, no header extension
COPY_TRAILER = b"\xff\xff"


def _column(col: pa.ChunkedArray) -> tuple[tuple[str, tuple[int, ...]], np.ndarray, np.ndarray, np.ndarray]:
    """One column as (record field type, values for that field, valid rows, byte length per row or -1 for NULL)."""
    arr = col.combine_chunks()
    n = len(arr)
    valid = np.ones(n, bool) if arr.null_count == 0 else ~arr.is_null().to_numpy(zero_copy_only=False)
    typ = arr.type
    if pa.types.is_string(typ):
        arr = arr.cast(pa.large_string())  # 64-bit offsets, whatever the size
        offsets = np.frombuffer(arr.buffers()[1], dtype=np.int64)[arr.offset : arr.offset + n + 1]
        buf = arr.buffers()[2]
        data = np.frombuffer(buf, dtype=np.uint8) if buf is not None else np.zeros(0, np.uint8)
        lengths = np.diff(offsets)
        width = int(lengths.max(initial=0))
        padded = np.zeros((n, width), np.uint8)  # each value left-aligned in a slot as wide as the longest
        if width:
            at = np.arange(int(lengths.sum())) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # byte index inside its string
            padded[np.repeat(np.arange(n), lengths), at] = data[np.repeat(offsets[:-1], lengths) + at]
        return ("u1", (width,)), padded, valid, np.where(valid, lengths, -1)
    if pa.types.is_timestamp(typ):
        values = arr.cast(pa.int64()).fill_null(0).to_numpy() - PG_EPOCH_US
        return (">i8", ()), values, valid, np.where(valid, 8, -1)
    if pa.types.is_int64(typ):
        return (">i8", ()), arr.fill_null(0).to_numpy(), valid, np.where(valid, 8, -1)
    if pa.types.is_float64(typ):
        return (">f8", ()), arr.fill_null(0.0).to_numpy(), valid, np.where(valid, 8, -1)
    if pa.types.is_boolean(typ):
        return ("u1", ()), arr.fill_null(False).to_numpy(zero_copy_only=False).astype(np.uint8), valid, np.where(valid, 1, -1)
    raise InvalidInputError(f"no binary COPY encoding for {typ}", field="prediction_log")


def binary_copy_chunks(table: pa.Table, rows: int = 8192) -> Iterator[bytes]:
    """``table`` in PostgreSQL's binary COPY format, as the header, blocks of ``rows`` rows, and the trailer.

    Column types: timestamptz, bigint, double precision, text, boolean. Blocks
    keep the intermediate arrays small and let the caller send one block while
    the next is built.
    """
    yield COPY_HEADER
    for start in range(0, table.num_rows, rows):
        yield binary_rows(table.slice(start, rows))
    yield COPY_TRAILER


def binary_copy(table: pa.Table) -> bytes:
    """The whole of ``table`` in binary COPY format (see ``binary_copy_chunks``)."""
    return b"".join(binary_copy_chunks(table))


def binary_rows(table: pa.Table) -> bytes:
    """The rows of ``table`` in binary COPY format, without header or trailer.

    A row is: the field count (int16), then per field its length (int32, -1
    for NULL) and its bytes. NumPy builds all rows at once as a record array
    with one fixed-width slot per field (assigning a float64 column to a
    big-endian field converts it on the way), then drops the bytes a row does
    not use: the value slot of a NULL and the padding after a short string.
    """
    n, k = table.num_rows, table.num_columns
    columns = [_column(col) for col in paced(table.columns)]
    fields: list[tuple[str, str, tuple[int, ...]]] = [("count", ">i2", ())]
    for j, ((kind, shape), *_) in enumerate(columns):
        fields += [(f"l{j}", ">i4", ()), (f"v{j}", kind, shape)]
    rec = np.empty(n, dtype=np.dtype(fields))
    rec["count"] = k
    for j, (_, values, _, lengths) in paced(enumerate(columns)):
        rec[f"l{j}"] = lengths
        rec[f"v{j}"] = values
    raw = rec.view(np.uint8).reshape(n, rec.dtype.itemsize)
    keep: np.ndarray | None = None
    for j, ((_, shape), _, valid, lengths) in paced(enumerate(columns)):
        field_type, offset = rec.dtype.fields[f"v{j}"][:2]
        width = field_type.itemsize
        if shape and not (lengths == width).all():  # text shorter than its slot (or NULL)
            keep = np.ones(raw.shape, bool) if keep is None else keep
            keep[:, offset : offset + width] = np.arange(width)[None, :] < np.maximum(lengths, 0)[:, None]
        elif not shape and not valid.all():  # NULLs carry no value bytes; only those rows are touched
            keep = np.ones(raw.shape, bool) if keep is None else keep
            keep[~valid, offset : offset + width] = False
    if keep is None:
        return raw.tobytes()
    # a mask over every row is a millisecond of work at once: it goes in blocks of rows
    blocks = (slice(start, start + PAUSE_ROWS) for start in range(0, n, PAUSE_ROWS))
    return b"".join(raw[rows][keep[rows]].tobytes() for rows in paced(blocks))


def _parse(data: bytes, kinds: dict[str, str]) -> pa.Table:
    fixed = [pa.field(TIME, pa.int64()), *list(FIXED_SCHEMA)[1:]]  # time arrives as epoch microseconds
    names = [f.name for f in fixed] + list(kinds)
    types = {f.name: f.type for f in fixed} | {n: (pa.string() if k == "string" else pa.float64()) for n, k in kinds.items()}
    table = pacsv.read_csv(
        pa.BufferReader(data),
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 24),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            strings_can_be_null=True,  # NULL is an unquoted empty field...
            quoted_strings_can_be_null=False,  # ...and an empty string is quoted
            true_values=["t"],
            false_values=["f"],
        ),
    )
    return table.set_column(0, pa.field(TIME, pa.timestamp("us", tz="UTC")), table.column(0).cast(pa.timestamp("us", tz="UTC")))
