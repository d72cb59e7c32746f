"""A SHAP summary of a model version: how much each feature moves the churn score, and in which direction.

Two sources, best first:
- the explain path on a sample of the version's logged predictions: the
  predictor's own exact attributions (TreeSHAP or linear, in the ensemble's
  log-odds; ``churnops.serving.explain``) on the feature values the model
  actually saw, every feature of every row;
- the batch scores' top reasons (``reports/scores.parquet``): only each
  customer's strongest few contributions are kept there, so a feature outside
  a customer's top-k counts as 0 and the means are lower bounds; the summary
  says so.

Direction: for a numeric feature, the rank correlation between its value and
its contribution (positive: higher values raise the risk); weak correlation
(|rho| < 0.1) reads as mixed. A categorical feature has no order: the
summary names the category that raises the risk most.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from churnops.serving.explain import CompiledModel
from churnops.training.ensemble import ChurnEnsemble

MIXED_BELOW = 0.1  # |Spearman rho| under this: no clear direction
MIN_NUMERIC_SHARE = 0.7  # reason values that parse as numbers for a feature to count as numeric


@dataclass(frozen=True)
class FeatureAttribution:
    feature: str
    kind: str  # numeric | categorical
    mean_abs: float  # mean |contribution| over the rows (0 where a reason list left the feature out)
    mean: float  # mean signed contribution
    correlation: float | None  # Spearman rho of value and contribution (numeric features)
    direction: str
    rows_with_feature: int  # rows where it was attributed (all rows on the explain path; top-k appearances from reasons)

    @property
    def raises(self) -> bool | None:
        """True when higher values raise the risk, False when they lower it, None when there is no clear order."""
        if self.correlation is None or abs(self.correlation) < MIXED_BELOW:
            return None
        return self.correlation > 0


@dataclass(frozen=True)
class Attributions:
    version: str
    source: str  # "explain" (every contribution of a sample) or "batch_reasons" (top-k reasons only)
    rows: int
    features: tuple[FeatureAttribution, ...]  # strongest first
    note: str
    base_value: float | None = None
    points: dict[str, tuple[np.ndarray, np.ndarray | None]] = field(default_factory=dict)  # per feature: contributions, scaled values

    def to_doc(self, top: int | None = None) -> dict[str, object]:
        shown = self.features if top is None else self.features[:top]
        return {
            "version": self.version,
            "source": self.source,
            "rows": self.rows,
            "base_value": self.base_value,
            "note": self.note,
            "features": [
                {
                    "feature": f.feature,
                    "kind": f.kind,
                    "mean_abs_contribution": f.mean_abs,
                    "mean_contribution": f.mean,
                    "correlation": f.correlation,
                    "direction": f.direction,
                    "rows_with_feature": f.rows_with_feature,
                }
                for f in shown
            ],
        }


def _spearman(values: np.ndarray, contrib: np.ndarray) -> float | None:
    keep = np.isfinite(values) & np.isfinite(contrib)
    if keep.sum() < 3 or np.ptp(values[keep]) == 0 or np.ptp(contrib[keep]) == 0:
        return None
    rho = pd.Series(values[keep]).rank().corr(pd.Series(contrib[keep]).rank())
    return float(rho) if np.isfinite(rho) else None


def _scaled(values: np.ndarray) -> np.ndarray:
    """Values as ranks in [0, 1] (colour of the beeswarm); missing values sit in the middle."""
    ranks = pd.Series(values).rank(pct=True).to_numpy(dtype=float)
    return np.where(np.isfinite(ranks), ranks, 0.5)


def _direction(rho: float | None) -> str:
    if rho is None or abs(rho) < MIXED_BELOW:
        return "mixed: no clear order between value and effect"
    return "higher values raise the risk" if rho > 0 else "higher values lower the risk"


def _categorical_direction(values: pd.Series, contrib: np.ndarray) -> str:
    frame = pd.DataFrame({"value": values.astype("string").fillna("(missing)").to_numpy(), "c": contrib})
    means = frame.groupby("value")["c"].mean().sort_values()
    if means.empty:
        return "no values"
    return f"highest for {means.index[-1]} ({means.iloc[-1]:+.3f}), lowest for {means.index[0]} ({means.iloc[0]:+.3f})"


def summarise(features: list[str], categorical: set[str], values: pd.DataFrame, contributions: np.ndarray) -> list[FeatureAttribution]:
    """Per feature from a full contribution matrix (rows x features, in ``features`` order)."""
    out = []
    n = contributions.shape[0]
    for j, name in enumerate(features):
        c = contributions[:, j]
        if name in categorical:
            out.append(
                FeatureAttribution(
                    name, "categorical", float(np.abs(c).mean()), float(c.mean()), None, _categorical_direction(values[name], c), n
                )
            )
        else:
            v = pd.to_numeric(values[name], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            rho = _spearman(v, c)
            out.append(FeatureAttribution(name, "numeric", float(np.abs(c).mean()), float(c.mean()), rho, _direction(rho), n))
    return sorted(out, key=lambda f: -f.mean_abs)


def model_frame(frame: pd.DataFrame, model: ChurnEnsemble) -> pd.DataFrame:
    """The logged feature columns as the model's pipelines read them: numbers as float, categories as text or NaN."""
    out = {}
    categorical = set(model.categorical)
    for name in model.feature_names:
        col = frame[name]
        if name in categorical:
            out[name] = col.astype(object).where(col.notna(), np.nan)
        else:
            out[name] = pd.to_numeric(col, errors="coerce").astype(float)
    return pd.DataFrame(out)


