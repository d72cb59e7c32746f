"""The monitoring jobs people run: read a window of the prediction log, judge it, write the reports.

The statistics live in ``drift``, ``performance``, ``business`` and
``fairness``; this module is the I/O edge around them. It opens the
prediction log, reads a window, checks what it read before any statistic
sees it (an empty window, a reference profile that does not match the logged
features, NaN scores, labels of customers nobody scored) so that bad input
ends in a message naming the problem rather than a traceback or a silent
zero, then calls the statistics and writes the files.

Model facts (version, threshold, reference profile) come from the caller:
monitoring sits below training in the package layers, so the registry is
resolved by the CLI or the pipeline component that calls in.

Labels layout (what ``churnops monitor performance --labels`` reads and what
the monitoring page picks up from ``<data-dir>/labels/``): CSV or Parquet
files with one row per customer and observation window, columns
``customer_id``, ``event_timestamp`` (the window's start, UTC) and
``churned_30d`` (0 or 1: churned within the horizon after it). Several files
are read as one table; rows received twice count once.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import os
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from churnops.data.ingest import read_table
from churnops.errors import InvalidInputError, NotFoundError
from churnops.monitoring.business import BusinessColumns, CampaignConfig, business_report
from churnops.monitoring.drift import DriftPolicy, DriftResult
from churnops.monitoring.fairness import FairnessConfig, fairness_report
from churnops.monitoring.performance import LABEL, LabelColumns, estimated_metrics, join_labels, performance_report
from churnops.monitoring.predlog import FIXED_COLUMNS, LogStore
from churnops.monitoring.profile import ReferenceProfile
from churnops.monitoring.report import WindowInfo, WindowJobOutput, outcome_families, run_window_job
from churnops_contract.metrics import SOURCE_ESTIMATED

LABEL_SUFFIXES = (".csv", ".parquet")
PERFORMANCE_FORMAT = "churnops.performance_report"
PERFORMANCE_VERSION = 1
PERFORMANCE_JSON = "performance_report.json"
PERFORMANCE_METRICS = "performance.prom"
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$")
_UNITS = {"s": 1, "m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
SHOWN_FEATURES = 15  # drifted features listed in the printed verdict (the report lists all)
# Feature quality worth a line in the verdict: the unseen share is the ChurnOpsUnseenCategories alert's threshold.
QUALITY_OUT_OF_RANGE = 0.05
QUALITY_UNSEEN = 0.01


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
        from churnops.monitoring.predlog_postgres import PostgresStore  # noqa: PLC0415 - psycopg only when asked for

        return PostgresStore(dsn)
    from churnops.monitoring.predlog_parquet import ParquetStore  # noqa: PLC0415

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


@dataclass(frozen=True)
class DriftJob:
    """A judged window and where its reports went."""

    model: str
    version: str
    window: Window
    output: WindowJobOutput

    @property
    def result(self) -> DriftResult:
        return self.output.result

    def paths(self) -> dict[str, Path]:
        out = {"json": self.output.json_path, "html": self.output.html_path, "metrics": self.output.metrics_path}
        if self.output.evidently_path is not None:
            out["evidently"] = self.output.evidently_path
        return out


def run_drift(
    store: LogStore,
    profile: ReferenceProfile,
    model: str,
    version: str,
    window: Window,
    out_dir: Path,
    *,
    evidently: bool = True,
    max_plots: int | None = None,
    policy: DriftPolicy | None = None,
) -> DriftJob:
    """Read the version's window, check it against the profile, and write the drift reports into ``out_dir``."""
    frame = read_version(store, window, model, version)
    check_scores(frame)
    features = log_features(frame)
    check_profile(profile, features, model, version)
    info = WindowInfo(model, version, window.start.isoformat(), window.end.isoformat(), f"prediction log ({_sources(frame)})")
    output = run_window_job(
        profile,
        frame[list(profile.names)],
        frame["score"].to_numpy(dtype=float),
        out_dir,
        info,
        features=list(profile.names),
        policy=policy,
        evidently=evidently,
        max_plots=max_plots,
    )
    return DriftJob(model, version, window, output)


def _sources(frame: pd.DataFrame) -> str:
    counts = frame["source"].astype(str).value_counts()
    return ", ".join(f"{int(n):,} {name}" for name, n in counts.items())


