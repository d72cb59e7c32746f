"""The reports' plots, drawn with Matplotlib's object API from plain figures (no pyplot, no global state).

Each function takes the numbers a section computed and returns a ``Figure``;
``html.png`` turns it into the embedded image. Time axes share one style and
can carry the rollout's decisions as vertical marks (``Mark``), so drift and
performance over time read against the promotions, rollbacks and retraining
runs that explain them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from matplotlib import rcParams
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure

PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")
MARK_STYLE = {  # event -> (colour, line style)
    "Deployed": ("#4C72B0", "-"),
    "Promoted": ("#1e7b34", "-"),
    "RolledBack": ("#b3261e", "-"),
    "RetrainingTriggered": ("#8172B3", "--"),
    "RetrainingFinished": ("#8172B3", ":"),
    "RetrainingFailed": ("#8172B3", ":"),
}
OUTCOME_STYLE = {"pass": ("#1e7b34", "o"), "wait": ("#8C8C8C", "s"), "inconclusive": ("#b26a00", "D"), "fail": ("#b3261e", "X")}


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


@dataclass(frozen=True)
class Mark:
    """A decision on a time axis: a vertical line labelled with what happened."""

    time: dt.datetime
    event: str
    label: str


@dataclass(frozen=True)
class Series:
    """Points over time of one line; ``solid`` marks a point filled (e.g. drift detected) or hollow."""

    label: str
    times: Sequence[dt.datetime]
    values: Sequence[float | None]
    solid: Sequence[bool] | None = None
    dashed: bool = False
    key: str | None = None  # the colour's key (a version), when the label says more than the version

    @property
    def colour_key(self) -> str:
        return self.key or self.label


def days(times: Sequence[dt.datetime]) -> list[float]:
    """Times as Matplotlib's date numbers (days since its epoch), so the axes stay typed floats."""
    epoch = dt.datetime.fromisoformat(str(rcParams["date.epoch"])).replace(tzinfo=dt.UTC)
    return [(t - epoch).total_seconds() / 86_400.0 for t in times]


def _time_axis(ax: Axes) -> None:
    ax.xaxis_date(tz=dt.UTC)
    ax.tick_params(axis="x", labelrotation=20, labelsize=7)
    ax.set_xlabel("time (UTC)", fontsize=8)


def _marks(ax: Axes, marks: Sequence[Mark], labels: bool) -> None:
    for i, m in enumerate(sorted(marks, key=lambda m: m.time)):
        c, style = MARK_STYLE.get(m.event, ("#8C8C8C", ":"))
        x = days([m.time])[0]
        ax.axvline(x, color=c, linestyle=style, linewidth=1, alpha=0.8)
        if labels:  # staggered: decisions taken in the same step would print over each other
            ax.annotate(
                m.label,
                (x, 1.0 - 0.3 * (i % 3)),
                xycoords=("data", "axes fraction"),
                rotation=90,
                fontsize=6,
                va="top",
                ha="right",
                color=c,
            )


def _series(ax: Axes, series: Sequence[Series], colours: Mapping[str, str]) -> None:
    for s in series:
        x = days([t for t, v in zip(s.times, s.values, strict=True) if v is not None])
        y = [float(v) for v in s.values if v is not None]
        c = colours.get(s.colour_key, "#333")
        ax.plot(x, y, color=c, linestyle="--" if s.dashed else "-", linewidth=1.2, label=s.label)
        solid = [True] * len(s.values) if s.solid is None else list(s.solid)
        kept = [f for f, v in zip(solid, s.values, strict=True) if v is not None]
        ax.scatter([t for t, f in zip(x, kept, strict=True) if f], [v for v, f in zip(y, kept, strict=True) if f], color=c, s=18, zorder=3)
        hollow_x = [t for t, f in zip(x, kept, strict=True) if not f]
        ax.scatter(hollow_x, [v for v, f in zip(y, kept, strict=True) if not f], facecolors="white", edgecolors=c, s=18, zorder=3)


