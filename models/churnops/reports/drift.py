"""The window job's drift report: JSON for machines, HTML for people, and Evidently's report beside it.

The JSON holds every statistic of every feature, the bins behind them, the
verdict and why each feature did or did not drift, so a dashboard or an
incident review needs nothing else. The HTML is one self-contained file
(plots embedded as PNG) that opens from a CI artifact or a mail. Plots use
Matplotlib's object API (``Figure`` and the Agg canvas), never ``pyplot``:
no global state, safe in threads and in a KFP component.

Evidently's ``DataDriftPreset`` report is written next to ours for people
who know it. It needs a reference *sample*; the window job has only the
reference profile, so ``reference_sample`` rebuilds one from it (quantile
sketch for numbers, exact category shares, the missing share): each column
on its own has the reference distribution, which is all a univariate drift
report looks at, but its size is the sample's, so Evidently's p-values are
not ours. Our statistics are the ones the verdict and the gauges use.

The job's gauges (``write_metrics``, and ``outcome_families`` for
performance, business and fairness figures) carry the names and labels of
the metrics contract, the same as the predictor's live gauges.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import itertools
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from prometheus_client import CollectorRegistry, write_to_textfile
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from churnops.errors import InvalidInputError
from churnops.monitoring.business import BusinessReport
from churnops.monitoring.drift import BinnedStatistics, Detector, DriftPolicy, DriftResult, FeatureDrift, Layout, WindowCounts
from churnops.monitoring.fairness import FairnessResult
from churnops.monitoring.live import result_families
from churnops.monitoring.performance import PerformanceReport
from churnops.monitoring.profile import CategoricalProfile, FeatureProfile, NumericProfile, ReferenceProfile
from churnops_contract import metric_names as m

REPORT_FORMAT = "churnops.drift_report"
REPORT_VERSION = 1
JSON_NAME = "drift_report.json"
HTML_NAME = "drift_report.html"
EVIDENTLY_NAME = "evidently_data_drift.html"
METRICS_NAME = "drift.prom"  # Prometheus text format (node-exporter textfile collector, or a Pushgateway body)


def bin_labels(profile: FeatureProfile) -> list[str]:
    """Readable bin names: right-closed numeric intervals, categories then the unseen bucket."""
    if isinstance(profile, CategoricalProfile):
        return [*profile.categories, "(unseen)"]
    e = profile.edges
    if not e:
        return ["all values"]
    return [f"<= {e[0]:.4g}", *(f"({a:.4g}, {b:.4g}]" for a, b in itertools.pairwise(e)), f"> {e[-1]:.4g}"]


@dataclass(frozen=True)
class WindowInfo:
    """What the window covers, for the report's header."""

    model: str
    version: str
    start: str | None = None  # ISO time of the first prediction
    end: str | None = None
    source: str = "prediction log"


def report_dict(result: DriftResult, layout: Layout, counts: WindowCounts, info: WindowInfo) -> dict[str, Any]:
    """The JSON report: verdict, reasons, score drift, and every feature with its bins."""
    doc = result.to_dict()
    for i, feature in enumerate(doc["features"]):
        prof = layout.profile.features[i]
        n = int(counts.bins[i].sum())
        feature["bins"] = {
            "labels": bin_labels(prof),
            "reference": layout.reference[i, : prof.n_bins].tolist(),
            "window": (counts.bins[i, : prof.n_bins] / n).tolist() if n else None,
            "window_counts": counts.bins[i, : prof.n_bins].tolist(),
        }
    doc["score"]["bins"] = {
        "labels": bin_labels(layout.profile.score),
        "reference": layout.score_reference.tolist(),
        "window": (counts.score_bins / counts.rows).tolist(),
    }
    head = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "model": info.model,
        "model_version": info.version,
        "window": {"start": info.start, "end": info.end, "source": info.source, "rows": counts.rows},
    }
    return {**head, **doc}


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    FigureCanvasAgg(fig)  # attaches the Agg canvas: no pyplot, no global backend
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def feature_plot(name: str, labels: Sequence[str], reference: np.ndarray, window: np.ndarray | None, subtitle: str) -> str:
    """Reference vs window shares per bin, as a base64 PNG."""
    fig = Figure(figsize=(5.2, 2.4), dpi=80)
    fig.subplots_adjust(left=0.1, right=0.98, top=0.8, bottom=0.36)  # fixed margins: a layout engine doubles the cost
    ax = fig.add_subplot()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, reference, width=0.4, label="reference", color="#7a8ca3")
    if window is not None:
        ax.bar(x + 0.2, window, width=0.4, label="window", color="#d9822b")
    ax.set_xticks(x, labels, rotation=40, ha="right", fontsize=6)
    ax.tick_params(axis="y", labelsize=7)
    ax.set_ylabel("share", fontsize=7)
    ax.set_title(f"{name}\n{subtitle}", fontsize=8)
    ax.legend(fontsize=6, frameon=False)
    return _png(fig)


