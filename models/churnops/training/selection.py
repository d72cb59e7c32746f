"""Feature selection by two methods: model importance and mutual information, plus a correlation filter.

Both rankings are computed on the training rows only. A feature is kept when
its mean rank is among the best ``max_features``; of a pair of numeric
features correlated above ``max_correlation`` the lower-ranked one is dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.feature_selection import mutual_info_classif

from churnops.errors import CheckFailedError
from churnops.training.config import MAX_THREADS
from churnops.training.dataset import DatasetSpec


@dataclass(frozen=True)
class Selection:
    selected: list[str]
    importance: dict[str, float]
    mutual_information: dict[str, float]
    dropped_correlated: dict[str, str]  # dropped -> the kept feature it duplicates

    def to_dict(self) -> dict[str, object]:
        return {
            "selected": self.selected,
            "importance": self.importance,
            "mutual_information": self.mutual_information,
            "dropped_correlated": self.dropped_correlated,
        }


def _encoded(x: pd.DataFrame, spec: DatasetSpec) -> pd.DataFrame:
    out = x[list(spec.features)].copy()
    for c in spec.categorical:
        out[c] = out[c].astype("category").cat.codes.astype(float)
    return out.astype(float)


def importance_scores(x: pd.DataFrame, y: np.ndarray, spec: DatasetSpec, seed: int, threads: int = MAX_THREADS) -> dict[str, float]:
    model = LGBMClassifier(
        n_estimators=200,
        learning_rate=0.05,
        num_leaves=31,
        colsample_bytree=0.5,
        importance_type="gain",
        random_state=seed,
        n_jobs=threads,
        verbose=-1,
        deterministic=True,
        force_row_wise=True,
    )
    enc = _encoded(x, spec)
    model.fit(enc, y, categorical_feature=list(spec.categorical) or "auto")
    total = float(model.feature_importances_.sum()) or 1.0
    return {c: float(v) / total for c, v in zip(enc.columns, model.feature_importances_, strict=True)}


def mutual_information_scores(x: pd.DataFrame, y: np.ndarray, spec: DatasetSpec, seed: int, max_rows: int = 20_000) -> dict[str, float]:
    enc = _encoded(x, spec)
    if len(enc) > max_rows:  # MI is O(n log n) per feature; a sample ranks as well
        rows = np.random.default_rng(seed).choice(len(enc), max_rows, replace=False)
        enc, y = enc.iloc[rows], y[rows]
    filled = enc.fillna(enc.median())
    discrete = [c in spec.categorical for c in filled.columns]
    mi = mutual_info_classif(filled.to_numpy(), y, discrete_features=discrete, random_state=seed)
    return {c: float(v) for c, v in zip(filled.columns, mi, strict=True)}


def select(
    x: pd.DataFrame,
    y: np.ndarray,
    spec: DatasetSpec,
    seed: int,
    max_features: int = 60,
    max_correlation: float = 0.95,
    threads: int = MAX_THREADS,
) -> Selection:
    x = x.reset_index(drop=True)
    imp = importance_scores(x, y, spec, seed, threads)
    mi = mutual_information_scores(x, y, spec, seed)
    ranks = (pd.Series(imp).rank(ascending=False) + pd.Series(mi).rank(ascending=False)) / 2
    order = list(ranks.sort_values(kind="stable").index)
    corr = x[list(spec.numeric)].corr().abs()
    kept: list[str] = []
    dropped: dict[str, str] = {}
    for name in order:
        if len(kept) >= max_features:
            break
        if imp[name] == 0 and mi[name] == 0:
            continue  # no signal by either method
        twin = next((k for k in kept if name in corr.index and k in corr.columns and corr.loc[name, k] > max_correlation), None)
        if twin is not None:
            dropped[name] = twin
            continue
        kept.append(name)
    if not kept:
        raise CheckFailedError("feature selection kept no feature: no column carries signal about the target")
    return Selection(kept, imp, mi, dropped)