def roc_calibration(curves: Sequence[Mapping[str, object]]) -> Figure:
    """ROC and calibration curves of several versions on their own holdouts (``label``, ``roc``, ``calibration``)."""
    fig = Figure(figsize=(11, 4.2))
    roc_ax, cal_ax = fig.subplots(1, 2)
    for i, c in enumerate(curves):
        roc, cal = c["roc"], c["calibration"]
        assert isinstance(roc, Mapping) and isinstance(cal, Mapping)
        roc_ax.plot(roc["fpr"], roc["tpr"], color=colour(i), label=str(c["label"]))
        cal_ax.plot(cal["mean_predicted"], cal["fraction_positive"], "o-", color=colour(i), markersize=3, label=str(c["label"]))
    for ax in (roc_ax, cal_ax):
        ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=0.8)
        ax.legend(fontsize=7, loc="lower right" if ax is roc_ax else "upper left")
    roc_ax.set(title="ROC (each version's holdout)", xlabel="false positive rate", ylabel="true positive rate")
    cal_ax.set(title="Calibration (holdout, quantile bins)", xlabel="mean predicted probability", ylabel="observed churn rate")
    fig.tight_layout()
    return fig


def attributions(
    names: Sequence[str],
    mean_abs: Sequence[float],
    raises: Sequence[bool | None],
    points: Sequence[tuple[np.ndarray, np.ndarray | None]],
    title: str,
) -> Figure:
    """Mean |contribution| per feature (coloured by direction) and a SHAP-style beeswarm of the same features.

    ``raises`` is True when higher values raise the risk, False when they lower
    it, None for categorical or mixed features; ``points`` holds each feature's
    contributions and their values scaled to [0, 1] (None: no order, grey).
    """
    n = len(names)
    fig = Figure(figsize=(12, 0.32 * n + 1.6))
    bars, swarm = fig.subplots(1, 2, sharey=True, gridspec_kw={"width_ratios": [1, 1.6]})
    y = np.arange(n)[::-1]
    palette = {True: "#C44E52", False: "#4C72B0", None: "#8C8C8C"}
    bars.barh(y, mean_abs, color=[palette[r] for r in raises])
    bars.set_yticks(y, names, fontsize=7)
    bars.set(title="mean |contribution| (log-odds)", xlabel="red: higher values raise risk; blue: lower it; grey: categorical or mixed")
    bars.xaxis.label.set_fontsize(7)
    rng = np.random.default_rng(0)
    cmap = fig.colorbar(ScalarMappable(Normalize(0, 1), "coolwarm"), ax=swarm, pad=0.01)
    cmap.set_label("feature value (low to high)", fontsize=7)
    for yi, (contrib, scaled) in zip(y, points, strict=True):
        jitter = yi + rng.uniform(-0.3, 0.3, size=contrib.size)
        if scaled is None:
            swarm.scatter(contrib, jitter, s=4, color="#8C8C8C", alpha=0.6)
        else:
            swarm.scatter(contrib, jitter, s=4, c=scaled, cmap="coolwarm", vmin=0, vmax=1, alpha=0.7)
    swarm.axvline(0, color="grey", linewidth=0.8)
    swarm.set(title="contribution per prediction", xlabel="contribution to the churn log-odds")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def over_time(
    panels: Sequence[tuple[str, str, Sequence[Series], Sequence[tuple[float, str]]]],
    marks: Sequence[Mark],
    colours: Mapping[str, str],
) -> Figure:
    """Stacked time panels sharing one axis: (title, y label, series, horizontal reference lines (value, label))."""
    fig = Figure(figsize=(11, 2.8 * len(panels) + 0.6))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for i, (ax, (title, ylabel, series, lines)) in enumerate(zip(axes, panels, strict=True)):
        _series(ax, series, colours)
        for value, text in lines:
            ax.axhline(value, color="#b3261e", linestyle=":", linewidth=1)
            ax.annotate(text, (0.0, value), xycoords=("axes fraction", "data"), fontsize=6, color="#b3261e", va="bottom")
        _marks(ax, marks, labels=i == 0)
        ax.set_title(title, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
        if series:
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _time_axis(axes[-1])
    fig.tight_layout()
    return fig


def canary_timeline(
    weights: Sequence[tuple[dt.datetime, int]],
    checks: Sequence[tuple[dt.datetime, int, str]],
    marks: Sequence[Mark],
    title: str,
) -> Figure:
    """Canary traffic over time (a step line), each check at the weight it judged (by outcome), and the decisions."""
    fig = Figure(figsize=(11, 3.8))
    ax = fig.subplots()
    if weights:
        times = days([t for t, _ in weights])
        ax.step(times, [w for _, w in weights], where="post", color="#4C72B0", linewidth=1.5, label="canary traffic %")
    for outcome, (c, marker) in OUTCOME_STYLE.items():
        pts = [(t, w) for t, w, o in checks if o == outcome]
        if pts:
            ax.scatter(days([t for t, _ in pts]), [w for _, w in pts], color=c, marker=marker, s=36, zorder=3, label=f"check: {outcome}")
    _marks(ax, marks, labels=True)
    ax.set(title=title, ylabel="canary traffic (%)", ylim=(-5, 110))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    _time_axis(ax)
    fig.tight_layout()
    return fig


def business_bands(
    bands: Sequence[str], at_risk: Sequence[float | None], savings: Sequence[float | None], roi: Sequence[float | None]
) -> Figure:
    """Revenue at risk and the expected net savings of contacting each band, with the campaign's ROI per band."""
    fig = Figure(figsize=(8, 3.8))
    ax = fig.subplots()
    x = np.arange(len(bands))
    ax.bar(x - 0.2, [v or 0.0 for v in at_risk], width=0.4, color="#C44E52", label="monthly revenue at risk (sum of p x MRR)")
    ax.bar(x + 0.2, [v or 0.0 for v in savings], width=0.4, color="#55A868", label="expected net savings if the band is contacted")
    for xi, r in zip(x, roi, strict=True):
        ax.annotate(
            "ROI n/a" if r is None else f"ROI {r:+.2f}", (xi + 0.2, 0), textcoords="offset points", xytext=(0, -22), ha="center", fontsize=7
        )
    ax.axhline(0, color="grey", linewidth=0.8)
    ax.set_xticks(x, bands)
    ax.set(title="Business impact by risk band (each customer's latest score)", ylabel="currency")
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def fairness_gaps(labels: Sequence[str], positive_rate: Sequence[float | None], recall: Sequence[float | None], gate: float) -> Figure:
    """Positive-rate and recall gaps between segments per version and population, against the training gate."""
    fig = Figure(figsize=(max(6.0, 1.1 * len(labels) + 2), 3.8))
    ax = fig.subplots()
    x = np.arange(len(labels))
    ax.bar(x - 0.2, [v if v is not None else 0.0 for v in positive_rate], width=0.4, color="#4C72B0", label="positive-rate gap")
    ax.bar(x + 0.2, [v if v is not None else 0.0 for v in recall], width=0.4, color="#DD8452", label="recall gap (gated)")
    for xi, (pr, rc) in enumerate(zip(positive_rate, recall, strict=True)):
        for dx, v in ((-0.2, pr), (0.2, rc)):
            if v is None:
                ax.annotate("n/a", (xi + dx, 0), textcoords="offset points", xytext=(0, 2), ha="center", fontsize=6)
    ax.axhline(gate, color="#b3261e", linestyle="--", linewidth=1, label=f"gate {gate:g}")
    ax.set_xticks(x, labels, fontsize=7, rotation=20, ha="right")
    ax.set(title="Fairness across segments: largest gap between segments", ylabel="gap", ylim=(0, max(1.0, gate * 1.2)))
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
