"""Drift statistics and the drift verdict: one definition for the live path and the window job.

Both paths reduce a window of model inputs to counts on the reference
profile's bins (``WindowCounts``); every statistic is then computed from those
counts by the same vectorised code, so the predictor's gauges and the window
job's report agree. The window job also has the raw values and computes the
Kolmogorov-Smirnov statistic on them, against the profile's CDF sketch
(exact for features with at most 500 distinct reference values, within
1/500 otherwise); the live path uses KS on the binned CDFs.

Definitions (natural logarithms throughout, as Evidently and SciPy use):
- PSI = sum (q - p) ln(q / p) over bins, with empty proportions replaced by
  ``PSI_EPSILON`` = 1e-4 (Evidently's rule when no bin holds less than 1e-4);
- JS is the Jensen-Shannon *distance*, the square root of the divergence,
  natural log (scipy.spatial.distance.jensenshannon, Evidently's
  ``jensenshannon``): 0 for equal distributions, at most sqrt(ln 2) ~ 0.833;
- KS is the largest gap between the reference and window CDFs; its p-value is
  Smirnov's two-sided distribution at the effective size n m / (n + m)
  (what scipy's ``ks_2samp`` uses above 10,000 values; see ``ks_pvalue``). On bins
  the CDFs are compared at the bin edges only, so the binned statistic is a
  lower bound of the raw one and exceeds it by at most the largest bin mass;
- chi-square compares the category counts of the reference and the window
  as two samples (test of homogeneity on the 2 x k table); with
  ``reference_is_sample=False`` it treats the reference proportions as exact
  (goodness of fit, Evidently's ``chisquare``).

The verdict guards against multiple testing: with 100+ features some test
rejects in almost every window by chance. A feature drifts only when its test
survives Benjamini-Hochberg at the false discovery rate *and* its PSI reaches
the effect-size floor (large windows make tiny, harmless shifts significant);
the window drifts when the share of drifted features reaches a threshold, or
when the score itself drifts. Missing values are not part of the
distributions; they, out-of-range values and unseen categories are reported
as feature quality.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

import numpy as np
import pandas as pd
from scipy import stats
from scipy.special import rel_entr

from churnops.errors import InvalidInputError
from churnops.monitoring.profile import CategoricalProfile, NumericProfile, ReferenceProfile, check_scores

PSI_EPSILON = 1e-4
_NONE = np.array(None, dtype=object)  # compared element-wise to find missing cells in object arrays


# --- statistics on proportions and counts (rows are features, columns are bins) -------------------


def _as_rows(a: np.ndarray) -> np.ndarray:
    m = np.asarray(a, dtype=float)
    return m.reshape(1, -1) if m.ndim == 1 else m


def psi_of_proportions(reference: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Population stability index per row of bin proportions (each row sums to 1), zeros floored at PSI_EPSILON as Evidently does.

    Not the canary analysis's ``psi_of_counts`` (half-count smoothing of counts, whose bias its sequential bound needs).
    """
    p, q = _as_rows(reference), _as_rows(window)
    p = np.where(p == 0, PSI_EPSILON, p)
    q = np.where(q == 0, PSI_EPSILON, q)
    out: np.ndarray = ((q - p) * np.log(q / p)).sum(axis=1)
    return out


