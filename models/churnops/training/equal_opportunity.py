"""Equal opportunity at per-segment thresholds, evaluated and reported.

At one threshold, segments whose churn base rates differ many-fold (month-to-month
against two-year contracts) get very different recall: the calibrated scores of a
low-churn segment rarely reach a threshold set for the whole base. A threshold per
segment, each the highest that still finds the overall share of that segment's
churners, equalises recall (equal opportunity, Hardt, Price and Srebro 2016).

The thresholds are chosen on the training rows' out-of-fold scores, never on the
holdout, and within the campaign's business rule: when they would flag more than
the team's contact capacity, the recall they aim for is lowered until they fit.

Serving applies one threshold per model version, so these thresholds are not
served: the card reports what they would give on the holdout, and the fairness
gate judges the threshold that is served.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from churnops.training.evaluation import fairness

RECALL_STEP = 0.01  # how far the aimed-at recall drops per try when the capacity binds
NOT_SERVED = "evaluated and reported only: serving applies the one model threshold, which the fairness gate judges"


@dataclass(frozen=True)
class SegmentThresholds:
    target_recall: float  # the recall every segment's threshold aims for (training rows)
    thresholds: dict[str, float]
    contact_share: float  # share of training rows the thresholds flag
    note: str


def _recall(y: np.ndarray, flagged: np.ndarray) -> float:
    churners = int(y.sum())
    return float((flagged & (y == 1)).sum() / churners) if churners else float("nan")


def _highest_reaching(y: np.ndarray, p: np.ndarray, target: float, fallback: float) -> float:
    """The highest threshold whose recall on these rows reaches ``target`` (fewest contacts): the score of
    the churner that completes the target share, so that a low-base-rate segment is not held to a coarse grid."""
    churners = np.sort(p[y == 1])[::-1]
    if churners.size == 0:
        return fallback  # no churners: nothing to equalise, keep the model threshold
    needed = max(1, math.ceil(round(target * churners.size, 9)))
    return float(churners[min(needed, churners.size) - 1])


def choose_segment_thresholds(
    y: np.ndarray, p: np.ndarray, segments: np.ndarray, threshold: float, max_contact_share: float
) -> SegmentThresholds:
    """Per-segment thresholds that give every segment the recall the model threshold gives overall."""
    names = segments.astype(str)
    overall = _recall(y, p >= threshold)
    target = overall
    while True:
        chosen = {str(s): _highest_reaching(y[names == s], p[names == s], target, threshold) for s in sorted(set(names))}
        flagged = p >= np.array([chosen[s] for s in names], dtype=float)
        share = float(flagged.mean())
        if share <= max_contact_share or target <= RECALL_STEP:
            break
        target = round(target - RECALL_STEP, 4)
    capacity = (
        f"within the contact capacity ({share:.0%} of training rows flagged, at most {max_contact_share:.0%})"
        if share <= max_contact_share
        else f"over the contact capacity even at the lowest recall ({share:.0%} flagged, at most {max_contact_share:.0%})"
    )
    lowered = f", lowered from {overall:.2f} to fit the capacity" if target < overall else ""
    note = (
        f"each segment's threshold aims at recall {target:.2f} (the model threshold's overall recall on training rows{lowered}), {capacity}"
    )
    return SegmentThresholds(target, chosen, share, note)


def holdout_report(choice: SegmentThresholds, y: np.ndarray, p: np.ndarray, segments: np.ndarray, max_gap: float) -> dict[str, Any]:
    """What the per-segment thresholds give on the holdout: per-segment rates and gaps, and the share contacted."""
    names = segments.astype(str)
    # a segment first seen in the holdout keeps the lowest-recall choice: the most conservative threshold chosen
    unseen = max(choice.thresholds.values())
    thresholds = {str(s): choice.thresholds.get(str(s), unseen) for s in sorted(set(names))}
    at = fairness(y, p, names, thresholds, max_gap)
    flagged = p >= np.array([thresholds[s] for s in names], dtype=float)
    return {**asdict(choice), "thresholds": thresholds, "holdout": at, "holdout_contact_share": float(flagged.mean()), "served": NOT_SERVED}
