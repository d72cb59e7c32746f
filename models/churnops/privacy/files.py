"""Removing one customer from the files under a directory: tables, documents, logs and reports.

What each kind of file gets (decided by ``action_for``; pure rules apart from the I/O):
- Parquet and CSV with a ``customer_id`` column (raw tables, feature tables
  of the offline store, labels, batch scores and their inputs): rewritten
  without the customer's rows. Parquet is streamed row group by row group,
  and a file whose row-group statistics rule the customer out is not read;
- JSON: entries about the customer (an object whose customer field holds the
  id, inside a list) are removed, ids in customer lists dropped, and other
  customer fields holding the id set to null; JSON lines: lines about the
  customer are removed;
- logs and text (``.log``, ``.txt``, ``.md``): lines naming the id are removed
  (``mentions``: the id as a whole number; an id of fewer than five digits only
  right after the word "customer");
- HTML reports that name the id are deleted: they cannot be edited safely
  and are regenerated from the data (``churnops report ...``).

Every rewrite goes to a temporary file beside the original, is fsynced and
renamed over it, so a reader sees the old file or the new one. Other files
(images, metrics text, binaries) are not read: images and metrics are
aggregates and name no customer.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from churnops.data.schema import ENTITY

Action = Literal["rows", "json", "jsonl", "lines", "delete", "skip"]
_ACTIONS: dict[str, Action] = {
    ".parquet": "rows",
    ".csv": "rows",
    ".json": "json",
    ".jsonl": "jsonl",
    ".log": "lines",
    ".txt": "lines",
    ".md": "lines",
    ".html": "delete",
    ".htm": "delete",
}
_REMOVE = object()


@dataclass(frozen=True)
class FileChange:
    """One file changed by an erasure: how, and how many rows, entries or lines went."""

    path: Path
    action: Action
    removed: int


def action_for(path: Path) -> Action:
    return _ACTIONS.get(path.suffix.lower(), "skip")


def mentions(text: str, customer_id: int) -> bool:
    """The id as a whole number in ``text`` (not as part of a longer number, a decimal, a word or a hex digest).

    An id shorter than ``SHORT_ID_DIGITS`` digits counts only right after the word "customer": a bare small
    number is everywhere in a report.
    """
    return _token(customer_id).search(text) is not None


SHORT_ID_DIGITS = 5


def _token(customer_id: int) -> re.Pattern[str]:
    bare = rf"(?<![\w.]){customer_id}(?![\w]|\.\d)"
    if len(str(customer_id)) >= SHORT_ID_DIGITS:
        return re.compile(bare)
    return re.compile(rf"customer[^\d\n]{{0,40}}{bare}", re.IGNORECASE)


def is_customer_field(name: str) -> bool:
    return "customer" in name.lower()


def _is_id(value: Any, customer_id: int) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int | float):
        return value == customer_id
    return isinstance(value, str) and value.strip() == str(customer_id)


def _about(obj: dict[str, Any], customer_id: int) -> bool:
    return any(is_customer_field(k) and _is_id(v, customer_id) for k, v in obj.items())


def redact(doc: Any, customer_id: int) -> tuple[Any, int]:
    """``doc`` without the customer (rules in the module docstring); returns the new document and the number of removals."""
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        n = 0
        for k, v in doc.items():
            value = v
            if is_customer_field(k):
                if _is_id(v, customer_id):
                    out[k], n = None, n + 1
                    continue
                if isinstance(v, list):
                    value = [x for x in v if not _is_id(x, customer_id)]
                    n += len(v) - len(value)
            out[k], m = redact(value, customer_id)
            n += m
        return out, n
    if isinstance(doc, list):
        items: list[Any] = []
        n = 0
        for x in doc:
            if isinstance(x, dict) and _about(x, customer_id):
                n += 1
                continue
            y, m = redact(x, customer_id)
            items.append(y)
            n += m
        return items, n
    return doc, 0


def drop_lines(text: str, customer_id: int) -> tuple[str, int]:
    """``text`` without the lines that name the id."""
    token = _token(customer_id)
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if token.search(line) is None]
    return "".join(kept), len(lines) - len(kept)


def drop_json_lines(text: str, customer_id: int) -> tuple[str, int]:
    """JSON lines without the records about the customer (other lines are redacted like a JSON document)."""
    out, n = [], 0
    for line in text.splitlines(keepends=True):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            out.append(line)
            continue
        if isinstance(record, dict) and _about(record, customer_id):
            n += 1
            continue
        redacted, m = redact(record, customer_id)
        out.append(line if m == 0 else orjson.dumps(redacted).decode() + "\n")
        n += m
    return "".join(out), n


# --- I/O ---------------------------------------------------------------------------------------------


def files_under(root: Path, skip: frozenset[str] = frozenset()) -> Iterator[Path]:
    """Every regular file under ``root`` except in the top-level folders named in ``skip`` and temporary/hidden files."""
    if not root.exists():
        return
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if rel.parts[0] in skip or any(part.startswith(".") for part in rel.parts) or not path.is_file() or path.is_symlink():
            continue
        yield path


def scrub_tree(root: Path, customer_id: int, skip: frozenset[str] = frozenset()) -> list[FileChange]:
    """Remove the customer from every file under ``root`` that can hold them; returns what changed."""
    changes = []
    for path in files_under(root, skip):
        change = scrub_file(path, customer_id)
        if change is not None:
            changes.append(change)
    return changes


def scrub_file(path: Path, customer_id: int) -> FileChange | None:
    action = action_for(path)
    removed = 0
    if action == "rows":
        removed = _scrub_parquet(path, customer_id) if path.suffix.lower() == ".parquet" else _scrub_csv(path, customer_id)
    elif action == "skip":
        return None
    else:
        text = path.read_text(errors="replace")
        if not mentions(text, customer_id):
            return None
        if action == "delete":
            path.unlink()
            return FileChange(path, action, 1)
        if action == "json":
            doc, removed = redact(orjson.loads(text), customer_id)
            new = orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"
        elif action == "jsonl":
            new, removed = drop_json_lines(text, customer_id)
        else:
            new, removed = drop_lines(text, customer_id)
        if removed:
            _replace_bytes(path, new.encode())
    return FileChange(path, action, removed) if removed else None


def _may_hold(pf: pq.ParquetFile, column: int, customer_id: int) -> list[int]:
    """Row groups whose statistics do not rule the customer out."""
    groups = []
    for i in range(pf.metadata.num_row_groups):
        stats = pf.metadata.row_group(i).column(column).statistics
        if stats is None or not stats.has_min_max or stats.min <= customer_id <= stats.max:
            groups.append(i)
    return groups


def _scrub_parquet(path: Path, customer_id: int) -> int:
    pf = pq.ParquetFile(path)
    names = pf.schema_arrow.names
    if ENTITY not in names or not pa.types.is_integer(pf.schema_arrow.field(ENTITY).type):
        return 0
    column = pf.metadata.schema.names.index(ENTITY) if ENTITY in pf.metadata.schema.names else names.index(ENTITY)
    candidates = _may_hold(pf, column, customer_id)
    hits = sum(pc.sum(pc.equal(pf.read_row_group(i, columns=[ENTITY]).column(0), customer_id)).as_py() or 0 for i in candidates)
    if not hits:
        return 0
    compression = pf.metadata.row_group(0).column(0).compression.lower() if pf.metadata.num_row_groups else "zstd"
    tmp = _tmp(path)
    try:
        with pq.ParquetWriter(tmp, pf.schema_arrow, compression=compression if compression != "uncompressed" else "none") as w:
            for i in range(pf.metadata.num_row_groups):
                table = pf.read_row_group(i)
                if i in candidates:
                    table = table.filter(pc.invert(pc.fill_null(pc.equal(table.column(ENTITY), customer_id), False)))
                w.write_table(table)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return int(hits)


def _scrub_csv(path: Path, customer_id: int) -> int:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    columns = [c for c in frame.columns if is_customer_field(str(c))]
    if not columns:
        return 0
    hit = frame[columns].apply(lambda col: col.str.strip() == str(customer_id)).any(axis=1)
    if not hit.any():
        return 0
    tmp = _tmp(path)
    try:
        frame.loc[~hit].to_csv(tmp, index=False)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return int(hit.sum())


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.erasing")


def _commit(tmp: Path, path: Path) -> None:
    with tmp.open("rb") as f:
        os.fsync(f.fileno())
    tmp.replace(path)


def _replace_bytes(path: Path, data: bytes) -> None:
    tmp = _tmp(path)
    try:
        tmp.write_bytes(data)
        _commit(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