def js_distance(reference: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Jensen-Shannon distance (natural log) per row of bin proportions."""
    p, q = _as_rows(reference), _as_rows(window)
    m = (p + q) / 2
    divergence = (rel_entr(p, m).sum(axis=1) + rel_entr(q, m).sum(axis=1)) / 2
    out: np.ndarray = np.sqrt(np.maximum(divergence, 0.0))
    return out


def ks_binned(reference: np.ndarray, window: np.ndarray) -> np.ndarray:
    """KS statistic from bin proportions: the largest CDF gap at the bin edges."""
    p, q = _as_rows(reference), _as_rows(window)
    out: np.ndarray = np.abs(np.cumsum(p, axis=1) - np.cumsum(q, axis=1)).max(axis=1)
    return out


KS_EXACT_MAX_N = 1000  # effective sizes up to this use the finite-n distribution; above it, the corrected limit


def ks_pvalue(statistic: np.ndarray, n_reference: np.ndarray, n_window: np.ndarray) -> np.ndarray:
    """Two-sided p-value of the KS statistic at the effective size en = n m / (n + m), rounded as scipy does.

    Up to ``KS_EXACT_MAX_N`` it is Smirnov's finite-n distribution (``scipy.stats.kstwo``,
    what ``ks_2samp`` uses in its asymptotic mode). Above, that function costs tens of
    milliseconds per call, so the limiting Kolmogorov distribution is used with
    Stephens' finite-size correction, sqrt(en) + 0.12 + 0.11 / sqrt(en): within a few
    per cent of ``kstwo`` for p-values above 1e-10, and every decision threshold
    lies far above that.
    """
    d = np.asarray(statistic, dtype=float)
    n, m = np.asarray(n_reference, dtype=float), np.asarray(n_window, dtype=float)
    en = np.maximum(np.round(n * m / (n + m)), 1.0)
    d, en = np.broadcast_arrays(d, en)
    out = np.empty(d.shape)
    small = en <= KS_EXACT_MAX_N
    out[small] = stats.kstwo.sf(d[small], en[small])
    root = np.sqrt(en[~small])
    out[~small] = stats.kstwobign.sf((root + 0.12 + 0.11 / root) * d[~small])
    result: np.ndarray = np.clip(np.where(np.isnan(d), np.nan, out), 0.0, 1.0)
    return result


def chi_square(
    reference: np.ndarray, n_reference: np.ndarray, window_counts: np.ndarray, *, reference_is_sample: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Pearson chi-square statistic and p-value per row; bins empty on both sides do not count.

    ``reference`` holds proportions, ``n_reference`` the reference size per
    row, ``window_counts`` the window's counts.
    """
    p, c = _as_rows(reference), _as_rows(window_counts)
    n_ref = np.asarray(n_reference, dtype=float).reshape(-1, 1)
    n_win = c.sum(axis=1, keepdims=True)
    if reference_is_sample:
        r = p * n_ref
        total = r + c
        used = total > 0
        share_ref = n_ref / (n_ref + n_win)
        exp_r, exp_c = total * share_ref, total * (1 - share_ref)
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(used, (r - exp_r) ** 2 / exp_r + (c - exp_c) ** 2 / exp_c, 0.0)
    else:
        used = (p > 0) | (c > 0)
        expected = p * n_win
        with np.errstate(divide="ignore", invalid="ignore"):
            terms = np.where(used, np.where(expected > 0, (c - expected) ** 2 / expected, np.inf), 0.0)
    statistic = terms.sum(axis=1)
    dof = used.sum(axis=1) - 1
    pvalue = np.where(dof > 0, stats.chi2.sf(statistic, np.maximum(dof, 1)), 1.0)
    return statistic, pvalue


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """BH-adjusted p-values (q-values); NaN entries are not tests and stay NaN."""
    p = np.asarray(pvalues, dtype=float)
    q = np.full(p.shape, np.nan)
    tested = np.flatnonzero(~np.isnan(p))
    m = tested.size
    if m == 0:
        return q
    order = tested[np.argsort(p[tested], kind="stable")]
    scaled = p[order] * m / np.arange(1, m + 1)
    q[order] = np.minimum(np.minimum.accumulate(scaled[::-1])[::-1], 1.0)
    return q


def ks_raw(sorted_values: np.ndarray, grid: np.ndarray, cdf: np.ndarray) -> float:
    """KS statistic between raw window values (sorted, no NaN) and a reference given as a step CDF.

    The reference CDF is constant between grid points and the window's is
    monotone there, so the largest gap on [g_k, g_k+1) sits at one of its
    ends: the window CDF at g_k, or just below g_k+1. Two binary searches of
    the grid into the window give both, whatever the window's size. With
    every distinct reference value in the grid this is exactly
    ``scipy.stats.ks_2samp``'s statistic.
    """
    n = sorted_values.size
    if n == 0:
        return math.nan
    at = np.searchsorted(sorted_values, grid, side="right") / n  # window CDF at each grid point
    below = np.searchsorted(sorted_values, grid, side="left") / n  # ... and just below it
    before = np.concatenate(([0.0], cdf[:-1]))  # reference CDF on the interval that ends at each grid point
    return float(max(np.abs(cdf - at).max(), np.abs(before - below).max(), abs(1.0 - cdf[-1])))


