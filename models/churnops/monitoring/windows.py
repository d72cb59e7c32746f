"""The monitoring jobs' inputs: windows of the prediction log, opened and checked before any statistic sees them.

This module opens the prediction log, reads a window and checks what it read
(an empty window, a reference profile that does not match the logged
features, NaN scores, labels of customers nobody scored) so that bad input
ends in a message naming the problem rather than a traceback or a silent
zero. The jobs that then compute statistics and write reports are
``churnops.reports.window_jobs``; delayed labels are read by ``labels``.

Model facts (version, threshold, reference profile) come from the caller:
monitoring sits below training in the package layers, so the registry is
resolved by the CLI or the pipeline component that calls in.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops.errors import InvalidInputError, NotFoundError
from churnops.monitoring.business import BusinessColumns, CampaignConfig
from churnops.monitoring.fairness import FairnessConfig
from churnops.monitoring.predlog.records import FIXED_COLUMNS, LogStore
from churnops.monitoring.profile import ReferenceProfile

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
# Feature quality worth a line in the verdict: the unseen share is the ChurnOpsUnseenCategories alert's threshold.


# --- windows -------------------------------------------------------------------------------------------


def parse_duration(text: str, field: str = "--window") -> dt.timedelta:
    """``90s``, ``30m``, ``1h``, ``24h``, ``7d``, ``2w`` as a positive duration."""
    m = _DURATION.match(text)
    if m is None:
        raise InvalidInputError(f"expected a number and a unit (s, m, h, d, w) such as 1h or 7d, got {text!r}", field=field)
    seconds = float(m.group(1)) * _UNITS[m.group(2)]
    if seconds <= 0:
        raise InvalidInputError(f"must be longer than zero, got {text!r}", field=field)
    return dt.timedelta(seconds=seconds)


def parse_time(text: str, field: str) -> dt.datetime:
    """An ISO 8601 time (``2026-05-01``, ``2026-05-01T12:00``, ``...+02:00``); without a zone it is UTC."""
    try:
        t = dt.datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInputError(f"expected an ISO 8601 time such as 2026-05-01T12:00Z, got {text!r}", field=field) from None
    return t.replace(tzinfo=dt.UTC) if t.tzinfo is None else t.astimezone(dt.UTC)


@dataclass(frozen=True)
class Window:
    """A half-open time range [start, end) of the prediction log, in UTC."""

    start: dt.datetime
    end: dt.datetime

    def describe(self) -> str:
        return f"{self.start.isoformat(timespec='seconds')} to {self.end.isoformat(timespec='seconds')}"


def window_bounds(duration: dt.timedelta | None, since: dt.datetime | None, until: dt.datetime | None, now: dt.datetime) -> Window:
    """The window from ``--window`` and ``--since``/``--until``.

    Both ends: [since, until) (no duration then). One end and a duration: the
    duration from that end. ``since`` alone: up to now. A duration alone: the
    last ``duration`` up to now.
    """
    if since is not None and until is not None and duration is not None:
        raise InvalidInputError("give --window with at most one of --since and --until", field="--window")
    if since is not None:
        start = since
        end = until if until is not None else (since + duration if duration is not None else now)
    elif duration is None:
        raise InvalidInputError("give --window (e.g. 24h), --since, or both --since and --until", field="--window")
    else:
        end = until if until is not None else now
        start = end - duration
    if end <= start:
        raise InvalidInputError(f"the window ends ({end.isoformat()}) before it starts ({start.isoformat()})", field="--until")
    return Window(start, end)


# --- the prediction log --------------------------------------------------------------------------------


def open_store(path: Path | None, dsn: str | None, data_dir: Path) -> LogStore:
    """The prediction log: PostgreSQL when a DSN is given, else Parquet segments (default ``<data-dir>/predictions``)."""
    if dsn:
        from churnops.monitoring.predlog.postgres import PostgresStore  # noqa: PLC0415 - psycopg only when asked for

        return PostgresStore(dsn)
    from churnops.monitoring.predlog.parquet import ParquetStore  # noqa: PLC0415

    root = path if path is not None else data_dir / "predictions"
    if path is not None and not root.is_dir():
        raise NotFoundError(f"{root} is not a directory of prediction log segments", field="--prediction-log")
    return ParquetStore(root)


def log_features(frame: pd.DataFrame) -> list[str]:
    """The feature columns of a window read from the log (everything after the fixed record columns)."""
    return [str(c) for c in frame.columns if c not in FIXED_COLUMNS]


def versions_present(store: LogStore, window: Window, model: str | None = None) -> dict[str, int]:
    """Predictions per model version in the window (fixed columns only: cheap enough for an error message)."""
    frame = store.read_window(window.start, window.end, model=model, features=[])
    counts = frame["model_version"].astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: str(kv[0]))}


def read_version(store: LogStore, window: Window, model: str, version: str) -> pd.DataFrame:
    """One model version's predictions in the window; an empty window is an error that says what the log does hold."""
    frame = store.read_window(window.start, window.end, model=model, version=version)
    if len(frame) == 0:
        present = versions_present(store, window, model)
        held = ", ".join(f"v{v} ({n:,})" for v, n in present.items()) if present else "no prediction of this model at all"
        raise NotFoundError(
            f"no prediction of {model} v{version} from {window.describe()}; the log holds {held} in that window", field="--window"
        )
    return frame


