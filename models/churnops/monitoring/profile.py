"""The reference profile: what the training data looked like, in the form drift checks need.

Drift is judged against the data a model version was trained on, long after
that data is gone from memory (and, in the cluster, from the machine). The
profile keeps just enough of it: per numeric feature about ten quantile bins
with their reference counts, the observed range (for out-of-range checks),
the missing count and a quantile sketch of the distribution (for the
Kolmogorov-Smirnov test on raw values); per categorical feature the category
counts (an unseen value falls into an extra bucket); the score on fixed bins
that match the predictor's score histogram. It is stored as a versioned JSON
artifact of the training run, so the predictor and the window job load the
same reference for a model version.

Binning convention, used everywhere: bins are right-closed like Prometheus'
``le`` buckets, bin ``i`` holds ``edges[i-1] < x <= edges[i]`` and the outer
bins are open-ended, so any value has a bin.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnops.errors import InvalidInputError, NotFoundError
from churnops_contract.metric_names import SCORE_BUCKETS, SCORE_FEATURE

FORMAT = "churnops.reference_profile"
FORMAT_VERSION = 1
ARTIFACT_PATH = "monitoring/reference_profile.json"
DEFAULT_BINS = 10
KS_SKETCH_POINTS = 500  # CDF error of the sketch is at most 1/500 (features with fewer distinct values are kept exactly)
# The predictor's score histogram buckets (le), without the last one (1.0): the top bin is open-ended.
SCORE_EDGES: tuple[float, ...] = tuple(SCORE_BUCKETS[:-1])


@dataclass(frozen=True)
class NumericProfile:
    """One numeric column of the reference: quantile bins, range, missing count and a CDF sketch."""

    name: str
    edges: tuple[float, ...]  # inner cut points, strictly increasing; len(edges) + 1 bins
    counts: tuple[int, ...]  # reference values per bin
    minimum: float
    maximum: float
    missing: int  # reference rows without a value
    grid: tuple[float, ...]  # distinct reference values (all of them, or a quantile sketch)
    cdf: tuple[float, ...]  # share of reference values <= grid[i]

    kind = "numeric"

    @property
    def values(self) -> int:
        """Reference rows with a value."""
        return sum(self.counts)

    @property
    def n_bins(self) -> int:
        return len(self.counts)

    @property
    def proportions(self) -> np.ndarray:
        return np.asarray(self.counts, dtype=float) / self.values

    @property
    def missing_rate(self) -> float:
        return self.missing / (self.values + self.missing)


@dataclass(frozen=True)
class CategoricalProfile:
    """One categorical column of the reference: category counts; unseen values get a bucket of their own."""

    name: str
    categories: tuple[str, ...]
    counts: tuple[int, ...]  # per category (the unseen bucket is always empty in the reference)
    missing: int

    kind = "categorical"

    @property
    def values(self) -> int:
        return sum(self.counts)

    @property
    def n_bins(self) -> int:
        return len(self.categories) + 1  # the last bin holds unseen categories

    @property
    def proportions(self) -> np.ndarray:
        return np.append(np.asarray(self.counts, dtype=float) / self.values, 0.0)

    @property
    def missing_rate(self) -> float:
        return self.missing / (self.values + self.missing)


FeatureProfile = NumericProfile | CategoricalProfile


@dataclass(frozen=True)
class ReferenceProfile:
    """The reference of one model version: its features in model order, and its score."""

    features: tuple[FeatureProfile, ...]
    score: NumericProfile
    rows: int

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise InvalidInputError(f"features appear more than once: {duplicated}", field="profile.features")
        if not names:
            raise InvalidInputError("a profile needs at least one feature", field="profile.features")

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def feature(self, name: str) -> FeatureProfile:
        for f in self.features:
            if f.name == name:
                return f
        raise NotFoundError(f"feature {name!r} is not in the reference profile", field="feature")

    def to_json(self) -> str:
        return json.dumps(_profile_to_dict(self), separators=(",", ":"))

    @staticmethod
    def from_json(text: str) -> ReferenceProfile:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"not JSON ({e.msg} at line {e.lineno})", field="profile") from None
        return _profile_from_dict(doc)


# --- building -------------------------------------------------------------------------------------


def sorted_quantiles(sorted_values: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """``np.quantile(values, levels, method="inverted_cdf")`` of values already sorted, NaN removed.

    The same index rule as NumPy's (``n q - 1``, rounded up unless whole, at
    least 0), read straight from the sorted array: the profile sorts each
    column once, and NumPy would partition it again for every call.
    """
    at = sorted_values.size * levels - 1
    below = np.floor(at)
    index = np.where(at == below, below, below + 1).astype(np.intp)
    out: np.ndarray = sorted_values[np.maximum(index, 0)]
    return out


def distinct_sorted(sorted_values: np.ndarray) -> np.ndarray:
    """``np.unique`` of values already sorted, without sorting them again."""
    if sorted_values.size == 0:
        return sorted_values
    keep = np.empty(sorted_values.size, dtype=bool)
    keep[0] = True
    np.not_equal(sorted_values[1:], sorted_values[:-1], out=keep[1:])
    out: np.ndarray = sorted_values[keep]
    return out


def quantile_edges(sorted_values: np.ndarray, bins: int) -> tuple[float, ...]:
    """Inner cut points at the reference quantiles of values sorted ascending (NaN removed), deduplicated.

    Quantiles are observed values (``inverted_cdf``), so ties (counts, flags)
    give one edge per distinct value and no empty bins; an edge at the maximum
    is dropped because the bin above it would be empty in the reference.
    """
    qs = distinct_sorted(sorted_quantiles(sorted_values, np.arange(1, bins) / bins))
    return tuple(qs[qs < sorted_values[-1]].tolist())


def cdf_sketch(sorted_values: np.ndarray, points: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Grid points and the exact reference CDF at them: every distinct value, or ``points`` quantiles."""
    distinct = distinct_sorted(sorted_values)
    grid = distinct if distinct.size <= points else distinct_sorted(sorted_quantiles(sorted_values, np.arange(1, points + 1) / points))
    cdf = np.searchsorted(sorted_values, grid, side="right") / sorted_values.size
    return tuple(grid.tolist()), tuple(cdf.tolist())


