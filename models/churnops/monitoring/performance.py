"""Model performance from delayed labels, and estimated from the scores before labels arrive.

Churn outcomes are known 30 days after a prediction, so performance comes in
two kinds, and every figure says which it is:
- *measured*: predictions joined with the outcomes that have arrived;
- *estimated*: confidence-based performance estimation (CBPE, as NannyML
  defines it) from the calibrated churn probabilities alone. It assumes the
  scores stay calibrated, so it sees covariate shift but not concept drift;
  measured figures are the ground truth once enough labels exist.

The label join. The labels table has one row per (customer, observation
window): ``event_timestamp`` is the window start ``ts`` and ``churned_30d``
says whether the customer churned in ``[ts, ts + horizon)``. A prediction
made at time ``t`` for customer ``c`` takes the outcome of the window of
``c`` that contains ``t`` (``ts <= t < ts + horizon``); when windows overlap,
the latest one (the largest ``ts``), whose horizon covers most of the
prediction's own. A prediction with no such window yet is *pending*: it is
left out of every measured figure, never counted as a negative. A label of a
customer that no prediction mentions is reported (count and ids), as are
labels of known customers that matched no prediction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import average_precision_score, roc_auc_score

from churnops.errors import InvalidInputError
from churnops.monitoring.profile import check_scores
from churnops_contract.metric_names import ALL_SEGMENTS, SOURCE_ESTIMATED, SOURCE_MEASURED

LABEL = "label"  # column added by the join: 1.0 / 0.0, NaN while pending
ECE_BINS = 10
UNKNOWN_IDS_SHOWN = 20


@dataclass(frozen=True)
class Columns:
    """Columns of the prediction log that monitoring reads."""

    time: str = "time"
    customer: str = "customer_id"
    model: str = "model"
    version: str = "model_version"
    score: str = "score"
    band: str = "risk_band"
    segment: str = "segment"


@dataclass(frozen=True)
class LabelColumns:
    customer: str = "customer_id"
    start: str = "event_timestamp"  # start of the observation window
    target: str = "churned_30d"


@dataclass(frozen=True)
class JoinSummary:
    predictions: int
    labelled: int
    pending: int  # no outcome window contains the prediction yet
    anonymous: int  # predictions without a customer id can never be labelled
    labels: int
    unmatched_labels: int  # labels of known customers that no prediction falls into
    unknown_customer_labels: int  # labels of customers that no prediction mentions
    unknown_customers: tuple[int, ...]  # the first of them
    duplicate_labels: int  # identical label rows received more than once (kept once)
    messages: tuple[str, ...]


@dataclass(frozen=True)
class LabelJoin:
    frame: pd.DataFrame  # the predictions with LABEL added
    summary: JoinSummary


def _require(frame: pd.DataFrame, columns: Sequence[str], name: str) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"required columns are missing: {missing}", field=name)


def _utc(values: pd.Series, field: str) -> pd.Series:
    try:
        out = pd.to_datetime(values, utc=True)
    except (TypeError, ValueError) as e:
        raise InvalidInputError(f"not a timestamp ({e})", field=field) from None
    if out.isna().any():
        raise InvalidInputError(f"{int(out.isna().sum())} missing timestamps", field=field)
    return out.dt.as_unit("ns")  # merge_asof needs one resolution on both sides


def _clean_labels(labels: pd.DataFrame, lc: LabelColumns) -> tuple[pd.DataFrame, int]:
    _require(labels, [lc.customer, lc.start, lc.target], "labels")
    frame = labels[[lc.customer, lc.start, lc.target]].copy()
    if frame[lc.customer].isna().any():
        raise InvalidInputError(f"{int(frame[lc.customer].isna().sum())} labels without a customer id", field=f"labels.{lc.customer}")
    target = pd.to_numeric(frame[lc.target], errors="coerce")
    bad = ~target.isin([0, 1])
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        value = labels[lc.target].iloc[row]
        value = value.item() if isinstance(value, np.generic) else value
        raise InvalidInputError(f"outcomes must be 0 or 1, got {value!r}", field=f"labels.{lc.target}[{row}]")
    frame[lc.target] = target.astype(float)
    frame[lc.start] = _utc(frame[lc.start], f"labels.{lc.start}")
    frame[lc.customer] = frame[lc.customer].astype(np.int64)
    before = len(frame)
    frame = frame.drop_duplicates()
    conflicting = frame.duplicated([lc.customer, lc.start], keep=False)
    if conflicting.any():
        first = frame.loc[conflicting].iloc[0]
        raise InvalidInputError(
            f"customer {first[lc.customer]} has conflicting outcomes for the window starting {first[lc.start]}", field="labels"
        )
    return frame, before - len(frame)


def join_labels(
    predictions: pd.DataFrame,
    labels: pd.DataFrame,
    *,
    horizon_days: float = 30,
    columns: Columns | None = None,
    label_columns: LabelColumns | None = None,
) -> LabelJoin:
    """Attach to each prediction the outcome of the window that contains it (see the module docstring)."""
    c, lc = columns or Columns(), label_columns or LabelColumns()
    if horizon_days <= 0:
        raise InvalidInputError(f"must be positive, got {horizon_days}", field="horizon_days")
    _require(predictions, [c.time, c.customer], "predictions")
    preds = predictions.copy()
    preds[c.time] = _utc(preds[c.time], f"predictions.{c.time}")
    labs, duplicates = _clean_labels(labels, lc)
    known = preds[c.customer].notna().to_numpy()
    keyed = preds.loc[known, [c.time, c.customer]].copy()
    keyed[c.customer] = keyed[c.customer].astype(np.int64)
    keyed["_row"] = np.flatnonzero(known)
    keyed = keyed.sort_values(c.time, kind="stable")
    window = labs.rename(columns={lc.customer: c.customer, lc.start: "_start", lc.target: "_target"}).sort_values("_start", kind="stable")
    joined = pd.merge_asof(keyed, window, left_on=c.time, right_on="_start", by=c.customer, direction="backward")
    inside = (joined[c.time] - joined["_start"]) < pd.Timedelta(days=horizon_days)  # NaT (no window) compares False
    label = np.full(len(preds), np.nan)
    label[joined.loc[inside, "_row"].to_numpy()] = joined.loc[inside, "_target"].to_numpy()
    preds[LABEL] = label
    used = joined.loc[inside, [c.customer, "_start"]].drop_duplicates()
    customers = set(keyed[c.customer].tolist())
    unknown = labs.loc[~labs[lc.customer].isin(customers), lc.customer]
    unknown_ids = tuple(int(x) for x in unknown.drop_duplicates().head(UNKNOWN_IDS_SHOWN))
    unmatched = len(labs) - len(unknown) - len(used)
    labelled = int(np.isfinite(label).sum())
    summary = JoinSummary(
        predictions=len(preds),
        labelled=labelled,
        pending=int(known.sum()) - labelled,
        anonymous=int((~known).sum()),
        labels=len(labs),
        unmatched_labels=int(unmatched),
        unknown_customer_labels=len(unknown),
        unknown_customers=unknown_ids,
        duplicate_labels=duplicates,
        messages=_join_messages(len(unknown), unknown_ids, unmatched, duplicates, int((~known).sum())),
    )
    return LabelJoin(preds, summary)


def _join_messages(unknown: int, ids: tuple[int, ...], unmatched: int, duplicates: int, anonymous: int) -> tuple[str, ...]:
    out = []
    if unknown:
        shown = ", ".join(str(x) for x in ids)
        out.append(f"{unknown} label(s) for customers no prediction mentions (first: {shown}); check the customer ids of the labels feed")
    if unmatched:
        out.append(f"{unmatched} label(s) of known customers contain no prediction in their window")
    if duplicates:
        out.append(f"{duplicates} duplicate label row(s) were received and counted once")
    if anonymous:
        out.append(f"{anonymous} prediction(s) without a customer id can never be labelled")
    return tuple(out)


# --- metrics on arrays (pure) ----------------------------------------------------------------------


@dataclass(frozen=True)
class Value:
    """A metric value, or None with the reason it cannot be computed."""

    value: float | None
    note: str | None = None


def measured_metrics(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, Value]:
    """AUC, PR-AUC, precision and recall at the threshold, Brier score and ECE on labelled rows."""
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    n, positives = y.size, int(y.sum())
    if n == 0:
        none = Value(None, "no labelled predictions")
        return dict.fromkeys(("auc", "pr_auc", "precision", "recall", "brier", "ece"), none)
    both = Value(None, f"needs both outcomes ({positives} churned, {n - positives} stayed)")
    flagged = p >= threshold
    tp = float((flagged & (y == 1)).sum())
    return {
        "auc": Value(float(roc_auc_score(y, p))) if 0 < positives < n else both,
        "pr_auc": Value(float(average_precision_score(y, p))) if positives else Value(None, "no churned customer among the labelled"),
        "precision": Value(tp / flagged.sum()) if flagged.any() else Value(None, f"no prediction at or above the threshold {threshold}"),
        "recall": Value(tp / positives) if positives else Value(None, "no churned customer among the labelled"),
        "brier": Value(float(np.mean((p - y) ** 2))),
        "ece": Value(expected_calibration_error(y, p)),
    }


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    """Share-weighted mean |observed churn rate - mean score| over equal-width score bins [0, 0.1), ..., [0.9, 1]."""
    index = np.minimum((np.asarray(p) * bins).astype(int), bins - 1)
    count = np.bincount(index, minlength=bins)
    gap = np.abs(np.bincount(index, weights=y, minlength=bins) - np.bincount(index, weights=p, minlength=bins))
    return float(gap.sum() / count.sum())


def expected_confusion(p: np.ndarray, threshold: float) -> dict[str, float]:
    """CBPE's expected confusion matrix: a row with probability p is a churner with probability p."""
    p = np.asarray(p, dtype=float)
    flagged = p >= threshold
    return {
        "tp": float(p[flagged].sum()),
        "fp": float((1 - p[flagged]).sum()),
        "fn": float(p[~flagged].sum()),
        "tn": float((1 - p[~flagged]).sum()),
    }