def _fmt(x: float | None, spec: str = ".3g") -> str:
    return "" if x is None else format(x, spec)


def _feature_row(f: FeatureDrift) -> str:
    test_value = f.ks if f.kind == "numeric" else f.chi2
    quality = f.out_of_range_rate if f.kind == "numeric" else f.unseen_rate
    cells = [
        html.escape(f.feature),
        f.kind,
        _fmt(f.psi),
        _fmt(f.js),
        f"{f.test} {_fmt(test_value)}",
        _fmt(f.p_value, ".2g"),
        _fmt(f.q_value, ".2g"),
        "yes" if f.drifted else "no",
        _fmt(f.missing_rate, ".1%"),
        _fmt(quality, ".1%"),
        html.escape(f.reason),
    ]
    cls = ' class="drifted"' if f.drifted else ""
    return f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5rem;color:#1d2733}
.verdict{padding:.8rem 1rem;border-radius:6px;font-weight:600}
.drift{background:#fde2e1}.ok{background:#e3f4e1}.none{background:#eee}
table{border-collapse:collapse;font-size:.8rem}td,th{border:1px solid #ccd;padding:2px 6px;text-align:left}
tr.drifted td{background:#fff1e6}.plots{display:flex;flex-wrap:wrap;gap:6px}.plots img{border:1px solid #dde}
"""


def render_html(report: dict[str, Any], result: DriftResult, max_plots: int | None = None) -> str:
    """A self-contained HTML page: verdict, reasons, the feature table, and a plot for the score and per feature.

    Features are plotted drifted first, then by PSI; ``max_plots`` caps the
    number of feature plots (each costs tens of milliseconds), the table
    still lists every feature.
    """
    verdict = {True: ("drift", "Drift detected"), False: ("ok", "No drift"), None: ("none", "No verdict")}[result.drift_detected]
    window = report["window"]
    title = f"Drift report - {report['model']} v{report['model_version']}"
    plots = []
    s = report["score"]
    plots.append(
        feature_plot(
            "score",
            s["bins"]["labels"],
            np.asarray(s["bins"]["reference"]),
            np.asarray(s["bins"]["window"]),
            f"psi {s['psi']:.3f}, ks p={s['p_value']:.2g}",
        )
    )
    ordered = sorted(range(len(result.features)), key=lambda i: (not result.features[i].drifted, -(result.features[i].psi or 0.0)))
    shown = ordered if max_plots is None else ordered[:max_plots]
    for i in shown:
        f, b = result.features[i], report["features"][i]["bins"]
        window_share = None if b["window"] is None else np.asarray(b["window"])
        subtitle = f"psi {_fmt(f.psi)}, {f.test} p={_fmt(f.p_value, '.2g')}" + (" - drifted" if f.drifted else "")
        plots.append(feature_plot(f.feature, b["labels"], np.asarray(b["reference"]), window_share, subtitle))
    header = "".join(
        f"<th>{h}</th>"
        for h in ("feature", "kind", "psi", "js", "test", "p", "q (BH)", "drifted", "missing", "out of range / unseen", "why")
    )
    rows = "".join(_feature_row(result.features[i]) for i in ordered)
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in result.reasons)
    images = "".join(f'<img alt="drift plot" src="data:image/png;base64,{p}">' for p in plots)
    if len(shown) < len(ordered):
        images += f"<p>{len(ordered) - len(shown)} more features are in the table above (plots limited to {max_plots}).</p>"
    policy = html.escape(json.dumps(report["policy"]))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p>Window: {window["rows"]} predictions from {html.escape(str(window["source"]))}, {html.escape(str(window["start"]))} to {html.escape(str(window["end"]))}.</p>
<div class="verdict {verdict[0]}">{verdict[1]}: {len(result.drifted_features)} of {result.tested} features drifted</div>
<ul>{reasons}</ul>
<p>Policy: <code>{policy}</code></p>
<h2>Features</h2>
<table><thead><tr>{header}</tr></thead><tbody>{rows}</tbody></table>
<h2>Distributions (reference vs window)</h2>
<div class="plots">{images}</div>
</body></html>
"""


def reference_sample(profile: ReferenceProfile, rows: int = 5_000, seed: int = 0) -> pd.DataFrame:
    """A sample with the profile's per-column distributions (for Evidently's report; see the module docstring)."""
    if rows < 1:
        raise InvalidInputError(f"must be at least 1, got {rows}", field="rows")
    rng = np.random.default_rng(seed)
    columns: dict[str, np.ndarray] = {}
    for f in profile.features:
        present = rows - round(f.missing_rate * rows)
        if isinstance(f, NumericProfile):
            levels = (np.arange(present) + 0.5) / present
            idx = np.minimum(np.searchsorted(np.asarray(f.cdf), levels, side="left"), len(f.grid) - 1)
            values: np.ndarray = np.concatenate((np.asarray(f.grid)[idx], np.full(rows - present, np.nan)))
        else:
            share = np.asarray(f.counts, dtype=float) / f.values * present
            take = np.floor(share).astype(int)
            take[np.argsort(share - take)[::-1][: present - take.sum()]] += 1  # largest remainders
            values = np.concatenate((np.repeat(np.asarray(f.categories, dtype=object), take), np.full(rows - present, None, dtype=object)))
        columns[f.name] = rng.permutation(values)
    return pd.DataFrame(columns)


def evidently_report(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str], path: Path
) -> Path:
    """Evidently's DataDriftPreset on the same columns, saved as HTML."""
    # Evidently costs seconds to import; only this report needs it.
    from evidently import DataDefinition, Dataset, Report  # noqa: PLC0415
    from evidently.presets import DataDriftPreset  # noqa: PLC0415

    cols = [*numeric, *categorical]
    definition = DataDefinition(numerical_columns=list(numeric), categorical_columns=list(categorical))
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(current[cols], data_definition=definition), Dataset.from_pandas(reference[cols], data_definition=definition)
    )
    snapshot.save_html(str(path))
    return path


class _FixedCollector(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def write_metrics(result: DriftResult, window_size: int, path: Path, model: str, version: str) -> Path:
    """The window job's gauges, the same names and labels as the predictor's live ones, as a Prometheus text file."""
    registry = CollectorRegistry()
    registry.register(_FixedCollector(result_families(result, window_size, model, version)))
    write_to_textfile(str(path), registry)
    return path


def outcome_families(
    model: str,
    performance: PerformanceReport | None = None,
    business: BusinessReport | None = None,
    fairness: Sequence[FairnessResult] = (),
) -> list[Metric]:
    """Performance, business and fairness figures as the contract's gauges (figures without a period only).

    A figure without a value (None: no labels yet, one class only, ...) has no
    sample, never a zero. The fairness gauge carries the positive-rate gap of
    every prediction and the recall gap of the labelled ones.
    """
    base = [m.LABEL_MODEL, m.LABEL_VERSION]
    perf = GaugeMetricFamily(
        m.PERFORMANCE,
        "Model performance, measured from delayed labels or estimated (CBPE)",
        labels=[*base, m.LABEL_SEGMENT, m.LABEL_METRIC, m.LABEL_SOURCE],
    )
    coverage = GaugeMetricFamily(m.LABEL_COVERAGE, "Share of predictions with an outcome", labels=base)
    churn = GaugeMetricFamily(m.CHURN_RATE, "Churn rate, measured or estimated", labels=[*base, m.LABEL_SEGMENT, m.LABEL_SOURCE])
    risk = GaugeMetricFamily(m.REVENUE_AT_RISK, "Monthly revenue times churn probability", labels=[*base, m.LABEL_SEGMENT, m.LABEL_BAND])
    savings = GaugeMetricFamily(m.EXPECTED_SAVINGS, "Expected net savings of the retention campaign", labels=[*base, m.LABEL_SEGMENT])
    roi = GaugeMetricFamily(m.CAMPAIGN_ROI, "Expected return on the retention campaign", labels=[*base, m.LABEL_SEGMENT])
    satisfaction = GaugeMetricFamily(m.SATISFACTION, "CSAT and NPS by risk band", labels=[*base, m.LABEL_BAND, m.LABEL_METRIC])
    gap = GaugeMetricFamily(m.FAIRNESS_GAP, "Largest gap between segments", labels=[*base, m.LABEL_METRIC, m.LABEL_SOURCE])
    if performance is not None:
        for f in performance.figures:
            if f.period is None and f.value is not None and f.metric in m.PERFORMANCE_METRICS:
                perf.add_metric([model, f.version, f.segment, f.metric, f.source], f.value)
        for c in performance.coverage:
            if c.period is None and c.segment == m.ALL_SEGMENTS:
                coverage.add_metric([model, c.version], c.coverage)
    if business is not None:
        for b in business.figures:
            if b.period is not None or b.value is None:
                continue
            if b.metric == "churn_rate" and b.band == "all":
                churn.add_metric([model, b.version, b.segment, b.source], b.value)
            elif b.metric == "revenue_at_risk":
                risk.add_metric([model, b.version, b.segment, b.band], b.value)
            elif b.metric == "net_savings" and b.source == m.SOURCE_ESTIMATED:
                savings.add_metric([model, b.version, b.segment], b.value)
            elif b.metric == "roi" and b.source == m.SOURCE_ESTIMATED:
                roi.add_metric([model, b.version, b.segment], b.value)
            elif b.metric in ("csat", "nps") and b.segment == m.ALL_SEGMENTS:
                satisfaction.add_metric([model, b.version, b.band, b.metric], b.value)
    for r in fairness:
        value = r.positive_rate_gap if r.population == "predictions" else r.recall_gap
        if value is not None:
            gap.add_metric([model, r.version, "positive_rate_gap" if r.population == "predictions" else "recall_gap", r.source], value)
    return [f for f in (perf, coverage, churn, risk, savings, roi, satisfaction, gap) if f.samples]


@dataclass(frozen=True)
class WindowJobOutput:
    result: DriftResult
    counts: WindowCounts
    json_path: Path
    html_path: Path
    metrics_path: Path
    evidently_path: Path | None


def run_window_job(
    profile: ReferenceProfile,
    frame: pd.DataFrame,
    scores: np.ndarray | Sequence[float],
    out_dir: Path,
    info: WindowInfo,
    *,
    features: Sequence[str] | None = None,
    policy: DriftPolicy | None = None,
    evidently: bool = True,
    evidently_reference: pd.DataFrame | None = None,
    max_plots: int | None = None,
    detector: Detector | None = None,
) -> WindowJobOutput:
    """Judge one window of the prediction log and write its reports into ``out_dir``.

    ``frame`` holds the window's feature columns (``features`` names them;
    default every column). Evidently compares with ``evidently_reference``
    (e.g. the training frame) or, without it, with ``reference_sample``.
    ``detector`` replaces the default statistics (``drift.Detector``).
    """
    layout = Layout.of(profile)
    counts, result = (detector or BinnedStatistics()).detect(layout, frame, scores, features, policy or DriftPolicy())
    doc = report_dict(result, layout, counts, info)
    doc["generated_at"] = dt.datetime.now(dt.UTC).isoformat()
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, html_path = out_dir / JSON_NAME, out_dir / HTML_NAME
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    html_path.write_text(render_html(doc, result, max_plots))
    metrics_path = write_metrics(result, counts.rows, out_dir / METRICS_NAME, info.model, info.version)
    evidently_path = None
    if evidently:
        numeric = [f.name for f in profile.features if isinstance(f, NumericProfile)]
        categorical = [f.name for f in profile.features if isinstance(f, CategoricalProfile)]
        reference = evidently_reference if evidently_reference is not None else reference_sample(profile)
        evidently_path = evidently_report(reference, frame, numeric, categorical, out_dir / EVIDENTLY_NAME)
    return WindowJobOutput(result, counts, json_path, html_path, metrics_path, evidently_path)
