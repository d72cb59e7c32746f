"""Monitoring figures over time from the prediction log: drift per window and measured vs estimated performance per period.

The window length follows the log: a demo's log spans minutes, a
production log months, and either reads best as about a dozen points. The
length is the shortest of a few round durations that gives at most the
wanted number of windows; windows start at multiples of it since the epoch,
which is how pandas floors the performance periods, so both plots share one
grid.

Drift of each window is the window job's statistic
(``churnops.monitoring.drift.detect_drift``) of one version's logged inputs
against that version's reference profile: every version is judged against
the reference it was trained with. A window with fewer predictions than the
policy's minimum gets its statistics but no verdict (a hollow point).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pandas as pd

from churnops.errors import ChurnOpsError
from churnops.monitoring.drift import DriftPolicy, detect_drift
from churnops.monitoring.predlog.records import LogStore
from churnops.monitoring.profile import ReferenceProfile
from churnops.monitoring.windows import Window, check_profile, check_scores, log_features

ROUND_SECONDS = (10, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800, 2592000)


def window_seconds(first: dt.datetime, last: dt.datetime, wanted: int) -> int:
    """The shortest round length that cuts [first, last] into at most ``wanted`` windows."""
    span = max((last - first).total_seconds(), 1.0)
    for s in ROUND_SECONDS:
        if span / s <= wanted:
            return s
    return math.ceil(span / wanted)


def windows(first: dt.datetime, last: dt.datetime, seconds: int) -> list[Window]:
    """Consecutive windows of ``seconds`` aligned on the epoch, covering ``first`` to ``last`` inclusive."""
    start = int(first.timestamp()) // seconds * seconds
    end = int(last.timestamp()) // seconds * seconds + seconds
    return [
        Window(dt.datetime.fromtimestamp(t, dt.UTC), dt.datetime.fromtimestamp(t + seconds, dt.UTC)) for t in range(start, end, seconds)
    ]


def period(seconds: int) -> str:
    """The same length as a pandas offset, for ``performance_report(period=...)``."""
    return f"{seconds}s"


@dataclass(frozen=True)
class DriftPoint:
    version: str
    start: dt.datetime
    end: dt.datetime
    rows: int
    tested: int
    drifted: int
    drifted_share: float | None
    score_psi: float
    detected: bool | None  # None: too few predictions for a verdict
    reasons: tuple[str, ...]


def drift_points(
    store: LogStore,
    model: str,
    versions: Sequence[str],
    profiles: Mapping[str, ReferenceProfile],
    cuts: Sequence[Window],
    policy: DriftPolicy,
) -> tuple[list[DriftPoint], list[str]]:
    """Every (version, window) with predictions, judged against the version's profile; and the problems met."""
    points: list[DriftPoint] = []
    problems: list[str] = []
    for version in versions:
        prof = profiles.get(version)
        if prof is None:
            continue
        for w in cuts:
            frame = store.read_window(w.start, w.end, model=model, version=version)
            if len(frame) == 0:
                continue
            try:
                check_scores(frame)
                check_profile(prof, log_features(frame), model, version)
                result = detect_drift(prof, frame[list(prof.names)], frame["score"].to_numpy(dtype=float), list(prof.names), policy)
            except ChurnOpsError as e:
                problems.append(f"v{version}, {w.describe()}: {e}")
                break  # the same mismatch repeats in every window of this version
            points.append(
                DriftPoint(
                    version,
                    w.start,
                    w.end,
                    result.rows,
                    result.tested,
                    len(result.drifted_features),
                    result.drifted_share,
                    result.score.psi,
                    result.drift_detected,
                    result.reasons,
                )
            )
    return points, problems


@dataclass(frozen=True)
class PerformancePoint:
    version: str
    start: dt.datetime
    metric: str
    measured: float | None
    labelled: int
    estimated: float | None
    predictions: int
    note: str | None  # why the measured figure is missing


def performance_points(over_time: Mapping[str, object] | None, metric: str = "auc") -> list[PerformancePoint]:
    """Measured and estimated ``metric`` per version and period, from the ``over_time`` part of ``jobs.outcome_report``."""
    if not over_time:
        return []
    figures = over_time.get("figures")
    assert isinstance(figures, list)
    by_key: dict[tuple[str, str], dict[str, dict[str, object]]] = {}
    for f in figures:
        if f["metric"] == metric and f["segment"] == "all" and f["period"] is not None:
            by_key.setdefault((f["version"], f["period"]), {})[f["source"]] = f
    out = []
    for (version, start), sources in sorted(by_key.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        m, e = sources.get("measured", {}), sources.get("estimated", {})
        out.append(
            PerformancePoint(
                version,
                pd.Timestamp(start).to_pydatetime(),
                metric,
                _float(m.get("value")),
                int(m.get("rows") or 0),  # type: ignore[call-overload]
                _float(e.get("value")),
                int(e.get("rows") or 0),  # type: ignore[call-overload]
                None if m.get("value") is not None else str(m.get("note") or "no labelled prediction"),
            )
        )
    return out


def _float(x: object) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) else None