def estimated_auc(p: np.ndarray) -> float | None:
    """Area under the expected ROC curve (CBPE): expected TPR and FPR at every distinct score, trapezoids.

    Equals sum over pairs p_i (1 - p_j) [s_i > s_j] (+ half for ties, each row
    paired with itself included) / (sum p * sum (1 - p)). NannyML's
    ``estimate_roc_auc`` computes the same curve; it differs only in how the
    curve's end point is added, by O(1/n).
    """
    p = np.asarray(p, dtype=float)
    positives, negatives = p.sum(), (1 - p).sum()
    if positives <= 0 or negatives <= 0:
        return None
    values, inverse = np.unique(-p, return_inverse=True)  # distinct scores, highest first
    pos = np.bincount(inverse, weights=p, minlength=values.size)
    neg = np.bincount(inverse, weights=1 - p, minlength=values.size)
    tpr = np.concatenate(([0.0], np.cumsum(pos))) / positives
    fpr = np.concatenate(([0.0], np.cumsum(neg))) / negatives
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def estimated_average_precision(p: np.ndarray) -> float | None:
    """Expected average precision: sum over distinct scores of the expected recall step times the expected precision."""
    p = np.asarray(p, dtype=float)
    positives = p.sum()
    if positives <= 0:
        return None
    values, inverse = np.unique(-p, return_inverse=True)
    pos = np.bincount(inverse, weights=p, minlength=values.size)
    count = np.bincount(inverse, minlength=values.size)
    precision = np.cumsum(pos) / np.cumsum(count)
    return float(np.sum(pos / positives * precision))


