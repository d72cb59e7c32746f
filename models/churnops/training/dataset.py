"""What a training table looks like, and how it is split without leakage.

``DatasetSpec`` names the key, time, target and feature columns of a table
(generated data via Feast, or a user's own file). The verdict on a model
comes from a time-based holdout: the latest rows, with a gap of one label
horizon before them so that no training label looks into the holdout period.
Hyper-parameter search uses stratified k-fold grouped by customer, so the
same customer never sits on both sides of a fold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import StratifiedGroupKFold

from churnops.data.ingest import TableSchema
from churnops.data.schema import ENTITY, TARGET, TIMESTAMP
from churnops.errors import InvalidInputError
from churnops.features.catalog import FEATURES
from churnops_contract.policy import TrainingWindow


@dataclass(frozen=True)
class DatasetSpec:
    id_column: str
    time_column: str
    target_column: str
    numeric: tuple[str, ...]
    categorical: tuple[str, ...]
    segment_column: str | None = None  # fairness is reported across its values
    revenue_column: str | None = None  # monthly revenue per row, for business metrics
    horizon_days: int = 30  # label horizon: the gap kept between training and holdout

    @property
    def features(self) -> tuple[str, ...]:
        return self.numeric + self.categorical

    def with_features(self, selected: list[str]) -> DatasetSpec:
        keep = set(selected)
        return DatasetSpec(
            self.id_column,
            self.time_column,
            self.target_column,
            tuple(c for c in self.numeric if c in keep),
            tuple(c for c in self.categorical if c in keep),
            self.segment_column,
            self.revenue_column,
            self.horizon_days,
        )


def churn_spec() -> DatasetSpec:
    """The spec of the platform's own data (FeatureService churn_v1 joined with labels)."""
    return DatasetSpec(
        id_column=ENTITY,
        time_column=TIMESTAMP,
        target_column=TARGET,
        numeric=tuple(f.name for f in FEATURES if f.dtype != "string"),
        categorical=tuple(f.name for f in FEATURES if f.dtype == "string"),
        segment_column="segment",
        revenue_column="mrr",
    )


def spec_from_schema(schema: TableSchema, segment_column: str | None, revenue_column: str | None, horizon_days: int) -> DatasetSpec:
    for name, col in (("segment", segment_column), ("revenue", revenue_column)):
        if col is not None and col not in schema.features:
            raise InvalidInputError(f"{name} column {col!r} is not a feature column of the table")
    return DatasetSpec(
        schema.id_column,
        schema.time_column,
        schema.target_column,
        schema.numeric,
        schema.categorical,
        segment_column,
        revenue_column,
        horizon_days,
    )


@dataclass(frozen=True)
class Split:
    train: pd.DataFrame
    holdout: pd.DataFrame
    cutoff: pd.Timestamp
    dropped_for_gap: int


def time_holdout(frame: pd.DataFrame, spec: DatasetSpec, holdout_fraction: float = 0.25) -> Split:
    """Hold out the latest ``holdout_fraction`` of rows (whole timestamps), keeping a label-horizon gap."""
    if not 0 < holdout_fraction < 1:
        raise InvalidInputError(f"holdout_fraction must be in (0, 1), got {holdout_fraction}")
    times = frame[spec.time_column]
    counts = times.value_counts().sort_index(ascending=False)
    cumulative = counts.cumsum() / len(frame)
    # the smallest set of latest timestamps holding at least the requested share
    cutoff = pd.Timestamp(cumulative.index[int(np.searchsorted(cumulative.to_numpy(), holdout_fraction))])
    holdout = frame[times >= cutoff]
    gap_start = cutoff - pd.Timedelta(days=spec.horizon_days)
    train = frame[times <= gap_start]
    dropped = int(((times > gap_start) & (times < cutoff)).sum())
    if train.empty or holdout.empty:
        raise InvalidInputError(f"time split at {cutoff} leaves an empty side: {len(train)} training and {len(holdout)} holdout rows")
    for name, part in (("training", train), ("holdout", holdout)):
        if part[spec.target_column].nunique() < 2:
            raise InvalidInputError(f"the {name} rows have a single class; need churned and retained customers on both sides")
    return Split(train.reset_index(drop=True), holdout.reset_index(drop=True), cutoff, dropped)