def drift_verdict(job: DriftJob, shown: int = SHOWN_FEATURES) -> list[str]:
    """The short verdict printed after a drift job: the decision, why, and the drifted features."""
    r = job.result
    head = {True: "DRIFT DETECTED", False: "no drift", None: "NO VERDICT"}[r.drift_detected]
    lines = [f"{job.model} v{job.version}, {r.rows:,} predictions from {job.window.describe()}: {head}"]
    lines += [f"  {reason}" for reason in r.reasons]
    drifted = sorted((f for f in r.features if f.drifted), key=lambda f: -(f.psi or 0.0))
    if drifted:
        lines.append(f"  drifted features ({len(drifted)}):")
        lines += [f"    {f.feature}: {f.reason}" for f in drifted[:shown]]
        if len(drifted) > shown:
            lines.append(f"    ... and {len(drifted) - shown} more (see the report)")
    quality = [f for f in r.features if (f.out_of_range_rate or 0) >= QUALITY_OUT_OF_RANGE or (f.unseen_rate or 0) >= QUALITY_UNSEEN]
    if quality:
        names = ", ".join(f.feature for f in quality[:shown])
        lines.append(f"  feature quality: {len(quality)} feature(s) with values out of the reference range or unseen categories: {names}")
    return lines


# --- labels ---------------------------------------------------------------------------------------------


def read_labels(path: Path) -> pd.DataFrame:
    """A labels file (CSV or Parquet, see the module docstring) with its three columns checked."""
    frame = read_table(path)
    lc = LabelColumns()
    missing = [c for c in (lc.customer, lc.start, lc.target) if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"required columns are missing: {missing} (have {list(frame.columns)[:10]})", field=str(path))
    return frame[[lc.customer, lc.start, lc.target]]


def label_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.iterdir() if p.is_file() and p.suffix.lower() in LABEL_SUFFIXES and not p.name.startswith("."))


def read_labels_dir(directory: Path) -> pd.DataFrame | None:
    """Every labels file in ``directory`` as one table; None when there is none."""
    files = label_files(directory)
    if not files:
        return None
    return pd.concat([read_labels(p) for p in files], ignore_index=True)


def labels_for(labels: pd.DataFrame, window: Window, horizon_days: float) -> tuple[pd.DataFrame, int]:
    """Labels whose observation window [ts, ts + horizon) overlaps the prediction window, and how many were left out."""
    lc = LabelColumns()
    try:
        ts = pd.to_datetime(labels[lc.start], utc=True)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"not a timestamp ({e})", field=f"labels.{lc.start}") from None
    keep = (ts < pd.Timestamp(window.end)) & (ts + pd.Timedelta(days=horizon_days) > pd.Timestamp(window.start))
    return labels.loc[keep.to_numpy()], int((~keep).sum())


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


def outcome_report(
    frame: pd.DataFrame,
    labels: pd.DataFrame | None,
    thresholds: Mapping[str, float],
    settings: OutcomeSettings,
    window: Window,
    model: str,
) -> tuple[OutcomeReport, list[Metric]]:
    """Measured and estimated performance, business and fairness figures of the predictions in ``frame``.

    A prediction whose outcome has not arrived is *pending*: it is left out of
    every measured figure (``performance.join_labels``), and the CBPE
    estimate of the pending predictions is reported beside the measured ones.
    """
    check_scores(frame)
    data, notes = prepare(frame, settings)
    used_labels: pd.DataFrame | None = None
    ignored = 0
    if labels is not None:
        used_labels, ignored = labels_for(labels, window, settings.horizon_days)
        if ignored:
            notes.append(f"{ignored:,} label row(s) describe observation windows outside {window.describe()} and were not used")
    by_segment = "segment" in data.columns
    perf = performance_report(data, used_labels, thresholds, horizon_days=settings.horizon_days, by_segment=by_segment)
    # the same join the performance report made, for the measured business and fairness figures
    joined = data if used_labels is None else join_labels(data, used_labels, horizon_days=settings.horizon_days).frame
    over_time = None
    if settings.period is not None:
        over_time = performance_report(
            data, used_labels, thresholds, horizon_days=settings.horizon_days, by_segment=False, period=settings.period
        )
    business = business_report(joined, thresholds, settings.campaign, by_segment=by_segment, business_columns=settings.business_columns)
    fairness = fairness_report(joined, thresholds, settings.fairness) if by_segment else []
    pending = _pending_estimates(joined, thresholds)
    unknown = perf.join.unknown_customer_labels if perf.join is not None else 0
    if perf.join is not None:
        notes += list(perf.join.messages)
    doc: dict[str, Any] = {
        "format": PERFORMANCE_FORMAT,
        "version": PERFORMANCE_VERSION,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(),
        "model": model,
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat(), "predictions": len(frame)},
        "thresholds": dict(thresholds),
        "labels": None if labels is None else {"rows": len(labels), "used": 0 if used_labels is None else len(used_labels)},
        "join": None if perf.join is None else asdict(perf.join),
        "performance": {"figures": [asdict(f) for f in perf.figures], "coverage": [asdict(c) for c in perf.coverage]},
        "pending_estimates": pending,
        "over_time": None if over_time is None else {"period": settings.period, "figures": [asdict(f) for f in over_time.figures]},
        "business": {"campaign": asdict(settings.campaign), "figures": [asdict(f) for f in business.figures]},
        "fairness": [r.to_dict() for r in fairness],
        "notes": notes,
    }
    families = outcome_families(model, perf, business, fairness)
    return OutcomeReport(_plain(doc), unknown), families