def estimated_metrics(p: np.ndarray, threshold: float) -> dict[str, Value]:
    """CBPE estimates of AUC, PR-AUC, precision, recall and Brier score (ECE is 0 by CBPE's assumption, so it is not estimated)."""
    p = np.asarray(p, dtype=float)
    if p.size == 0:
        none = Value(None, "no predictions")
        return dict.fromkeys(("auc", "pr_auc", "precision", "recall", "brier"), none)
    cm = expected_confusion(p, threshold)
    auc, ap = estimated_auc(p), estimated_average_precision(p)
    degenerate = Value(None, "every score is 0 or 1: no expected churners or no expected stayers")
    return {
        "auc": Value(auc) if auc is not None else degenerate,
        "pr_auc": Value(ap) if ap is not None else degenerate,
        "precision": Value(cm["tp"] / (cm["tp"] + cm["fp"]))
        if cm["tp"] + cm["fp"] > 0
        else Value(None, f"no prediction at or above the threshold {threshold}"),
        "recall": Value(cm["tp"] / (cm["tp"] + cm["fn"])) if cm["tp"] + cm["fn"] > 0 else degenerate,
        "brier": Value(float(np.mean(p * (1 - p)))),
    }


@dataclass(frozen=True)
class CalibrationCheck:
    """Do the arrived outcomes still match the scores? Observed churners against the expected sum of p."""

    labelled: int
    observed: float  # churners among the labelled predictions
    expected: float  # sum of their scores
    ratio: float | None  # observed / expected
    z: float | None  # (observed - expected) / sqrt(sum p (1 - p)), Poisson-binomial variance
    p_value: float | None  # two-sided
    breached: bool
    reason: str


