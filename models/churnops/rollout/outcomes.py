"""Delayed-label figures for the rollout and the retraining policy, from the prediction log and the labels that arrived.

In a cluster the monitoring jobs export measured AUC and coverage as gauges
for the operator to query; on one machine the runner reads the same sources
itself: the predictor's prediction log (``<data-dir>/predictions``) and the
labels under ``<data-dir>/labels/`` (the layout of ``churnops.monitoring.windows``),
joined by ``churnops.monitoring.performance.join_labels``. A prediction whose
outcome has not arrived is pending, never a negative.

Nothing to read (no labels yet, no predictions in the window) gives None
figures, which the canary analysis reports as "pending" for AUC and the
retraining policy as "not observed"; a source that cannot be read gives
figures marked unreadable, which the analysis treats as unknown (it may hold a
rollout, never promote one).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from churnops.errors import ChurnOpsError
from churnops.monitoring.labels import read_labels_dir
from churnops.monitoring.performance import LABEL, calibration_check, estimated_auc, join_labels, measured_metrics
from churnops.monitoring.predlog.parquet import ParquetStore

log = logging.getLogger(__name__)

LabelReader = Callable[[], pd.DataFrame | None]


@dataclass(frozen=True)
class VersionOutcomes:
    """One version's predictions in a window with the outcomes that arrived; None where a figure cannot be computed."""

    predictions: int
    labelled: int
    auc: float | None  # measured
    positive_rate: float | None  # churners among the labelled
    calibration_ratio: float | None  # observed churners / sum of their scores (None below the check's minimum)
    estimated_auc: float | None  # CBPE over every prediction in the window
    calibration_z: float | None = None  # how far past chance the calibration gap is (None with the ratio)
    readable: bool = True  # False: the prediction log or the labels could not be read (figures unknown, not zero)


NOTHING = VersionOutcomes(0, 0, None, None, None, None)
UNREADABLE = VersionOutcomes(0, 0, None, None, None, None, readable=False)


def labels_reader(data_dir: Path) -> LabelReader:
    """Every labels file under ``<data-dir>/labels/`` as one table (None while there is none)."""
    return lambda: read_labels_dir(data_dir / "labels")


def _utc(t: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(t, dt.UTC)


def figures(frame: pd.DataFrame, labels: pd.DataFrame | None, horizon_days: float) -> VersionOutcomes:
    """The figures of one version's logged predictions (pure, given the two tables)."""
    if len(frame) == 0:
        return NOTHING
    scores = frame["score"].to_numpy(dtype=float)
    estimated = estimated_auc(scores)
    if labels is None or len(labels) == 0:
        return VersionOutcomes(len(frame), 0, None, None, None, estimated)
    joined = join_labels(frame, labels, horizon_days=horizon_days).frame
    known = joined[LABEL].notna().to_numpy()
    y, p = joined.loc[known, LABEL].to_numpy(dtype=float), joined.loc[known, "score"].to_numpy(dtype=float)
    if y.size == 0:
        return VersionOutcomes(len(frame), 0, None, None, None, estimated)
    auc = measured_metrics(y, p, 0.5)["auc"].value
    check = calibration_check(y, p)
    return VersionOutcomes(len(frame), int(y.size), auc, float(np.mean(y)), check.ratio, estimated, check.z)


class OutcomeSource:
    """Reads the prediction log and the labels for the runner; a read failure is logged and gives no figures."""

    def __init__(self, predictions: Path, labels: LabelReader, horizon_days: float = 30.0) -> None:
        self.store = ParquetStore(predictions)
        self.labels = labels
        self.horizon_days = horizon_days

    def versions(self, model: str, versions: Iterable[str], start: float, end: float, estimates: bool = True) -> dict[str, VersionOutcomes]:
        """Figures per version for predictions made in [start, end); without labels and ``estimates`` nothing is read."""
        versions = tuple(versions)
        try:
            labels = self.labels()
            if labels is None and not estimates:
                return dict.fromkeys(versions, NOTHING)
            out = {}
            for version in versions:
                frame = self.store.read_window(_utc(start), _utc(end), model=model, version=version, features=[])
                out[version] = figures(frame, labels, self.horizon_days)
            return out
        except (ChurnOpsError, OSError, ValueError) as e:  # bad labels or an unreadable segment: no figures, said why
            log.warning("delayed-label figures unavailable: %s", e)
            return dict.fromkeys(versions, UNREADABLE)