def bin_counts(sorted_values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Values per right-closed bin, from values sorted ascending (NaN removed)."""
    at_or_below = np.searchsorted(sorted_values, np.asarray(edges, dtype=float), side="right")
    return np.diff(np.concatenate(([0], at_or_below, [sorted_values.size]))).astype(np.int64)


def numeric_profile(name: str, values: np.ndarray, *, bins: int = DEFAULT_BINS, sketch_points: int = KS_SKETCH_POINTS) -> NumericProfile:
    """Profile of one numeric column (NaN is missing; infinities are refused)."""
    x = np.asarray(values, dtype=float)
    if np.isinf(x).any():
        raise InvalidInputError("infinite values cannot be profiled", field=f"frame[{name!r}]")
    present = np.sort(x[~np.isnan(x)])
    if present.size == 0:
        raise InvalidInputError("no values in the reference (every row is missing)", field=f"frame[{name!r}]")
    edges = quantile_edges(present, bins)
    return _numeric(name, present, edges, int(x.size - present.size), sketch_points)


def _numeric(name: str, present: np.ndarray, edges: tuple[float, ...], missing: int, sketch_points: int) -> NumericProfile:
    grid, cdf = cdf_sketch(present, sketch_points)
    counts = bin_counts(present, edges)
    return NumericProfile(name, edges, tuple(counts.tolist()), float(present[0]), float(present[-1]), missing, grid, cdf)


def categorical_profile(name: str, values: pd.Series) -> CategoricalProfile:
    """Profile of one categorical column; categories are compared as strings."""
    # Hash the column and turn only its distinct values into strings: converting every cell first
    # costs more. Values that are equal but read differently (1 and 1.0) need the cell-wise way.
    counted = values.value_counts(dropna=True, sort=False)
    if pd.api.types.infer_dtype(counted.index, skipna=True) != "string":
        counted = values.dropna().astype(str).value_counts(sort=False)
    if counted.empty:
        raise InvalidInputError("no values in the reference (every row is missing)", field=f"frame[{name!r}]")
    counted = counted.sort_index()
    present = int(counted.sum())
    return CategoricalProfile(name, tuple(str(c) for c in counted.index), tuple(int(c) for c in counted), len(values) - present)


def score_profile(scores: np.ndarray, sketch_points: int = KS_SKETCH_POINTS) -> NumericProfile:
    """The score on the fixed score bins (the same bins as the predictor's score histogram)."""
    s = check_scores(scores, "scores")
    if s.size == 0:
        raise InvalidInputError("no scores", field="scores")
    return _numeric(SCORE_FEATURE, np.sort(s), SCORE_EDGES, 0, sketch_points)


def check_scores(scores: np.ndarray | Sequence[float], field: str) -> np.ndarray:
    """Scores as floats in [0, 1]; NaN or out-of-range scores are refused with the first bad position."""
    try:
        s = np.asarray(scores, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise InvalidInputError("scores must be numbers", field=field) from None
    bad = np.flatnonzero(~((s >= 0.0) & (s <= 1.0)))  # NaN fails both comparisons
    if bad.size:
        i = int(bad[0])
        raise InvalidInputError(f"{bad.size} score(s) are NaN or outside [0, 1], first {s[i]!r}", field=f"{field}[{i}]")
    return s


def build_profile(
    frame: pd.DataFrame,
    scores: np.ndarray | Sequence[float],
    numeric: Sequence[str],
    categorical: Sequence[str] = (),
    *,
    bins: int = DEFAULT_BINS,
    sketch_points: int = KS_SKETCH_POINTS,
) -> ReferenceProfile:
    """Profile the training frame and the model's scores on it; features keep the given order (numeric, then categorical)."""
    if bins < 2:
        raise InvalidInputError(f"at least 2 bins are needed, got {bins}", field="bins")
    if sketch_points < 2:
        raise InvalidInputError(f"at least 2 sketch points are needed, got {sketch_points}", field="sketch_points")
    if len(frame) == 0:
        raise InvalidInputError("the reference frame has no rows", field="frame")
    missing = [c for c in (*numeric, *categorical) if c not in frame.columns]
    if missing:
        raise InvalidInputError(f"columns not in the reference frame: {missing}", field="frame")
    s = check_scores(scores, "scores")
    if s.size != len(frame):
        raise InvalidInputError(f"{s.size} scores for {len(frame)} rows", field="scores")
    profiles: list[FeatureProfile] = []
    for name in numeric:
        try:
            values = frame[name]
            if not pd.api.types.is_numeric_dtype(values.dtype):
                values = pd.to_numeric(values, errors="raise")
            column = values.to_numpy(dtype=float, na_value=np.nan)
        except (TypeError, ValueError):
            raise InvalidInputError("a numeric feature holds values that are not numbers", field=f"frame[{name!r}]") from None
        profiles.append(numeric_profile(name, column, bins=bins, sketch_points=sketch_points))
    profiles += [categorical_profile(name, frame[name]) for name in categorical]
    return ReferenceProfile(tuple(profiles), score_profile(s, sketch_points), len(frame))


# --- JSON -------------------------------------------------------------------------------------------


def _feature_to_dict(f: FeatureProfile) -> dict[str, Any]:
    if isinstance(f, NumericProfile):
        return {
            "name": f.name,
            "kind": f.kind,
            "edges": list(f.edges),
            "counts": list(f.counts),
            "min": f.minimum,
            "max": f.maximum,
            "missing": f.missing,
            "grid": list(f.grid),
            "cdf": list(f.cdf),
        }
    return {"name": f.name, "kind": f.kind, "categories": list(f.categories), "counts": list(f.counts), "missing": f.missing}


def _profile_to_dict(p: ReferenceProfile) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "rows": p.rows,
        "features": [_feature_to_dict(f) for f in p.features],
        "score": _feature_to_dict(p.score),
    }


def _get(doc: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if not isinstance(doc, Mapping):
        raise InvalidInputError("expected an object", field=path)
    if key not in doc:
        raise InvalidInputError("required key is missing", field=f"{path}.{key}")
    value = doc[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        raise InvalidInputError(f"expected {_kind_name(kind)}, got {type(value).__name__}", field=f"{path}.{key}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return " or ".join(k.__name__ for k in kinds)


def _numbers(doc: Mapping[str, Any], key: str, path: str, *, integer: bool = False) -> tuple[Any, ...]:
    items: list[Any] = _get(doc, key, list, path)
    out: list[float] = []
    for i, v in enumerate(items):
        ok = isinstance(v, int) if integer else isinstance(v, int | float)
        if isinstance(v, bool) or not ok or not math.isfinite(v) or (integer and v < 0):
            what = "a non-negative integer" if integer else "a finite number"
            raise InvalidInputError(f"expected {what}, got {v!r}", field=f"{path}.{key}[{i}]")
        out.append(v)
    return tuple(int(v) if integer else float(v) for v in out)


def _count(doc: Mapping[str, Any], key: str, path: str) -> int:
    value = int(_get(doc, key, int, path))
    if value < 0:
        raise InvalidInputError(f"a count cannot be negative, got {value}", field=f"{path}.{key}")
    return value


def _increasing(values: tuple[float, ...], field: str, strict: bool = True) -> None:
    steps = np.diff(np.asarray(values, dtype=float))
    if (steps <= 0).any() if strict else (steps < 0).any():
        raise InvalidInputError(f"values must {'strictly ' if strict else ''}increase", field=field)


def _numeric_from_dict(doc: Mapping[str, Any], path: str) -> NumericProfile:
    name = _get(doc, "name", str, path)
    edges = _numbers(doc, "edges", path)
    counts = _numbers(doc, "counts", path, integer=True)
    grid, cdf = _numbers(doc, "grid", path), _numbers(doc, "cdf", path)
    _increasing(edges, f"{path}.edges")
    _increasing(grid, f"{path}.grid")
    _increasing(cdf, f"{path}.cdf", strict=False)
    if len(counts) != len(edges) + 1:
        raise InvalidInputError(f"{len(counts)} counts for {len(edges)} edges (expected one more count than edges)", field=f"{path}.counts")
    if sum(counts) == 0:
        raise InvalidInputError("the reference has no values", field=f"{path}.counts")
    if len(grid) != len(cdf) or not grid or not 0 < cdf[-1] <= 1:
        raise InvalidInputError("grid and cdf must be non-empty, of equal length, with cdf ending in (0, 1]", field=f"{path}.cdf")
    lo, hi = float(_get(doc, "min", (int, float), path)), float(_get(doc, "max", (int, float), path))
    if not lo <= hi:
        raise InvalidInputError(f"min {lo} is above max {hi}", field=f"{path}.min")
    return NumericProfile(name, edges, counts, lo, hi, _count(doc, "missing", path), grid, cdf)


def _categorical_from_dict(doc: Mapping[str, Any], path: str) -> CategoricalProfile:
    name = _get(doc, "name", str, path)
    categories = _get(doc, "categories", list, path)
    if not all(isinstance(c, str) for c in categories) or len(set(categories)) != len(categories):
        raise InvalidInputError("categories must be distinct strings", field=f"{path}.categories")
    counts = _numbers(doc, "counts", path, integer=True)
    if len(counts) != len(categories) or sum(counts) == 0:
        raise InvalidInputError(f"{len(counts)} counts for {len(categories)} categories, or no values", field=f"{path}.counts")
    return CategoricalProfile(name, tuple(categories), counts, _count(doc, "missing", path))


def _feature_from_dict(doc: Mapping[str, Any], path: str) -> FeatureProfile:
    kind = _get(doc, "kind", str, path)
    if kind == NumericProfile.kind:
        return _numeric_from_dict(doc, path)
    if kind == CategoricalProfile.kind:
        return _categorical_from_dict(doc, path)
    raise InvalidInputError(f"unknown kind {kind!r}; expected 'numeric' or 'categorical'", field=f"{path}.kind")


def _profile_from_dict(doc: Any) -> ReferenceProfile:
    fmt = _get(doc, "format", str, "profile")
    if fmt != FORMAT:
        raise InvalidInputError(f"not a reference profile (format {fmt!r}, expected {FORMAT!r})", field="profile.format")
    version = _get(doc, "version", int, "profile")
    if version != FORMAT_VERSION:
        raise InvalidInputError(
            f"profile format version {version} is not supported (this code reads {FORMAT_VERSION})", field="profile.version"
        )
    features = _get(doc, "features", list, "profile")
    score = _numeric_from_dict(_get(doc, "score", dict, "profile"), "profile.score")
    parsed = tuple(_feature_from_dict(f, f"profile.features[{i}]") for i, f in enumerate(features))
    return ReferenceProfile(parsed, score, _count(doc, "rows", "profile"))


# --- MLflow (I/O edge) -----------------------------------------------------------------------------


def log_profile(profile: ReferenceProfile, run_id: str, tracking_uri: str) -> str:
    """Store the profile as an artifact of the training run; returns its artifact path."""
    from mlflow.tracking import MlflowClient  # noqa: PLC0415 - MLflow costs seconds to import; the statistics do not need it

    MlflowClient(tracking_uri).log_text(run_id, profile.to_json(), ARTIFACT_PATH)
    return ARTIFACT_PATH


def load_profile(tracking_uri: str, model_name: str, version: str) -> ReferenceProfile:
    """The profile logged with the run that produced a registered model version."""
    from mlflow.exceptions import MlflowException  # noqa: PLC0415 - see log_profile
    from mlflow.tracking import MlflowClient  # noqa: PLC0415

    client = MlflowClient(tracking_uri, registry_uri=tracking_uri)
    try:
        run_id = client.get_model_version(model_name, version).run_id
    except MlflowException as e:
        raise NotFoundError(f"model {model_name!r} version {version!r} is not registered ({e.error_code})", field="model") from None
    if not run_id:
        raise NotFoundError(f"model {model_name!r} version {version!r} has no training run, so no reference profile", field="model")
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = client.download_artifacts(run_id, ARTIFACT_PATH, tmp)
        except (MlflowException, OSError):
            raise NotFoundError(
                f"run {run_id} of model {model_name!r} version {version!r} has no {ARTIFACT_PATH}; log it with log_profile at training",
                field="model",
            ) from None
        return ReferenceProfile.from_json(Path(local).read_text())