def calibration_check(
    y: np.ndarray, p: np.ndarray, *, alpha: float = 0.001, max_relative_gap: float = 0.25, min_labelled: int = 200
) -> CalibrationCheck:
    """Concept drift shows as outcomes the calibrated scores no longer predict.

    CBPE assumes exactly this calibration, so it cannot see concept drift;
    measured outcomes can. Breached when the gap is significant at ``alpha``
    *and* observed / expected is off by at least ``max_relative_gap`` (large
    cohorts make harmless gaps significant), with ``min_labelled`` labels.
    """
    y, p = np.asarray(y, dtype=float), np.asarray(p, dtype=float)
    n, observed, expected = y.size, float(y.sum()), float(p.sum())
    variance = float((p * (1 - p)).sum())
    if n < min_labelled or expected <= 0 or variance <= 0:
        return CalibrationCheck(n, observed, expected, None, None, None, False, f"{n} labelled predictions, {min_labelled} needed")
    ratio, z = observed / expected, (observed - expected) / float(np.sqrt(variance))
    pvalue = float(2 * stats.norm.sf(abs(z)))
    breached = pvalue < alpha and abs(ratio - 1) >= max_relative_gap
    verdict = "outcomes no longer match the scores" if breached else "within tolerance"
    reason = f"{observed:.0f} churners observed, {expected:.1f} expected (ratio {ratio:.2f}, z {z:.1f}, p {pvalue:.2g}): {verdict}"
    return CalibrationCheck(n, observed, expected, ratio, z, pvalue, breached, reason)


# --- reports per model version, segment and period ---------------------------------------------------


@dataclass(frozen=True)
class Figure:
    version: str
    segment: str  # a segment value, or "all"
    metric: str
    source: str  # measured (delayed labels) or estimated (CBPE)
    value: float | None
    rows: int  # predictions behind the figure: labelled ones when measured, all when estimated
    note: str | None = None  # why the value is None (for calibration_ratio: the check's verdict)
    period: str | None = None  # start of the period (ISO), when grouped by time


@dataclass(frozen=True)
class Coverage:
    version: str
    segment: str
    predictions: int
    labelled: int
    pending: int
    coverage: float  # labelled / predictions
    period: str | None = None


@dataclass(frozen=True)
class PerformanceReport:
    figures: tuple[Figure, ...]
    coverage: tuple[Coverage, ...]
    join: JoinSummary | None = None
    thresholds: dict[str, float] = field(default_factory=dict)

    def get(self, metric: str, source: str, version: str, segment: str = ALL_SEGMENTS, period: str | None = None) -> Figure:
        for f in self.figures:
            if (f.metric, f.source, f.version, f.segment, f.period) == (metric, source, version, segment, period):
                return f
        raise InvalidInputError(f"no {source} {metric} for version {version!r}, segment {segment!r}, period {period!r}", field="metric")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def threshold_of(thresholds: float | Mapping[str, float], version: str) -> float:
    if isinstance(thresholds, Mapping):
        if version not in thresholds:
            raise InvalidInputError(f"no threshold for model version {version!r}; known: {sorted(thresholds)}", field="thresholds")
        t = float(thresholds[version])
    else:
        t = float(thresholds)
    if not 0 < t < 1:
        raise InvalidInputError(f"a threshold must be in (0, 1), got {t}", field="thresholds")
    return t