# --- the profile as arrays ----------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Layout:
    """A reference profile as arrays: one row per feature (profile order), one column per bin.

    Rows are padded with empty bins to the widest feature; an empty bin on both
    sides adds nothing to any statistic. A categorical row holds its categories
    and then the unseen bucket.
    """

    profile: ReferenceProfile
    names: tuple[str, ...]
    numeric: np.ndarray  # bool per feature
    n_bins: np.ndarray
    reference: np.ndarray  # proportions, (features, width)
    reference_values: np.ndarray  # reference rows with a value, per feature
    reference_missing_rate: np.ndarray
    num_index: np.ndarray  # rows of numeric features
    cat_index: np.ndarray
    edges: np.ndarray  # (most edges, numeric features): k-th edge of each feature, padded with +inf
    low: np.ndarray  # reference minimum per numeric feature
    high: np.ndarray
    lookups: tuple[dict[str, int], ...]  # category -> bin per categorical feature
    score_edges: np.ndarray
    score_reference: np.ndarray
    score_values: int
    # slots of the live path's single bincount: bins, then missing, out of range and score bins
    num_bin_base: np.ndarray  # first bin slot of each numeric feature
    num_missing_slot: np.ndarray
    num_range_slot: np.ndarray
    cat_missing_slot: tuple[int, ...]
    score_slot: int
    slots: int

    @property
    def width(self) -> int:
        return int(self.reference.shape[1])

    @classmethod
    def of(cls, profile: ReferenceProfile) -> Layout:
        feats = profile.features
        width = max(f.n_bins for f in feats)
        reference = np.zeros((len(feats), width))
        for i, f in enumerate(feats):
            reference[i, : f.n_bins] = f.proportions
        numeric = np.array([isinstance(f, NumericProfile) for f in feats])
        nums = [f for f in feats if isinstance(f, NumericProfile)]
        cats = [f for f in feats if isinstance(f, CategoricalProfile)]
        edges = np.full((max((len(f.edges) for f in nums), default=0), len(nums)), np.inf)
        for i, f in enumerate(nums):
            edges[: len(f.edges), i] = f.edges
        num_index, cat_index = np.flatnonzero(numeric), np.flatnonzero(~numeric)
        bins_end = len(feats) * width
        score_slot = bins_end + 2 * len(feats)
        return cls(
            profile=profile,
            names=profile.names,
            numeric=numeric,
            n_bins=np.array([f.n_bins for f in feats]),
            reference=reference,
            reference_values=np.array([f.values for f in feats], dtype=float),
            reference_missing_rate=np.array([f.missing_rate for f in feats]),
            num_index=num_index,
            cat_index=cat_index,
            edges=edges,
            low=np.array([f.minimum for f in nums]),
            high=np.array([f.maximum for f in nums]),
            lookups=tuple({c: j for j, c in enumerate(f.categories)} for f in cats),
            score_edges=np.asarray(profile.score.edges, dtype=float),
            score_reference=profile.score.proportions,
            score_values=profile.score.values,
            num_bin_base=num_index * width,
            num_missing_slot=bins_end + num_index,
            num_range_slot=bins_end + len(feats) + num_index,
            cat_missing_slot=tuple(int(bins_end + i) for i in cat_index),
            score_slot=score_slot,
            slots=score_slot + profile.score.n_bins,
        )


@dataclass
class WindowCounts:
    """A window reduced to counts on the reference bins (what the live path keeps and sums)."""

    rows: int  # predictions in the window
    bins: np.ndarray  # (features, width) values per bin, missing values excluded
    missing: np.ndarray  # per feature
    out_of_range: np.ndarray  # per feature: numeric values outside the reference [min, max]; 0 for categoricals
    score_bins: np.ndarray
    ks: np.ndarray | None = None  # KS on raw values per feature (NaN for categoricals); None: use the bins
    score_ks: float | None = None

    @classmethod
    def empty(cls, layout: Layout) -> WindowCounts:
        f = len(layout.names)
        return cls(
            0,
            np.zeros((f, layout.width), np.int64),
            np.zeros(f, np.int64),
            np.zeros(f, np.int64),
            np.zeros(layout.score_edges.size + 1, np.int64),
        )

    def add(self, other: WindowCounts) -> None:
        """Add another window's counts in place (raw-value KS cannot be summed, so it is dropped)."""
        self.rows += other.rows
        self.bins += other.bins
        self.missing += other.missing
        self.out_of_range += other.out_of_range
        self.score_bins += other.score_bins
        self.ks, self.score_ks = None, None

    def subtract(self, other: WindowCounts) -> None:
        self.rows -= other.rows
        self.bins -= other.bins
        self.missing -= other.missing
        self.out_of_range -= other.out_of_range
        self.score_bins -= other.score_bins
        self.ks, self.score_ks = None, None

    def copy(self) -> WindowCounts:
        ks = None if self.ks is None else self.ks.copy()
        return WindowCounts(
            self.rows, self.bins.copy(), self.missing.copy(), self.out_of_range.copy(), self.score_bins.copy(), ks, self.score_ks
        )