def _pending_estimates(frame: pd.DataFrame, thresholds: Mapping[str, float]) -> list[dict[str, Any]]:
    """CBPE estimates over the predictions still waiting for their outcome, per version."""
    out: list[dict[str, Any]] = []
    versions = frame["model_version"].astype(str)
    pending = frame[LABEL].isna().to_numpy() if LABEL in frame.columns else np.ones(len(frame), bool)
    for version in sorted(versions.unique()):
        rows = (versions == version).to_numpy() & pending
        p = frame.loc[rows, "score"].to_numpy(dtype=float)
        metrics = estimated_metrics(p, float(thresholds[version]))
        out.append(
            {
                "version": version,
                "pending": int(rows.sum()),
                "source": SOURCE_ESTIMATED,
                "metrics": {k: {"value": v.value, "note": v.note} for k, v in metrics.items()},
            }
        )
    return out


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, NumPy scalars become Python numbers, tuples lists."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class _Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def write_json(path: Path, doc: Mapping[str, Any]) -> Path:
    """Write atomically: a reader (the page, a CI step) never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(doc, indent=1, allow_nan=False) + "\n")
    tmp.replace(path)
    return path


def write_families(path: Path, families: list[Metric]) -> Path:
    """Gauges in the Prometheus text format (the same names and labels as the predictor's)."""
    registry = CollectorRegistry()
    registry.register(_Fixed(families))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), registry)
    return path


@dataclass(frozen=True)
class PerformanceJob:
    report: OutcomeReport
    json_path: Path
    metrics_path: Path


def run_performance(
    store: LogStore,
    window: Window,
    model: str,
    versions: Sequence[str] | None,
    thresholds: Mapping[str, float] | None,
    labels: pd.DataFrame | None,
    settings: OutcomeSettings,
    out_dir: Path,
    threshold_of: Callable[[str], float] | None = None,
) -> PerformanceJob:
    """Read the window (all versions of ``model``, or ``versions``), compute the outcome figures, write JSON and gauges.

    ``thresholds`` maps each version to its campaign threshold; versions found
    in the window without one are looked up with ``threshold_of(version)``.
    """
    frame = read_window(store, window, model, versions)
    found = thresholds_needed(frame)
    known = dict(thresholds or {})
    for v in found:
        if v not in known:
            if threshold_of is None:
                raise InvalidInputError(f"no threshold for model version {v!r}", field="--threshold")
            known[v] = float(threshold_of(v))
    report, families = outcome_report(frame, labels, {v: known[v] for v in found}, settings, window, model)
    json_path = write_json(out_dir / PERFORMANCE_JSON, report.doc)
    metrics_path = write_families(out_dir / PERFORMANCE_METRICS, families)
    return PerformanceJob(report, json_path, metrics_path)


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


def _figure(doc: Mapping[str, Any], version: str, metric: str, source: str) -> Mapping[str, Any] | None:
    for f in doc["performance"]["figures"]:
        if (f["version"], f["segment"], f["metric"], f["source"], f["period"]) == (version, "all", metric, source, None):
            return dict(f)
    return None


