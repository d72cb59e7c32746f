"""The prediction log in Parquet (embedded mode): append-only segments under ``<data-dir>/predictions/``.

Layout: ``date=YYYY-MM-DD/model=<m>/version=<v>/<first µs>-<last µs>-<id>.parquet``
(Hive-style, URI-encoded names). Each flush of the writer adds one segment per
partition and never touches an existing one, so a writer needs no lock and a
reader no coordination: a segment is written under a hidden temporary name,
fsynced and renamed, and a reader lists only finished names. Readers prune
by directory (day, model, version) and by the time range in the name before
opening anything, and read only the columns asked for.

Two operations rewrite segments, one at a time under a lock file:
- ``erase_customer`` (privacy): a segment holding the customer is rewritten
  without those rows under a temporary name and renamed over the original (a
  reader holds the old or the new file, never half of one); segments whose
  row-group statistics rule the customer out are not even read;
- ``compact``: a partition's many small segments (one per flush) are merged
  into a few large ones, each listing in its metadata the segments it
  replaces, so a reader that listed the directory mid-compaction skips the
  replaced ones instead of counting rows twice.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote, unquote

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnops.errors import InvalidInputError, UnavailableError
from churnops.monitoring.predlog.records import (
    FIXED_COLUMNS,
    TIME,
    US_PER_DAY,
    SegmentKey,
    arrange,
    concat,
    empty_frame,
    to_frame,
    window_us,
)

SEGMENT_SUFFIX = ".parquet"
REPLACES_KEY = b"churnops.replaces"  # file metadata of a compacted segment: the segments it replaces
_SEGMENT_NAME = re.compile(r"^(\d+)-(\d+)-([0-9a-f]+)(\.c)?\.parquet$")
COMPACTED = ".c"  # marks a compacted segment's name: only those carry a list of replaced segments


def segment_name(min_us: int, max_us: int, compacted: bool = False) -> str:
    """``<first µs>-<last µs>-<id>[.c].parquet``: readers skip a segment outside their window by its name alone."""
    return f"{min_us:017d}-{max_us:017d}-{uuid.uuid4().hex[:16]}{COMPACTED if compacted else ''}{SEGMENT_SUFFIX}"


def is_compacted(name: str) -> bool:
    return name.endswith(COMPACTED + SEGMENT_SUFFIX)


def segment_range(name: str) -> tuple[int, int] | None:
    m = _SEGMENT_NAME.match(name)
    return (int(m.group(1)), int(m.group(2))) if m else None


def day_dir(day: int) -> str:
    return "date=" + (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


@dataclass
class _Partition:
    path: Path
    model: str
    version: str


class ParquetStore:
    """Append-only Parquet segments under ``<root>/date=YYYY-MM-DD/model=<m>/version=<v>/``.

    One segment per flush and partition, never modified in place. Erasure
    rewrites a segment under a temporary name and renames it over the old
    one; compaction merges a partition's segments into one whose metadata
    lists the segments it replaces, so a reader that listed the directory
    mid-compaction never counts a row twice.
    """

    sink = "parquet"

    def __init__(self, root: str | Path, *, fsync: bool = True, compression: str = "zstd", row_group_rows: int = 256 * 1024) -> None:
        self.root = Path(root)
        self.fsync = fsync
        self.compression = compression
        self.row_group_rows = row_group_rows

    # writing
    def write(self, key: SegmentKey, table: pa.Table) -> None:
        directory = self.root / day_dir(key.day) / f"model={quote(key.model, safe='')}" / f"version={quote(key.version, safe='')}"
        if not directory.is_dir():
            directory.mkdir(parents=True, exist_ok=True)
            if self.fsync:  # new directory entries must survive a power cut too, not only the segment
                for parent in (directory.parent, directory.parent.parent, self.root):
                    _fsync(parent)
        lo, hi = pc.min_max(table.column(TIME).cast(pa.int64())).values()
        try:
            self._commit(directory / segment_name(lo.as_py(), hi.as_py()), table, {})
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError) as e:  # the data, not the disk: retrying cannot help
            raise InvalidInputError(f"segment cannot be written: {e}", field="prediction_log") from None

    def _commit(self, path: Path, table: pa.Table, metadata: Mapping[bytes, bytes]) -> None:
        tmp = path.with_name(f".{path.name}.tmp")  # hidden: readers list only finished segments
        try:
            schema = table.schema.with_metadata({**(table.schema.metadata or {}), **metadata})
            # Dictionaries pay off for text (bands, categories); statistics for pruning by time and for erasure.
            text = [f.name for f in schema if pa.types.is_string(f.type)]
            stats = [c for c in (TIME, "customer_id") if c in schema.names]
            with pq.ParquetWriter(tmp, schema, compression=self.compression, use_dictionary=text, write_statistics=stats) as writer:
                writer.write_table(table.replace_schema_metadata(schema.metadata), row_group_size=self.row_group_rows)
            if self.fsync:
                _fsync(tmp)
            tmp.replace(path)
            if self.fsync:
                _fsync(path.parent)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise

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
        tables: list[pa.Table] = []
        layouts: dict[tuple[str, str], list[str]] = {}
        if hi > lo:
            for part in self._partitions(lo // US_PER_DAY, (hi - 1) // US_PER_DAY, model, version):
                for t in self._read_partition(part.path, lo, hi, features):
                    if t.num_rows:
                        tables.append(t)
                        names = layouts.setdefault((part.model, part.version), [])
                        names.extend(n for n in t.column_names[len(FIXED_COLUMNS) :] if n not in names)
        return to_frame(arrange(concat(tables), layouts)) if tables else empty_frame()

    def _partitions(self, first_day: int, last_day: int, model: str | None, version: str | None) -> Iterator[_Partition]:
        for day in range(first_day, last_day + 1):
            day_path = self.root / day_dir(day)
            for m in _subdirs(day_path, "model="):
                if model is not None and m != model:
                    continue
                for v in _subdirs(day_path / f"model={quote(m, safe='')}", "version="):
                    if version is None or v == version:
                        yield _Partition(day_path / f"model={quote(m, safe='')}" / f"version={quote(v, safe='')}", m, v)

    def _read_partition(self, directory: Path, lo: int, hi: int, features: Sequence[str] | None) -> list[pa.Table]:
        """The partition's rows in [lo, hi), from the segments a compacted segment does not replace.

        Segments outside the window are not opened (their names carry their time
        range); compacted ones always are, for the list of segments they replace.
        """
        # A segment can vanish between listing and opening (compaction or erasure removed it): list again.
        for _attempt in range(5):
            try:
                tables: dict[str, pa.Table] = {}
                replaced: set[str] = set()
                for name in _segment_names(directory):
                    first, last = segment_range(name) or (0, -1)
                    overlaps = last >= lo and first < hi
                    if overlaps or is_compacted(name):
                        with pq.ParquetFile(directory / name) as f:
                            replaced |= _replaces(f.schema_arrow)
                            if overlaps:
                                tables[name] = _read_segment(f, lo, hi, features)
                return [t for name, t in tables.items() if name not in replaced]
            except FileNotFoundError:
                continue
        raise UnavailableError(f"{directory}: segments keep changing under the reader; retry", field="prediction_log")

    # privacy
    def erase_customer(self, customer_id: int) -> int:
        """Remove every record of ``customer_id``; returns how many live records were removed."""
        removed = 0
        with self._maintenance():
            for directory in self._all_partitions():
                removed += self._erase_in(directory, customer_id)
        return removed

    def _erase_in(self, directory: Path, customer_id: int) -> int:
        self._drop_replaced(directory)  # copies a compaction left behind hold the customer's rows too
        removed = 0
        for name in _segment_names(directory):
            path = directory / name
            if not _may_hold(path, customer_id):
                continue
            table = _read_whole(path)
            keep = pc.invert(pc.fill_null(pc.equal(table.column("customer_id"), customer_id), False))
            hits = table.num_rows - pc.sum(keep.cast(pa.int64())).as_py()
            if hits == 0:
                continue
            removed += hits
            if hits == table.num_rows:
                path.unlink()
            else:
                self._commit(path, table.filter(keep), table.schema.metadata or {})
        return removed

    @staticmethod
    def _drop_replaced(directory: Path) -> int:
        """Delete segments a compacted segment replaces (left behind when a compaction stopped before its deletions)."""
        names = _segment_names(directory)
        gone = _replaced(directory, names) & set(names)
        for name in gone:
            (directory / name).unlink()
        return len(gone)

    # compaction
    def compact(self, before: dt.date | None = None, max_rows: int = 10_000_000) -> int:
        """Merge each partition's segments (of days before ``before``, default all) into few large ones; returns segments removed.

        Many small segments (one per flush) make windows slow to read; merged
        segments of up to ``max_rows`` rows keep a day's reads to a few files.
        """
        removed = 0
        with self._maintenance():
            for directory in self._all_partitions():
                day = dt.date.fromisoformat(directory.parent.parent.name.removeprefix("date="))
                if before is None or day < before:
                    removed += self._compact_partition(directory, max_rows)
        return removed

    def _compact_partition(self, directory: Path, max_rows: int) -> int:
        removed = self._drop_replaced(directory)
        for run in _runs(directory, _segment_names(directory), max_rows):
            if len(run) < 2:
                continue
            tables = [_read_whole(directory / n) for n in run]
            merged = concat(tables)
            ranges = [segment_range(n) for n in run]
            lo, hi = min(r[0] for r in ranges if r), max(r[1] for r in ranges if r)
            meta = {REPLACES_KEY: json.dumps(run).encode()}
            self._commit(directory / segment_name(lo, hi, compacted=True), merged.replace_schema_metadata(None), meta)
            for n in run:
                (directory / n).unlink()
            removed += len(run)
        return removed

    # housekeeping
    def _all_partitions(self) -> Iterator[Path]:
        if not self.root.is_dir():
            return
        for day_path in sorted(self.root.glob("date=*")):
            for version_path in sorted(day_path.glob("model=*/version=*")):
                if version_path.is_dir():
                    yield version_path

    @contextmanager
    def _maintenance(self) -> Iterator[None]:
        """Erasure and compaction rewrite segments: one at a time, across processes."""
        self.root.mkdir(parents=True, exist_ok=True)
        with (self.root / ".maintenance.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def close(self) -> None:
        return None


def _segment_names(directory: Path) -> list[str]:
    """Finished segments of a partition in time order (temporary files are hidden and skipped)."""
    return sorted(p.name for p in directory.iterdir() if segment_range(p.name))


def _subdirs(path: Path, prefix: str) -> list[str]:
    try:
        return sorted(unquote(e.name.removeprefix(prefix)) for e in os.scandir(path) if e.is_dir() and e.name.startswith(prefix))
    except FileNotFoundError:
        return []


def _replaced(directory: Path, names: Sequence[str]) -> set[str]:
    out: set[str] = set()
    for name in names:
        if is_compacted(name):
            try:
                out |= _replaces(pq.read_schema(directory / name))
            except FileNotFoundError:
                continue
    return out


def _replaces(schema: pa.Schema) -> set[str]:
    meta = schema.metadata or {}
    return set(json.loads(meta[REPLACES_KEY])) if REPLACES_KEY in meta else set()


def _read_whole(path: Path) -> pa.Table:
    # ParquetFile reads on the calling thread (see churnops.data.parquet for why not the dataset API)
    with pq.ParquetFile(path) as f:
        table: pa.Table = f.read()
    return table


def _may_hold(path: Path, customer_id: int) -> bool:
    """False when every row group's statistics rule the customer out (no data read)."""
    meta = pq.read_metadata(path)
    col = meta.schema.names.index("customer_id")
    for i in range(meta.num_row_groups):
        stats = meta.row_group(i).column(col).statistics
        if stats is None or not stats.has_min_max or stats.min <= customer_id <= stats.max:
            return True
    return False


def _runs(directory: Path, names: Sequence[str], max_rows: int) -> Iterator[list[str]]:
    """Consecutive segments with the same schema, up to ``max_rows`` rows per run."""
    run: list[str] = []
    rows = 0
    schema: pa.Schema | None = None
    for name in names:
        meta = pq.read_metadata(directory / name)
        s = meta.schema.to_arrow_schema().remove_metadata()
        if run and (rows + meta.num_rows > max_rows or schema is None or not s.equals(schema)):
            yield run
            run, rows = [], 0
        run.append(name)
        rows += meta.num_rows
        schema = s
    if run:
        yield run


def _read_segment(f: pq.ParquetFile, lo: int, hi: int, features: Sequence[str] | None) -> pa.Table:
    names = f.schema_arrow.names
    columns = None if features is None else [*FIXED_COLUMNS, *(n for n in features if n in names)]
    table = f.read(columns=columns).replace_schema_metadata(None)
    t = table.column(TIME).cast(pa.int64())
    return table.filter(pc.and_(pc.greater_equal(t, lo), pc.less(t, hi)))


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