def _score_bins(layout: Layout, scores: np.ndarray) -> np.ndarray:
    return np.bincount(np.searchsorted(layout.score_edges, scores, side="left"), minlength=layout.score_edges.size + 1).astype(np.int64)


def check_features(expected: Sequence[str], given: Sequence[str], field: str) -> None:
    """The window must carry exactly the profile's features; the message names the difference."""
    missing = [n for n in expected if n not in set(given)]
    unknown = [n for n in given if n not in set(expected)]
    if unknown:
        raise InvalidInputError(f"features not in the reference profile of this model version: {unknown}", field=field)
    if missing:
        raise InvalidInputError(f"features of the reference profile missing from the window: {missing}", field=field)
    duplicated = sorted({n for n in given if list(given).count(n) > 1})
    if duplicated:
        raise InvalidInputError(f"features given more than once: {duplicated}", field=field)


def _numeric_column(frame: pd.DataFrame, name: str) -> np.ndarray:
    col = frame[name]
    if not pd.api.types.is_numeric_dtype(col.dtype) or pd.api.types.is_bool_dtype(col.dtype):
        try:
            col = pd.to_numeric(col, errors="raise")
        except (TypeError, ValueError):
            raise InvalidInputError("a numeric feature holds values that are not numbers", field=f"window[{name!r}]") from None
    out: np.ndarray = col.to_numpy(dtype=float, na_value=np.nan)
    return out


def _infinities_as_extremes(sorted_values: np.ndarray) -> None:
    """Infinite values are values: out of range, in the outer bins. Replaced in place by the largest
    finite floats, at the ends of the sorted values, so they stay sorted."""
    sorted_values[: sorted_values.searchsorted(-np.inf, side="right")] = np.finfo(float).min
    sorted_values[sorted_values.searchsorted(np.inf, side="left") :] = np.finfo(float).max


def count_frame(
    layout: Layout, frame: pd.DataFrame, scores: np.ndarray | Sequence[float], features: Sequence[str] | None = None
) -> WindowCounts:
    """Count a window of logged inputs (one column per feature) and scores; adds KS on raw values.

    ``features`` names the frame's feature columns (default: every column);
    they must be exactly the profile's features.
    """
    names = list(frame.columns) if features is None else list(features)
    check_features(layout.names, names, "window")
    absent = [n for n in names if n not in frame.columns]
    if absent:
        raise InvalidInputError(f"feature columns not in the window frame: {absent}", field="window")
    if len(frame) == 0:
        raise InvalidInputError("the window holds no predictions", field="window")
    s = check_scores(scores, "scores")
    if s.size != len(frame):
        raise InvalidInputError(f"{s.size} scores for a window of {len(frame)} rows", field="scores")
    f, n = len(layout.names), len(frame)
    counts = WindowCounts.empty(layout)
    counts.rows = n
    counts.ks = np.full(f, np.nan)
    # One column at a time: its sorted copy stays in cache while it is searched, where a matrix of
    # every column would be written to memory and read back (the cost that grows with load).
    for i in layout.num_index:
        prof = layout.profile.features[i]
        assert isinstance(prof, NumericProfile)
        v = np.sort(_numeric_column(frame, prof.name))  # NaN sorts last, and searchsorted finds it (NumPy orders NaN above all)
        v = v[: v.searchsorted(np.nan)]
        if v.size and (v[0] == -np.inf or v[-1] == np.inf):
            _infinities_as_extremes(v)
        counts.bins[i, : prof.n_bins] = np.diff(np.concatenate(([0], np.searchsorted(v, prof.edges, side="right"), [v.size])))
        counts.missing[i] = n - v.size
        counts.out_of_range[i] = np.searchsorted(v, prof.minimum, side="left") + v.size - np.searchsorted(v, prof.maximum, side="right")
        counts.ks[i] = ks_raw(v, np.asarray(prof.grid), np.asarray(prof.cdf))
    for i in layout.cat_index:
        prof_c = layout.profile.features[i]
        assert isinstance(prof_c, CategoricalProfile)
        # Count each distinct value once; values compare as strings, as on the request path.
        counted = frame[prof_c.name].value_counts(dropna=True, sort=False)
        lookup = layout.lookups[int(np.searchsorted(layout.cat_index, i))]
        to_bin = np.array([lookup.get(str(u), len(lookup)) for u in counted.index], dtype=np.int64)
        per_value = counted.to_numpy(dtype=np.int64)
        counts.bins[i, : prof_c.n_bins] = np.bincount(to_bin, weights=per_value, minlength=prof_c.n_bins).astype(np.int64)
        counts.missing[i] = n - int(per_value.sum())
    counts.score_bins = _score_bins(layout, s)
    score = layout.profile.score
    counts.score_ks = ks_raw(np.sort(s), np.asarray(score.grid), np.asarray(score.cdf))
    return counts


