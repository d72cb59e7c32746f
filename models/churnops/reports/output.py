"""Writing a report: its HTML and its JSON twin, each replaced atomically, never half-written.

A report is read by people and by machines (a CI step, the demo's checks, an
auditor's tooling), so every figure on the page is also in the JSON, with
NaN and infinities as null (JSON has neither). Each file is written under a
temporary name, synced and renamed over the old one: a demo stopped with
Ctrl-C mid-write leaves the previous report or the new one, not a torn file.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from churnops.files import replace_text


def plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, NumPy scalars Python numbers, tuples lists, times ISO text."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True)
class ReportFiles:
    """Where a report went, and its JSON document (what a caller checks without reading the files back)."""

    html: Path
    json: Path
    doc: dict[str, Any]


def write_report(html_text: str, doc: Mapping[str, Any], html_path: Path, json_path: Path) -> ReportFiles:
    """The JSON first, then the page: a page on disk always has its figures beside it."""
    data = plain(doc)
    replace_text(json_path, json.dumps(data, indent=1, allow_nan=False) + "\n")
    replace_text(html_path, html_text)
    return ReportFiles(html_path, json_path, data)