def check_scores(frame: pd.DataFrame) -> None:
    """Every logged score is a probability; the message names the first bad record by request id."""
    s = frame["score"].to_numpy(dtype=float, na_value=np.nan)
    bad = np.flatnonzero(~((s >= 0.0) & (s <= 1.0)))  # NaN fails both
    if bad.size:
        row = frame.iloc[int(bad[0])]
        raise InvalidInputError(
            f"{bad.size} logged score(s) are NaN or outside [0, 1], first {float(s[bad[0]])!r} in request {row['request_id']} "
            f"at {row['time']}; the predictor never logs such a score, so the log was written by something else or is damaged",
            field="prediction_log.score",
        )


def check_profile(profile: ReferenceProfile, features: Sequence[str], model: str, version: str) -> None:
    """The window must carry exactly the profile's features, in any order; the message names the difference."""
    logged, known = set(features), set(profile.names)
    extra = [f for f in features if f not in known]
    if extra:
        raise InvalidInputError(
            f"the prediction log of {model} v{version} records feature(s) {extra[:10]} that its reference profile lacks; "
            "the profile was built for another feature set (rebuild it from this version's training data)",
            field="profile",
        )
    missing = [f for f in profile.names if f not in logged]
    if missing:
        raise InvalidInputError(
            f"feature(s) {missing[:10]} of the reference profile of {model} v{version} are not in its prediction log "
            "(the log records what the model used: the profile belongs to another feature set)",
            field="prediction_log",
        )


# --- drift ------------------------------------------------------------------------------------------------


# --- labels ---------------------------------------------------------------------------------------------


# --- performance, business and fairness -------------------------------------------------------------------


@dataclass(frozen=True)
class OutcomeSettings:
    """How outcomes are judged: the label horizon, the campaign's economics and the fairness gate (the training gates' values)."""

    campaign: CampaignConfig = field(default_factory=CampaignConfig)
    fairness: FairnessConfig = field(default_factory=FairnessConfig)
    horizon_days: float = 30.0
    period: str | None = "1D"  # figures over time as well; None for the window only
    segment_column: str = "segment"
    business_columns: BusinessColumns = field(default_factory=BusinessColumns)


@dataclass(frozen=True)
class OutcomeReport:
    """Everything ``monitor performance`` found, as a JSON-ready document, and whether labels named unknown customers."""

    doc: dict[str, Any]
    unknown_customer_labels: int


def thresholds_needed(frame: pd.DataFrame) -> list[str]:
    return sorted(frame["model_version"].astype(str).unique().tolist())


def prepare(frame: pd.DataFrame, settings: OutcomeSettings) -> tuple[pd.DataFrame, list[str]]:
    """Columns the business and fairness figures read, added empty (with a note) when the model did not use the feature.

    The log records what each model version used; a version trained without
    ``mrr`` has no revenue to put at risk, which the report says instead of
    counting zero.
    """
    notes: list[str] = []
    out = frame.copy()
    bc = settings.business_columns
    for col, what in ((bc.revenue, "revenue"), (bc.csat, "CSAT"), (bc.nps, "NPS")):
        if col not in out.columns:
            out[col] = np.nan
            notes.append(f"the prediction log has no {col!r} (the model does not use it): {what} figures are empty")
    if settings.segment_column not in out.columns:
        notes.append(
            f"the prediction log has no {settings.segment_column!r}: figures are for all customers only, and fairness is not computed"
        )
    elif settings.segment_column != "segment":
        out["segment"] = out[settings.segment_column]
    return out, notes


def read_window(store: LogStore, window: Window, model: str, versions: Sequence[str] | None) -> pd.DataFrame:
    """Predictions of ``model`` (or of some of its versions) in the window; empty is an error naming what the log holds."""
    if versions:
        frames = [f for v in versions if len(f := store.read_window(window.start, window.end, model=model, version=v))]
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    else:
        frame = store.read_window(window.start, window.end, model=model)
    if len(frame) == 0:
        present = versions_present(store, window)
        held = ", ".join(f"v{v} ({n:,})" for v, n in present.items()) if present else "no prediction at all"
        which = f"{model} " + (", ".join(f"v{v}" for v in versions) if versions else "(any version)")
        raise NotFoundError(f"no prediction of {which} from {window.describe()}; the log holds {held} in that window", field="--window")
    return frame