@dataclass(frozen=True)
class Converted:
    """A batch of model inputs, checked and converted: what is left to do is binning."""

    numbers: np.ndarray  # (n, numeric features) floats, NaN where missing
    category_slots: np.ndarray  # (n, categorical features) slot of each cell: its bin, or the feature's missing slot
    scores: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.scores.size)


@dataclass(frozen=True)
class InputColumns:
    """Where the profile's features sit in the predictor's rows; built once per model version."""

    width: int  # columns of the predictor's rows
    numeric: np.ndarray  # input column of each numeric feature, in profile order
    categorical: tuple[tuple[int, dict[str, int], int, int], ...]  # per categorical feature: column, bin lookup, first slot, missing slot

    @classmethod
    def of(cls, layout: Layout, columns: Sequence[int] | None = None) -> InputColumns:
        """``columns[i]`` is the input column of the profile's i-th feature (default: the profile's order)."""
        where = np.arange(len(layout.names)) if columns is None else np.asarray(columns, dtype=np.int64)
        categorical = tuple(
            (int(where[i]), layout.lookups[k], int(i) * layout.width, layout.cat_missing_slot[k]) for k, i in enumerate(layout.cat_index)
        )
        return cls(where.size, where[layout.num_index], categorical)


def convert_rows(layout: Layout, rows: np.ndarray, scores: np.ndarray | Sequence[float], columns: InputColumns | None = None) -> Converted:
    """Check and convert model inputs as the predictor holds them: an (n, features) object array.

    Numeric cells hold numbers or None/NaN (missing); categorical cells hold
    strings or None/NaN, and a value the reference never saw counts as
    unseen. Costs O(features) per row: the request path calls it and leaves
    the binning to ``count_converted`` on a batch.
    """
    cols = columns or InputColumns.of(layout)
    if not isinstance(rows, np.ndarray) or rows.ndim != 2 or rows.shape[1] != cols.width:
        shape = getattr(rows, "shape", None)
        raise InvalidInputError(f"expected an (n, {cols.width}) array of feature values, got shape {shape}", field="rows")
    n = rows.shape[0]
    s = scores.reshape(-1) if isinstance(scores, np.ndarray) and scores.dtype == np.float64 else np.asarray(scores, dtype=float).reshape(-1)
    if s.size != n:
        raise InvalidInputError(f"{s.size} scores for {n} rows", field="scores")
    if n and not (s.min() >= 0.0 and s.max() <= 1.0):  # NaN fails too
        check_scores(s, "scores")  # raises with the first bad position
    num = rows[:, cols.numeric]
    try:
        x = np.where(np.equal(num, _NONE), np.nan, num).astype(float)
    except (TypeError, ValueError):
        raise _bad_numeric_cell(layout, num, cols.numeric) from None
    slots = [[_category_slot(row[c], lookup, base, missing) for c, lookup, base, missing in cols.categorical] for row in rows]
    return Converted(x, np.array(slots, dtype=np.int64).reshape(n, len(cols.categorical)), s)


def _category_slot(value: object, lookup: dict[str, int], base: int, missing: int) -> int:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return base + lookup.get(value if isinstance(value, str) else str(value), len(lookup))  # the last bin holds unseen values