def from_explain(model: ChurnEnsemble, frame: pd.DataFrame, version: str, sample: int, seed: int = 0, top: int = 15) -> Attributions:
    """Exact attributions of up to ``sample`` logged predictions (raises ``ExplanationUnavailableError`` for a blend)."""
    rows = frame.sample(n=min(sample, len(frame)), random_state=seed) if len(frame) > sample else frame
    values = model_frame(rows.reset_index(drop=True), model)
    compiled = CompiledModel(model, threads=1)
    scored = compiled.explain(values)
    assert scored.contributions is not None
    features = compiled.features
    summary = summarise(features, set(model.categorical), values, scored.contributions)
    points = {}
    for f in summary[:top]:
        j = features.index(f.feature)
        scaled = None if f.kind == "categorical" else _scaled(pd.to_numeric(values[f.feature], errors="coerce").to_numpy(dtype=float))
        points[f.feature] = (scored.contributions[:, j], scaled)
    note = (
        f"exact contributions of {len(values):,} of the latest {len(frame):,} logged predictions of v{version}, every feature of every row"
    )
    return Attributions(version, "explain", len(values), tuple(summary), note, scored.base_value, points)


def reasons_long(scores: pd.DataFrame) -> pd.DataFrame:
    """The batch output's ``reason_<i>_feature/value/contribution`` columns as one row per (customer row, reason)."""
    parts = []
    i = 1
    while f"reason_{i}_feature" in scores.columns:
        part = pd.DataFrame(
            {
                "row": np.arange(len(scores)),
                "feature": scores[f"reason_{i}_feature"].to_numpy(),
                "value": scores[f"reason_{i}_value"].to_numpy() if f"reason_{i}_value" in scores.columns else None,
                "contribution": pd.to_numeric(scores[f"reason_{i}_contribution"], errors="coerce").to_numpy(dtype=float),
            }
        )
        parts.append(part[part["feature"].notna() & np.isfinite(part["contribution"])])
        i += 1
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=["row", "feature", "value", "contribution"])


def from_reasons(scores: pd.DataFrame, version: str, top: int = 15) -> Attributions | None:
    """The summary from the batch scores' top reasons; None when the file carries no reasons."""
    long = reasons_long(scores)
    if long.empty:
        return None
    n, k = len(scores), sum(1 for c in scores.columns if c.startswith("reason_") and c.endswith("_feature"))
    out = []
    points = {}
    for name, g in long.groupby("feature"):
        c = g["contribution"].to_numpy(dtype=float)
        numbers = pd.to_numeric(g["value"], errors="coerce").to_numpy(dtype=float)
        numeric = np.isfinite(numbers).mean() >= MIN_NUMERIC_SHARE
        rho = _spearman(numbers, c) if numeric else None
        direction = _direction(rho) if numeric else _categorical_direction(g["value"], c)
        out.append(
            FeatureAttribution(
                str(name), "numeric" if numeric else "categorical", float(np.abs(c).sum() / n), float(c.sum() / n), rho, direction, len(g)
            )
        )
        points[str(name)] = (c, _scaled(numbers) if numeric else None)
    summary = sorted(out, key=lambda f: -f.mean_abs)
    note = (
        f"top-{k} reasons of {n:,} batch-scored customers of v{version}: a feature outside a customer's top {k} counts as 0, "
        "so the means are lower bounds and the plot shows only the rows where the feature was a reason"
    )
    return Attributions(version, "batch_reasons", n, tuple(summary), note, None, {f.feature: points[f.feature] for f in summary[:top]})