def _num(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def performance_summary(report: OutcomeReport) -> list[str]:
    """The short printed summary: per version coverage, measured vs estimated figures, business and fairness; each tagged."""
    doc = report.doc
    lines = [f"{doc['model']}, {doc['window']['predictions']:,} predictions from {doc['window']['start']} to {doc['window']['end']}"]
    coverage = {c["version"]: c for c in doc["performance"]["coverage"] if c["segment"] == "all" and c["period"] is None}
    pending = {p["version"]: p for p in doc["pending_estimates"]}
    for version in sorted(coverage):
        c = coverage[version]
        lines.append(
            f"v{version}: {c['predictions']:,} predictions, {c['labelled']:,} labelled ({c['coverage']:.1%} coverage), "
            f"{c['pending']:,} pending (never counted as negatives); threshold {doc['thresholds'][version]:.3f}"
        )
        for metric in ("auc", "pr_auc", "precision", "recall", "brier", "ece"):
            measured = _figure(doc, version, metric, "measured")
            estimated = _figure(doc, version, metric, "estimated")
            m_text = _num(measured["value"] if measured else None) + " [measured]"
            e_text = _num(estimated["value"] if estimated else None) + " [estimated, CBPE]" if estimated else "not estimated"
            lines.append(f"  {metric:<9} {m_text:<22} {e_text}")
        est = pending[version]["metrics"]["auc"]["value"] if version in pending else None
        lines.append(f"  pending predictions: AUC {_num(est)} [estimated, CBPE]")
        lines += _business_lines(doc, version)
        lines += _fairness_lines(doc, version)
    lines += [f"note: {n}" for n in doc["notes"]]
    return lines


def _business(doc: Mapping[str, Any], version: str, metric: str, source: str, band: str = "all") -> float | None:
    for f in doc["business"]["figures"]:
        key = (f["version"], f["segment"], f["metric"], f["source"], f["band"], f["period"])
        if key == (version, "all", metric, source, band, None):
            value: float | None = f["value"]
            return value
    return None


def _business_lines(doc: Mapping[str, Any], version: str) -> list[str]:
    out = [
        f"  churn rate {_num(_business(doc, version, 'churn_rate', 'measured'), '.1%')} [measured], "
        f"{_num(_business(doc, version, 'churn_rate', 'estimated'), '.1%')} [estimated]",
        f"  revenue at risk {_num(_business(doc, version, 'revenue_at_risk', 'estimated'), ',.0f')} per month [estimated]; "
        f"campaign net savings {_num(_business(doc, version, 'net_savings', 'estimated'), ',.0f')}, "
        f"ROI {_num(_business(doc, version, 'roi', 'estimated'), '.2f')} [estimated]",
    ]
    bands = []
    for band in ("high", "medium", "low"):
        csat, nps = _business(doc, version, "csat", "measured", band), _business(doc, version, "nps", "measured", band)
        if csat is not None or nps is not None:
            bands.append(f"{band}: CSAT {_num(csat, '.2f')}, NPS {_num(nps, '.0f')}")
    if bands:
        out.append("  satisfaction by band [measured]: " + "; ".join(bands))
    return out


def _fairness_lines(doc: Mapping[str, Any], version: str) -> list[str]:
    out = []
    for r in doc["fairness"]:
        if r["version"] != version:
            continue
        gap, name = (r["positive_rate_gap"], "positive-rate gap") if r["population"] == "predictions" else (r["recall_gap"], "recall gap")
        breached = f" BREACHED ({', '.join(r['breached'])} > {r['max_gap']})" if r["breached"] else ""
        why = f": {r['notes'][-1]}" if gap is None and r["notes"] else ""
        out.append(f"  fairness, {r['population']}: {name} {_num(gap)} [measured] (gate {r['max_gap']}){breached}{why}")
    return out


# --- privacy --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Erasure:
    customer_id: int
    log_records: int
    label_rows: int
    label_files: tuple[Path, ...]


def erase_labels(directory: Path, customer_id: int) -> tuple[int, tuple[Path, ...]]:
    """Remove the customer's rows from every labels file (each rewritten atomically); returns rows removed and files changed."""
    removed, changed = 0, []
    for path in label_files(directory):
        frame = read_table(path)
        if "customer_id" not in frame.columns:
            continue
        hit = pd.to_numeric(frame["customer_id"], errors="coerce").to_numpy() == customer_id
        if not hit.any():
            continue
        keep = frame.loc[~hit]
        tmp = path.with_name(f".{path.name}.tmp")
        if path.suffix.lower() == ".csv":
            keep.to_csv(tmp, index=False)
        else:
            keep.to_parquet(tmp, index=False)
        with tmp.open("rb") as f:
            os.fsync(f.fileno())
        tmp.replace(path)
        removed += int(hit.sum())
        changed.append(path)
    return removed, tuple(changed)


def erase_customer(store: LogStore, customer_id: int, labels_dir: Path | None) -> Erasure:
    """A privacy request: the customer's prediction log records (and labels) go; the audit chain keeps only digests."""
    if customer_id < 0:
        raise InvalidInputError(f"a customer id is not negative, got {customer_id}", field="--customer")
    records = store.erase_customer(customer_id)
    rows, files = erase_labels(labels_dir, customer_id) if labels_dir is not None else (0, ())
    return Erasure(customer_id, records, rows, files)