def count_converted(layout: Layout, batch: Converted) -> WindowCounts:
    """Bin a converted batch: every count lands in one ``bincount`` over a flat slot space
    (bins, then missing, out of range and score bins)."""
    x = batch.numbers
    absent = np.isnan(x)
    present = ~absent
    index = np.zeros(x.shape, np.int64)
    for edge in layout.edges:  # bin = number of edges below the value (right-closed bins); NaN counts none
        index += x > edge
    parts = [
        (layout.num_bin_base + index)[present],
        np.broadcast_to(layout.num_missing_slot, x.shape)[absent],
        np.broadcast_to(layout.num_range_slot, x.shape)[((x < layout.low) | (x > layout.high)) & present],
        layout.score_slot + np.searchsorted(layout.score_edges, batch.scores, side="left"),
        batch.category_slots.reshape(-1),
    ]
    slots = np.bincount(np.concatenate(parts), minlength=layout.slots).astype(np.int64)
    f, width = len(layout.names), layout.width
    return WindowCounts(
        rows=batch.rows,
        bins=slots[: f * width].reshape(f, width),
        missing=slots[f * width : f * width + f],
        out_of_range=slots[f * width + f : f * width + 2 * f],
        score_bins=slots[layout.score_slot :],
    )


def concat_converted(batches: Sequence[Converted]) -> Converted:
    if len(batches) == 1:
        return batches[0]
    return Converted(
        np.concatenate([b.numbers for b in batches]),
        np.concatenate([b.category_slots for b in batches]),
        np.concatenate([b.scores for b in batches]),
    )


def count_rows(layout: Layout, rows: np.ndarray, scores: np.ndarray | Sequence[float], columns: InputColumns | None = None) -> WindowCounts:
    """Count a batch of model inputs (see ``convert_rows``) on the reference bins."""
    return count_converted(layout, convert_rows(layout, rows, scores, columns))


def _bad_numeric_cell(layout: Layout, num: np.ndarray, num_cols: np.ndarray) -> InvalidInputError:
    for r, c in np.ndindex(num.shape):
        v = num[r, c]
        try:
            float(v) if v is not None else None
        except (TypeError, ValueError):
            name = layout.names[layout.num_index[c]]
            return InvalidInputError(f"numeric feature {name!r} holds {v!r}, not a number", field=f"rows[{r}][{int(num_cols[c])}]")
    return InvalidInputError("a numeric feature holds a value that is not a number", field="rows")


# --- the verdict ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DriftPolicy:
    """When a feature, the score and the window count as drifted."""

    fdr: float = 0.05  # Benjamini-Hochberg false discovery rate across the features' tests
    psi_floor: float = 0.1  # effect-size floor: a significant feature must also reach this PSI
    drifted_share: float = 0.1  # the window drifts when at least this share of tested features drifted (12 of 116)
    score_alpha: float = 0.05  # significance of the score's KS test (one test: no correction)
    score_psi_floor: float = 0.1
    min_rows: int = 200  # below this many predictions the window gets no verdict

    def __post_init__(self) -> None:
        for name in ("fdr", "drifted_share", "score_alpha"):
            v = getattr(self, name)
            if not 0 < v <= 1:
                raise InvalidInputError(f"must be in (0, 1], got {v}", field=f"policy.{name}")
        for name in ("psi_floor", "score_psi_floor"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"must not be negative, got {getattr(self, name)}", field=f"policy.{name}")
        if self.min_rows < 1:
            raise InvalidInputError(f"must be at least 1, got {self.min_rows}", field="policy.min_rows")


@dataclass(frozen=True)
class FeatureDrift:
    """One feature's statistics in a window; None where a statistic does not apply or has no data."""

    feature: str
    kind: str  # numeric | categorical
    values: int  # window rows with a value
    psi: float | None
    js: float | None
    ks: float | None  # numeric features
    ks_basis: str | None  # "raw" (window job) or "bins" (live path)
    chi2: float | None  # categorical features
    test: str  # the test behind p_value: ks or chi2
    p_value: float | None
    q_value: float | None  # Benjamini-Hochberg adjusted across the window's features
    drifted: bool
    reason: str
    missing_rate: float
    reference_missing_rate: float
    out_of_range_rate: float | None  # share of the window's values outside the reference range (numeric)
    unseen_rate: float | None  # share of the window's values in categories the reference never saw (categorical)


@dataclass(frozen=True)
class ScoreDrift:
    psi: float
    js: float
    ks: float
    ks_basis: str
    p_value: float
    drifted: bool
    reason: str


@dataclass(frozen=True)
class DriftResult:
    rows: int
    features: tuple[FeatureDrift, ...]
    score: ScoreDrift
    tested: int  # features with a test (at least one value in the window)
    drifted_features: tuple[str, ...]
    drifted_share: float | None
    drift_detected: bool | None  # None: too few predictions for a verdict
    reasons: tuple[str, ...]
    policy: DriftPolicy = field(default_factory=DriftPolicy)

    def feature(self, name: str) -> FeatureDrift:
        for f in self.features:
            if f.feature == name:
                return f
        raise InvalidInputError(f"feature {name!r} is not in this result", field="feature")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = _plain(asdict(self))
        return out


