"""The monitoring jobs that write reports: drift of a window, and performance, business and fairness from delayed labels.

Each job reads a checked window of the prediction log (``monitoring.windows``),
calls the statistics (``monitoring.drift``, ``performance``, ``business``,
``fairness``) and writes JSON for machines, HTML for people (``reports.drift``)
and Prometheus gauges with the metrics contract's names. Writes are atomic: a
reader (the page, a CI step) never sees half a report.
"""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import Metric
from prometheus_client.registry import Collector

from churnops.errors import InvalidInputError
from churnops.monitoring.business import business_report
from churnops.monitoring.drift import DriftPolicy, DriftResult
from churnops.monitoring.fairness import fairness_report
from churnops.monitoring.labels import labels_for
from churnops.monitoring.performance import LABEL, estimated_metrics, join_labels, performance_report
from churnops.monitoring.predlog.records import LogStore
from churnops.monitoring.profile import ReferenceProfile
from churnops.monitoring.windows import (
    OutcomeReport,
    OutcomeSettings,
    Window,
    check_profile,
    check_scores,
    log_features,
    prepare,
    read_version,
    read_window,
    thresholds_needed,
)
from churnops.reports.drift import WindowInfo, WindowJobOutput, outcome_families, run_window_job
from churnops_contract.metric_names import SOURCE_ESTIMATED

PERFORMANCE_FORMAT = "churnops.performance_report"


PERFORMANCE_VERSION = 1


PERFORMANCE_JSON = "performance_report.json"


PERFORMANCE_METRICS = "performance.prom"


SHOWN_FEATURES = 15  # drifted features listed in the printed verdict (the report lists all)


QUALITY_OUT_OF_RANGE = 0.05


QUALITY_UNSEEN = 0.01


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