def cv_folds(frame: pd.DataFrame, spec: DatasetSpec, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds that keep all rows of a customer together."""
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    y = frame[spec.target_column].to_numpy()
    groups = frame[spec.id_column].to_numpy()
    return [(tr, va) for tr, va in splitter.split(np.zeros(len(frame)), y, groups)]


def feature_matrix(frame: pd.DataFrame, features: list[str], categorical: list[str]) -> pd.DataFrame:
    """The model's input: features in a fixed order, categoricals as Python strings, missing as NaN."""
    missing = [c for c in features if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"input lacks feature column(s) {missing[:10]}")
    x = frame[features].copy()
    for c in categorical:
        x[c] = x[c].astype("object").where(x[c].notna(), np.nan)
    return x


def xy(frame: pd.DataFrame, spec: DatasetSpec) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature matrix and the 0/1 target."""
    return feature_matrix(frame, list(spec.features), list(spec.categorical)), frame[spec.target_column].to_numpy(dtype=np.int64)


@dataclass(frozen=True)
class WindowedTraining:
    """The training rows a window keeps, their weights, and the most recent rows the calibrator is fitted on."""

    train: pd.DataFrame  # rows the members are fitted on (time-ordered as given)
    weights: np.ndarray | None  # recency weights of those rows (mean 1); None: equal weights
    calibration: np.ndarray | None  # boolean mask over ``train``: the most recent rows; None: every row calibrates
    dropped_old: int  # rows older than the window
    window: TrainingWindow

    def describe(self, spec: DatasetSpec) -> dict[str, Any]:
        """What the model card and the summary record: rows, date range, half-life, calibration rows, and why."""
        times = self.train[spec.time_column]
        calibrated = self.train if self.calibration is None else self.train[self.calibration]
        ctimes = calibrated[spec.time_column]
        w = self.window
        return {
            "rows": len(self.train),
            "from": str(times.min()),
            "until": str(times.max()),
            "rows_dropped_as_older": self.dropped_old,
            "window_days": w.window_days,
            "recency_half_life_days": w.recency_half_life_days,
            "oldest_row_weight": None if self.weights is None else round(float(self.weights.min() / self.weights.max()), 4),
            "calibration_rows": len(calibrated),
            "calibration_from": str(ctimes.min()),
            "calibration_until": str(ctimes.max()),
            "calibration_days": w.calibration_days,
            "reason": w.reason or ("every training row, equal weights" if not w.active else "set by the caller"),
        }


def _age_days(times: pd.Series) -> np.ndarray:
    """Days each row is older than the latest row."""
    return np.asarray((times.max() - times).dt.total_seconds().to_numpy() / 86_400.0, dtype=float)


def recency_weights(times: pd.Series, half_life_days: float) -> np.ndarray:
    """Weight halving every ``half_life_days`` a row is older than the latest one, scaled to mean 1 (so regularisation keeps its strength)."""
    w = 0.5 ** (_age_days(times) / half_life_days)
    return np.asarray(w / w.mean(), dtype=float)


def training_window(train: pd.DataFrame, spec: DatasetSpec, window: TrainingWindow) -> WindowedTraining:
    """Apply ``window`` to the training side of a time split (the holdout and its label gap are already set apart).

    Ages count from the latest training row, so the same window keeps the same span whatever the holdout is.
    The calibration rows are the latest ``calibration_days`` of the kept rows; the calibrator is fitted on their
    out-of-fold scores, so no score it sees comes from a model fitted on that row.
    """
    if not window.active:
        return WindowedTraining(train, None, None, 0, window)
    kept = train
    if window.window_days is not None:
        kept = train[_age_days(train[spec.time_column]) < window.window_days].reset_index(drop=True)
        _check_classes(kept, spec, "window_days", f"the training rows of the last {window.window_days:g} days")
    half_life = window.recency_half_life_days
    weights = None if half_life is None else recency_weights(kept[spec.time_column], half_life)
    calibration = None
    if window.calibration_days is not None:
        calibration = _age_days(kept[spec.time_column]) < window.calibration_days
        _check_classes(kept[calibration], spec, "calibration_days", f"the calibration rows of the last {window.calibration_days:g} days")
    return WindowedTraining(kept, weights, calibration, len(train) - len(kept), window)


def _check_classes(rows: pd.DataFrame, spec: DatasetSpec, field: str, what: str) -> None:
    if rows[spec.target_column].nunique() < 2:
        raise InvalidInputError(f"{what} hold {len(rows)} rows and a single class; widen the window", field=field)