def _plain(value: Any) -> Any:
    """JSON-ready: NaN and infinities become None, NumPy scalars become Python numbers."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _opt(x: float) -> float | None:
    return None if math.isnan(x) else float(x)


def check_counts(layout: Layout, counts: WindowCounts) -> None:
    """Counts must sit on this profile's bins; otherwise they were made for another model version."""
    f = len(layout.names)
    if counts.bins.shape != (f, layout.width):
        raise InvalidInputError(f"counts have shape {counts.bins.shape}, the profile's bins {(f, layout.width)}", field="counts.bins")
    if counts.score_bins.shape != (layout.score_edges.size + 1,):
        raise InvalidInputError(
            f"{counts.score_bins.size} score bins, the profile has {layout.score_edges.size + 1}", field="counts.score_bins"
        )
    beyond = np.arange(layout.width)[None, :] >= layout.n_bins[:, None]
    bad = np.flatnonzero((counts.bins * beyond).sum(axis=1))
    if bad.size:
        name = layout.names[int(bad[0])]
        raise InvalidInputError(
            f"counts of {name!r} fall outside its {int(layout.n_bins[bad[0]])} reference bins", field=f"counts.bins[{name!r}]"
        )
    if (counts.bins < 0).any() or (counts.missing < 0).any() or counts.rows < 0:
        raise InvalidInputError("counts cannot be negative", field="counts")
    off = np.flatnonzero(counts.bins.sum(axis=1) + counts.missing != counts.rows)
    if off.size:
        name = layout.names[int(off[0])]
        raise InvalidInputError(
            f"{name!r} has {int(counts.bins[off[0]].sum() + counts.missing[off[0]])} values for {counts.rows} rows",
            field=f"counts[{name!r}]",
        )


def _feature_reason(test: str, p: float, q: float, value: float, drifted: bool, policy: DriftPolicy) -> str:
    if drifted:
        return f"{test} p={p:.2g}, q={q:.2g} <= {policy.fdr} and psi {value:.3f} >= {policy.psi_floor}"
    if q <= policy.fdr:
        return f"significant ({test} q={q:.2g}) but psi {value:.3f} is below the floor {policy.psi_floor}"
    return f"not significant ({test} p={p:.2g}, q={q:.2g})"


def evaluate(layout: Layout, counts: WindowCounts, policy: DriftPolicy | None = None) -> DriftResult:
    """Every statistic and the verdict for one window."""
    policy = policy or DriftPolicy()
    check_counts(layout, counts)
    if counts.rows == 0:
        raise InvalidInputError("the window holds no predictions", field="window")
    values = counts.bins.sum(axis=1)
    has = values > 0
    window = counts.bins / np.maximum(values, 1)[:, None]
    psi_v, js_v = psi_of_proportions(layout.reference, window), js_distance(layout.reference, window)
    ks_v = counts.ks if counts.ks is not None else ks_binned(layout.reference, window)
    ks_p = ks_pvalue(ks_v, layout.reference_values, values)
    chi_v, chi_p = chi_square(layout.reference, layout.reference_values, counts.bins)
    pvals = np.where(layout.numeric, ks_p, chi_p)
    pvals[~has] = np.nan
    qvals = benjamini_hochberg(pvals)
    drifted = has & (qvals <= policy.fdr) & (psi_v >= policy.psi_floor)
    basis = "bins" if counts.ks is None else "raw"
    feats = []
    for i, name in enumerate(layout.names):
        num = bool(layout.numeric[i])
        test = "ks" if num else "chi2"
        if has[i]:
            reason = _feature_reason(test, pvals[i], qvals[i], psi_v[i], bool(drifted[i]), policy)
        else:
            reason = f"no values in the window (all {counts.rows} missing)"
        oor = counts.out_of_range[i] / values[i] if num and has[i] else None
        unseen = counts.bins[i, layout.n_bins[i] - 1] / values[i] if not num and has[i] else None
        feats.append(
            FeatureDrift(
                feature=name,
                kind="numeric" if num else "categorical",
                values=int(values[i]),
                psi=float(psi_v[i]) if has[i] else None,
                js=float(js_v[i]) if has[i] else None,
                ks=float(ks_v[i]) if num and has[i] else None,
                ks_basis=basis if num else None,
                chi2=float(chi_v[i]) if not num and has[i] else None,
                test=test,
                p_value=_opt(pvals[i]),
                q_value=_opt(qvals[i]),
                drifted=bool(drifted[i]),
                reason=reason,
                missing_rate=float(counts.missing[i] / counts.rows),
                reference_missing_rate=float(layout.reference_missing_rate[i]),
                out_of_range_rate=None if oor is None else float(oor),
                unseen_rate=None if unseen is None else float(unseen),
            )
        )
    score = _score_drift(layout, counts, policy)
    return _verdict(counts.rows, tuple(feats), score, int(has.sum()), policy)