def groups(frame: pd.DataFrame, c: Columns, by_segment: bool, period: str | None) -> list[tuple[str, str, str | None, pd.DataFrame]]:
    """(version, segment, period, rows) for every model version, x every segment and "all", x every period."""
    _require(frame, [c.version], "predictions")
    if by_segment:
        _require(frame, [c.segment], "predictions")
    keyed = frame.assign(_version=frame[c.version].astype(str))
    if period is not None:
        try:
            keyed["_period"] = pd.to_datetime(keyed[c.time], utc=True).dt.floor(period).map(lambda t: t.isoformat())
        except (TypeError, ValueError) as e:
            raise InvalidInputError(f"not a period pandas understands ({e})", field="period") from None
    out: list[tuple[str, str, str | None, pd.DataFrame]] = []
    period_keys: list[str | None] = [None] if period is None else sorted(keyed["_period"].unique())
    for version in sorted(keyed["_version"].unique()):
        of_version = keyed[keyed["_version"] == version]
        for pk in period_keys:
            rows = of_version if pk is None else of_version[of_version["_period"] == pk]
            if rows.empty:
                continue
            out.append((version, ALL_SEGMENTS, pk, rows))
            if by_segment:
                seg = rows[c.segment].astype("string").fillna("(missing)")
                for s in sorted(seg.unique()):
                    out.append((version, str(s), pk, rows[seg == s]))
    return out


def performance_report(
    predictions: pd.DataFrame,
    labels: pd.DataFrame | None,
    thresholds: float | Mapping[str, float],
    *,
    horizon_days: float = 30,
    by_segment: bool = True,
    period: str | None = None,
    columns: Columns | None = None,
    label_columns: LabelColumns | None = None,
) -> PerformanceReport:
    """Measured (where labels arrived) and estimated performance per model version, segment and period, with label coverage."""
    c = columns or Columns()
    _require(predictions, [c.score, c.version, c.time], "predictions")
    if len(predictions) == 0:
        raise InvalidInputError("no predictions to report on", field="predictions")
    check_scores(predictions[c.score].to_numpy(), f"predictions.{c.score}")
    join = None
    frame = predictions.assign(**{LABEL: np.nan})
    if labels is not None:
        joined = join_labels(predictions, labels, horizon_days=horizon_days, columns=c, label_columns=label_columns)
        frame, join = joined.frame, joined.summary
    figures: list[Figure] = []
    coverage: list[Coverage] = []
    used: dict[str, float] = {}
    for version, segment, pk, rows in groups(frame, c, by_segment, period):
        t = used.setdefault(version, threshold_of(thresholds, version))
        p = rows[c.score].to_numpy(dtype=float)
        y = rows[LABEL].to_numpy(dtype=float)
        has = np.isfinite(y)
        known = rows[c.customer].notna().to_numpy() if c.customer in rows.columns else np.ones(len(rows), bool)
        coverage.append(Coverage(version, segment, len(rows), int(has.sum()), int((known & ~has).sum()), float(has.mean()), pk))
        for metric, v in measured_metrics(y[has], p[has], t).items():
            figures.append(Figure(version, segment, metric, SOURCE_MEASURED, v.value, int(has.sum()), v.note, pk))
        check = calibration_check(y[has], p[has])
        figures.append(Figure(version, segment, "calibration_ratio", SOURCE_MEASURED, check.ratio, check.labelled, check.reason, pk))
        figures.append(Figure(version, segment, "calibration_z", SOURCE_MEASURED, check.z, check.labelled, check.reason, pk))
        for metric, v in estimated_metrics(p, t).items():
            figures.append(Figure(version, segment, metric, SOURCE_ESTIMATED, v.value, len(rows), v.note, pk))
    return PerformanceReport(tuple(figures), tuple(coverage), join, used)
