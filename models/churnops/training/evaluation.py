"""Model evaluation: discrimination, calibration, business value, fairness, comparison.

All functions are pure (arrays in, numbers out) so that the pipeline step,
the model card and the tests share them.

The decision threshold comes with the rule that chose it. When the revenue
column is in other units than the campaign's costs (tens rather than
thousands), no contact is ever profitable and the best "net savings" is to
contact nobody; a threshold that flags no one is useless and misleading, so
the choice falls back to the best F1 within the contact capacity and says so.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn.calibration import calibration_curve
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    f1_score,
    log_loss,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)

from churnops.errors import InvalidInputError
from churnops.monitoring.fairness import FairnessConfig
from churnops.training.calibration import calibration_fit
from churnops.training.config import BusinessConfig


@dataclass
class Evaluation:
    rows: int
    churn_rate: float
    threshold: float
    roc_auc: float
    pr_auc: float
    precision: float
    recall: float
    f1: float
    brier: float
    log_loss: float
    calibration: dict[str, list[float]]
    roc: dict[str, list[float]]
    business: dict[str, Any]
    fairness: dict[str, Any] = field(default_factory=dict)
    threshold_rule: dict[str, Any] = field(default_factory=dict)  # a ThresholdChoice: how the threshold was chosen, and why
    # observed/expected churners, logistic recalibration slope and intercept (churnops.training.calibration)
    calibration_fit: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def headline(self) -> dict[str, float]:
        return {k: float(getattr(self, k)) for k in ("roc_auc", "pr_auc", "precision", "recall", "f1", "brier", "log_loss", "threshold")}


def campaign_value(y: np.ndarray, p: np.ndarray, mrr: np.ndarray, threshold: float, cfg: BusinessConfig) -> dict[str, float]:
    """Expected value of contacting every customer scored at or above ``threshold``."""
    targeted = p >= threshold
    contacted = int(targeted.sum())
    cost = contacted * cfg.contact_cost
    saved = cfg.save_rate * cfg.months_saved * float(mrr[targeted & (y == 1)].sum())
    return {
        "threshold": threshold,
        "contacted": contacted,
        "cost": cost,
        "saved_revenue": saved,
        "net_savings": saved - cost,
        "roi": (saved - cost) / cost if cost else 0.0,
    }


def business_curve(
    y: np.ndarray, p: np.ndarray, mrr: np.ndarray, cfg: BusinessConfig, thresholds: np.ndarray | None = None
) -> list[dict[str, float]]:
    grid = np.round(np.linspace(0.05, 0.95, 19), 2) if thresholds is None else thresholds
    return [campaign_value(y, p, mrr, float(t), cfg) for t in grid]


@dataclass(frozen=True)
class ThresholdChoice:
    """The decision threshold and the rule that chose it, in words for the CLI and the model card."""

    threshold: float
    rule: str  # "net_savings", "f1_within_capacity" (no threshold is profitable, or no revenue column)
    profitable: bool | None  # None without a revenue column
    note: str


THRESHOLD_GRID = np.round(np.linspace(0.01, 0.95, 95), 3)


def choose_threshold(y: np.ndarray, p: np.ndarray, mrr: np.ndarray | None, cfg: BusinessConfig) -> ThresholdChoice:
    """The threshold with the best net savings within the team's contact capacity; when no threshold is
    profitable (or there is no revenue), the best F1 within that capacity. Pick it on training OOF scores,
    never on the holdout."""
    capacity = f"at most {cfg.max_contact_share:.0%} of customers contacted"
    within = np.array([t for t in THRESHOLD_GRID if (p >= t).mean() <= cfg.max_contact_share])
    if within.size == 0:  # even the highest threshold flags more than the capacity
        within = THRESHOLD_GRID[-1:]
        capacity = f"the highest threshold (every threshold flags more than {cfg.max_contact_share:.0%} of customers)"
    best_f1 = float(within[int(np.argmax([f1_score(y, p >= t, zero_division=0) for t in within]))])
    if mrr is None:
        return ThresholdChoice(
            best_f1,
            "f1_within_capacity",
            None,
            f"threshold {best_f1:.2f}: the best F1 with {capacity} (no revenue column, no campaign economics)",
        )
    net = [campaign_value(y, p, mrr, float(t), cfg)["net_savings"] for t in within]
    best = int(np.argmax(net))
    if net[best] > 0:
        t = float(within[best])
        return ThresholdChoice(
            t, "net_savings", True, f"threshold {t:.2f}: the best expected net savings ({net[best]:,.0f} on training rows) with {capacity}"
        )
    note = (
        f"No threshold is profitable: contacting a churner pays off only when its monthly revenue exceeds {cfg.break_even_revenue:,.0f} "
        f"(contact cost {cfg.contact_cost:,.0f}, save rate {cfg.save_rate:g}, {cfg.months_saved:g} months saved), and the median revenue "
        f"here is {float(np.median(mrr)):,.2f}. Threshold {best_f1:.2f} is the best F1 with {capacity} instead. "
        "Give the campaign economics (contact cost, save rate, months saved) in the revenue column's units."
    )
    return ThresholdChoice(best_f1, "f1_within_capacity", False, note)


def fairness(y: np.ndarray, p: np.ndarray, segments: np.ndarray, threshold: float | dict[str, float], max_gap: float) -> dict[str, Any]:
    """Positive rate and recall per segment, their gaps, and whether a gap exceeds ``max_gap``.

    ``threshold`` is one threshold for every row, or one per segment (equal opportunity at per-segment
    thresholds); a segment without its own threshold has none and is an error. Small segments are listed but
    left out of the gaps, by the sizes monitoring's fairness uses (``FairnessConfig``): a recall from 2 churners
    is noise, and training and monitoring must judge the same segments. A gap with fewer than two segments
    large enough is None (not measured), and the notes say why.
    """
    sizes = FairnessConfig()
    per: dict[str, dict[str, Any]] = {}
    names = segments.astype(str)
    if isinstance(threshold, dict):
        unknown = sorted(set(names) - set(threshold))
        if unknown:
            raise InvalidInputError(f"no threshold for segments {unknown[:5]}", field="segment_thresholds")
        pred = p >= np.array([threshold[s] for s in names], dtype=float)
    else:
        pred = p >= threshold
    for seg in sorted(set(names)):
        m = names == seg
        positives = int(y[m].sum())
        per[str(seg)] = {
            "rows": int(m.sum()),
            "churners": positives,
            "churn_rate": float(y[m].mean()),
            "positive_rate": float(pred[m].mean()),
            "recall": float(pred[m & (y == 1)].sum() / positives) if positives else float("nan"),
            "in_positive_rate_gap": int(m.sum()) >= sizes.min_rows,
            "in_recall_gap": int(m.sum()) >= sizes.min_rows and positives >= sizes.min_churners,
        }
    rates = [v["positive_rate"] for v in per.values() if v["in_positive_rate_gap"]]
    recalls = [v["recall"] for v in per.values() if v["in_recall_gap"]]
    gaps = {
        "positive_rate_gap": float(max(rates) - min(rates)) if len(rates) >= 2 else None,
        "recall_gap": float(max(recalls) - min(recalls)) if len(recalls) >= 2 else None,
    }
    notes = _fairness_notes(per, sizes)
    flagged = [k for k, v in gaps.items() if v is not None and v > max_gap]
    return {
        "segments": per,
        **gaps,
        "max_gap": max_gap,
        "flagged": flagged,
        "notes": notes,
        "min_rows": sizes.min_rows,
        "min_churners": sizes.min_churners,
    }


def _fairness_notes(per: dict[str, dict[str, Any]], sizes: FairnessConfig) -> list[str]:
    notes = []
    if len(per) == 1:
        notes.append(f"one value only ({next(iter(per))!r}): there is nothing to compare, no gap is measured")
    small = [s for s, v in per.items() if not v["in_positive_rate_gap"]]
    if small:
        notes.append(f"segments with fewer than {sizes.min_rows} rows are listed but left out of the gaps: {small[:10]}")
    few = [s for s, v in per.items() if v["in_positive_rate_gap"] and not v["in_recall_gap"]]
    if few:
        notes.append(f"segments with fewer than {sizes.min_churners} churners are left out of the recall gap: {few[:10]}")
    if len(per) > 1 and sum(v["in_recall_gap"] for v in per.values()) < 2:
        notes.append(
            f"fewer than two segments have {sizes.min_rows} rows and {sizes.min_churners} churners: the recall gap is not measured"
        )
    return notes


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float | ThresholdChoice,
    mrr: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    business: BusinessConfig | None = None,
    max_fairness_gap: float = 0.25,
) -> Evaluation:
    if len(np.unique(y)) < 2:
        raise InvalidInputError("evaluation needs both classes in the labels")
    cfg = business or BusinessConfig()
    rule = asdict(threshold) if isinstance(threshold, ThresholdChoice) else {}
    threshold = threshold.threshold if isinstance(threshold, ThresholdChoice) else threshold
    pred = p >= threshold
    frac_pos, mean_pred = calibration_curve(y, p, n_bins=10, strategy="quantile")
    fpr, tpr, _ = roc_curve(y, p)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 200)).astype(int))
    biz: dict[str, Any] = {}
    if mrr is not None:
        biz = {
            "revenue_at_risk_monthly": float((p * mrr).sum()),
            "actual_churned_mrr": float(mrr[y == 1].sum()),
            "at_threshold": campaign_value(y, p, mrr, threshold, cfg),
            "curve": business_curve(y, p, mrr, cfg),
            "config": asdict(cfg),
        }
    return Evaluation(
        rows=len(y),
        churn_rate=float(y.mean()),
        threshold=threshold,
        roc_auc=float(roc_auc_score(y, p)),
        pr_auc=float(average_precision_score(y, p)),
        precision=float(precision_score(y, pred, zero_division=0)),
        recall=float(recall_score(y, pred, zero_division=0)),
        f1=float(f1_score(y, pred, zero_division=0)),
        brier=float(brier_score_loss(y, p)),
        log_loss=float(log_loss(y, np.clip(p, 1e-6, 1 - 1e-6))),
        calibration={"mean_predicted": mean_pred.tolist(), "fraction_positive": frac_pos.tolist()},
        roc={"fpr": fpr[keep].tolist(), "tpr": tpr[keep].tolist()},
        business=biz,
        fairness={} if segments is None else fairness(y, p, segments, threshold, max_fairness_gap),
        threshold_rule=rule,
        calibration_fit=calibration_fit(y, p),
    )


@dataclass(frozen=True)
class Comparison:
    """Paired bootstrap of AUC(challenger) - AUC(champion) on the same rows."""

    champion_version: str
    delta_auc: float
    ci_low: float
    ci_high: float
    p_worse: float  # share of bootstrap samples where the challenger is worse
    resamples: int


def bootstrap_auc_delta(
    y: np.ndarray, p_new: np.ndarray, p_old: np.ndarray, champion_version: str, resamples: int = 1000, seed: int = 0
) -> Comparison:
    rng = np.random.default_rng(seed)
    n = len(y)
    deltas = []
    for _ in range(resamples):
        idx = rng.integers(0, n, n)
        if y[idx].min() == y[idx].max():
            continue
        deltas.append(roc_auc_score(y[idx], p_new[idx]) - roc_auc_score(y[idx], p_old[idx]))
    d = np.asarray(deltas)
    return Comparison(
        champion_version=champion_version,
        delta_auc=float(roc_auc_score(y, p_new) - roc_auc_score(y, p_old)),
        ci_low=float(np.percentile(d, 2.5)),
        ci_high=float(np.percentile(d, 97.5)),
        p_worse=float((d < 0).mean()),
        resamples=len(d),
    )