def _score_drift(layout: Layout, counts: WindowCounts, policy: DriftPolicy) -> ScoreDrift:
    q = counts.score_bins / counts.rows
    p = layout.score_reference
    value = float(psi_of_proportions(p, q)[0])
    ks = counts.score_ks if counts.score_ks is not None else float(ks_binned(p, q)[0])
    pval = float(ks_pvalue(np.array([ks]), np.array([layout.score_values]), np.array([counts.rows]))[0])
    drifted = pval <= policy.score_alpha and value >= policy.score_psi_floor
    if drifted:
        reason = f"ks p={pval:.2g} <= {policy.score_alpha} and psi {value:.3f} >= {policy.score_psi_floor}"
    elif pval <= policy.score_alpha:
        reason = f"significant (ks p={pval:.2g}) but psi {value:.3f} is below the floor {policy.score_psi_floor}"
    else:
        reason = f"not significant (ks p={pval:.2g})"
    return ScoreDrift(value, float(js_distance(p, q)[0]), float(ks), "bins" if counts.score_ks is None else "raw", pval, drifted, reason)


def _verdict(rows: int, feats: tuple[FeatureDrift, ...], score: ScoreDrift, tested: int, policy: DriftPolicy) -> DriftResult:
    drifted = tuple(f.feature for f in feats if f.drifted)
    share = len(drifted) / tested if tested else None
    reasons: list[str] = []
    detected: bool | None
    if rows < policy.min_rows:
        detected = None
        reasons.append(f"no verdict: {rows} predictions in the window, {policy.min_rows} needed")
    else:
        by_share = share is not None and share >= policy.drifted_share
        detected = by_share or score.drifted
        if by_share:
            reasons.append(f"{len(drifted)} of {tested} features drifted ({share:.0%} >= {policy.drifted_share:.0%})")
        if score.drifted:
            reasons.append(f"score drifted: {score.reason}")
        if not detected:
            shown = f"{share:.0%}" if share is not None else "no feature tested"
            reasons.append(f"{len(drifted)} of {tested} features drifted ({shown} < {policy.drifted_share:.0%}); score: {score.reason}")
    return DriftResult(rows, feats, score, tested, drifted, share, detected, tuple(reasons), policy)


class Detector(Protocol):
    """What the window job needs from a drift detector: the window's counts on the profile's bins and a verdict.

    ``BinnedStatistics`` (below) is the default. Another engine (for example
    alibi-detect, which must stay out of the default install for its licence
    and its NumPy pin, running in an environment of its own) plugs in here and
    still reports on the profile's bins, so reports and gauges keep one shape.
    """

    def detect(
        self, layout: Layout, frame: pd.DataFrame, scores: np.ndarray | Sequence[float], features: Sequence[str] | None, policy: DriftPolicy
    ) -> tuple[WindowCounts, DriftResult]: ...


class BinnedStatistics:
    """The default detector: PSI, JS, KS and chi-square on the profile's bins, verdict with multiple-testing control."""

    def detect(
        self, layout: Layout, frame: pd.DataFrame, scores: np.ndarray | Sequence[float], features: Sequence[str] | None, policy: DriftPolicy
    ) -> tuple[WindowCounts, DriftResult]:
        counts = count_frame(layout, frame, scores, features)
        return counts, evaluate(layout, counts, policy)


def detect_drift(
    profile: ReferenceProfile | Layout,
    frame: pd.DataFrame,
    scores: np.ndarray | Sequence[float],
    features: Sequence[str] | None = None,
    policy: DriftPolicy | None = None,
) -> DriftResult:
    """The window job's entry point: count a window of logged inputs and judge it."""
    layout = profile if isinstance(profile, Layout) else Layout.of(profile)
    return evaluate(layout, count_frame(layout, frame, scores, features), policy)
