"""Model evaluation: discrimination, calibration, business value, fairness, comparison.

All functions are pure (arrays in, numbers out) so that the pipeline step,
the model card and the tests share them.
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


@dataclass(frozen=True)
class BusinessConfig:
    """Economics of a retention campaign."""

    contact_cost: float = 1_000.0  # cost of one retention play (CSM time plus the offer)
    save_rate: float = 0.25  # share of contacted churners that stay
    months_saved: float = 6.0  # revenue months kept when a churner is saved
    max_contact_share: float = 0.25  # customer-success capacity: at most this share of customers per campaign


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


def choose_threshold(y: np.ndarray, p: np.ndarray, mrr: np.ndarray | None, cfg: BusinessConfig) -> float:
    """The threshold with the best net savings within the team's contact capacity (or the best F1
    without revenue). Pick it on training OOF scores, never on the holdout."""
    grid = np.round(np.linspace(0.01, 0.95, 95), 3)
    feasible = np.array([t for t in grid if (p >= t).mean() <= cfg.max_contact_share]) if mrr is not None else grid
    if feasible.size == 0:
        feasible = grid[-1:]
    if mrr is None:
        return float(feasible[int(np.argmax([f1_score(y, p >= t, zero_division=0) for t in feasible]))])
    return float(feasible[int(np.argmax([campaign_value(y, p, mrr, float(t), cfg)["net_savings"] for t in feasible]))])


def fairness(y: np.ndarray, p: np.ndarray, segments: np.ndarray, threshold: float, max_gap: float) -> dict[str, Any]:
    """Positive rate and recall per segment, their gaps, and whether a gap exceeds ``max_gap``."""
    per: dict[str, dict[str, float]] = {}
    pred = p >= threshold
    for seg in sorted({str(s) for s in segments}):
        m = segments.astype(str) == seg
        positives = int(y[m].sum())
        per[seg] = {
            "rows": int(m.sum()),
            "churn_rate": float(y[m].mean()),
            "positive_rate": float(pred[m].mean()),
            "recall": float(pred[m & (y == 1)].sum() / positives) if positives else float("nan"),
        }
    rates = [v["positive_rate"] for v in per.values()]
    recalls = [v["recall"] for v in per.values() if not np.isnan(v["recall"])]
    gaps = {"positive_rate_gap": float(max(rates) - min(rates)), "recall_gap": float(max(recalls) - min(recalls)) if recalls else 0.0}
    return {"segments": per, **gaps, "max_gap": max_gap, "flagged": [k for k, v in gaps.items() if v > max_gap]}


def evaluate(
    y: np.ndarray,
    p: np.ndarray,
    threshold: float,
    mrr: np.ndarray | None = None,
    segments: np.ndarray | None = None,
    business: BusinessConfig | None = None,
    max_fairness_gap: float = 0.25,
) -> Evaluation:
    if len(np.unique(y)) < 2:
        raise ValueError("evaluation needs both classes in the labels")
    cfg = business or BusinessConfig()
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
