"""Fairness across segments for live predictions and for labelled outcomes.

The same two gaps as the training gates, with the same thresholds passed in:
- positive-rate gap: the spread of the share flagged (score >= threshold)
  between segments; computable on every prediction, so it is watched live;
- recall gap: the spread of the share of actual churners flagged; needs
  outcomes, so it is measured on labelled predictions only.
Segment churn rates differ legitimately, so by default only the recall gap
breaches (as in the training gate); the positive-rate gap is reported.

Small segments make gaps noisy: a segment with fewer than ``min_rows``
predictions (or, for recall, ``min_churners`` churners) is listed with its
rates but left out of the gap, and the result says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnops.errors import InvalidInputError
from churnops.monitoring.performance import LABEL, Columns, threshold_of
from churnops.monitoring.profile import check_scores
from churnops_contract.metric_names import SOURCE_MEASURED

GAP_METRICS = ("positive_rate_gap", "recall_gap")


@dataclass(frozen=True)
class FairnessConfig:
    max_gap: float = 0.25  # the training gate's largest allowed gap
    gate_metrics: tuple[str, ...] = ("recall_gap",)  # gaps that breach; the others are reported
    min_rows: int = 30
    min_churners: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.max_gap <= 1:
            raise InvalidInputError(f"must be in [0, 1], got {self.max_gap}", field="fairness.max_gap")
        unknown = [m for m in self.gate_metrics if m not in GAP_METRICS]
        if unknown:
            raise InvalidInputError(f"unknown gap metrics {unknown}; choose from {list(GAP_METRICS)}", field="fairness.gate_metrics")
        if self.min_rows < 1 or self.min_churners < 1:
            raise InvalidInputError("min_rows and min_churners must be at least 1", field="fairness")


@dataclass(frozen=True)
class SegmentRates:
    segment: str
    rows: int
    churners: int | None  # labelled churners (None for live predictions)
    positive_rate: float
    recall: float | None
    in_gap: bool  # counted in the gaps (large enough)


@dataclass(frozen=True)
class FairnessResult:
    version: str
    population: str  # "predictions" (every live prediction) or "labelled" (predictions with an outcome)
    source: str  # measured: rates of what the model flagged and what happened
    segments: tuple[SegmentRates, ...]
    positive_rate_gap: float | None
    recall_gap: float | None  # None on live predictions, or with fewer than two large-enough segments
    max_gap: float
    breached: tuple[str, ...]  # gate metrics above max_gap
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _gap(values: list[float]) -> float | None:
    return float(max(values) - min(values)) if len(values) >= 2 else None


def segment_fairness(
    scores: np.ndarray,
    segments: np.ndarray,
    threshold: float,
    config: FairnessConfig | None = None,
    labels: np.ndarray | None = None,
    version: str = "",
) -> FairnessResult:
    """Gaps across segments; with ``labels`` (0/1 per row) the recall gap too."""
    cfg = config or FairnessConfig()
    p = check_scores(scores, "scores")
    seg = pd.Series(segments).astype("string").fillna("(missing)").to_numpy()
    if seg.size != p.size or (labels is not None and len(labels) != p.size):
        raise InvalidInputError(
            f"{p.size} scores, {seg.size} segments and {None if labels is None else len(labels)} labels", field="segments"
        )
    if p.size == 0:
        raise InvalidInputError("no predictions", field="scores")
    y = None if labels is None else np.asarray(labels, dtype=float)
    if y is not None and not np.isin(y, (0.0, 1.0)).all():
        raise InvalidInputError("labels must be 0 or 1", field="labels")
    flagged = p >= threshold
    rates: list[SegmentRates] = []
    notes: list[str] = []
    for s in sorted(set(seg.tolist())):
        m = seg == s
        churners = None if y is None else int(y[m].sum())
        recall = None if y is None or not churners else float((flagged & m & (y == 1)).sum() / churners)
        rates.append(SegmentRates(str(s), int(m.sum()), churners, float(flagged[m].mean()), recall, bool(m.sum() >= cfg.min_rows)))
    small = [r.segment for r in rates if not r.in_gap]
    if small:
        notes.append(f"segments with fewer than {cfg.min_rows} predictions are left out of the gaps: {small}")
    pr_gap = _gap([r.positive_rate for r in rates if r.in_gap])
    recall_gap = None
    if y is not None:
        eligible = [r for r in rates if r.in_gap and r.churners is not None and r.churners >= cfg.min_churners and r.recall is not None]
        few = [r.segment for r in rates if r.in_gap and r not in eligible]
        if few:
            notes.append(f"segments with fewer than {cfg.min_churners} churners are left out of the recall gap: {few}")
        recall_gap = _gap([r.recall for r in eligible if r.recall is not None])
    if pr_gap is None:
        notes.append("fewer than two segments are large enough for a positive-rate gap")
    gaps = {"positive_rate_gap": pr_gap, "recall_gap": recall_gap}
    breached = tuple(k for k in cfg.gate_metrics if (g := gaps[k]) is not None and g > cfg.max_gap)
    population = "predictions" if y is None else "labelled"
    return FairnessResult(version, population, SOURCE_MEASURED, tuple(rates), pr_gap, recall_gap, cfg.max_gap, breached, tuple(notes))


def fairness_report(
    predictions: pd.DataFrame,
    thresholds: float | Mapping[str, float],
    config: FairnessConfig | None = None,
    columns: Columns | None = None,
) -> list[FairnessResult]:
    """Per model version: the gaps on every prediction, and, where outcomes arrived (``label`` column), on the labelled ones."""
    c = columns or Columns()
    missing = [col for col in (c.score, c.version, c.segment) if col not in predictions.columns]
    if missing:
        raise InvalidInputError(f"required columns are missing: {missing}", field="predictions")
    out: list[FairnessResult] = []
    versions = predictions[c.version].astype(str)
    for version in sorted(versions.unique()):
        rows = predictions[versions == version]
        t = threshold_of(thresholds, version)
        out.append(segment_fairness(rows[c.score].to_numpy(), rows[c.segment].to_numpy(), t, config, version=version))
        if LABEL in rows.columns:
            done = rows[rows[LABEL].notna()]
            if len(done):
                out.append(
                    segment_fairness(done[c.score].to_numpy(), done[c.segment].to_numpy(), t, config, done[LABEL].to_numpy(), version)
                )
    return out
