"""Drift statistics with known answers, the two counting paths agreeing, the verdict, and bad input."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from churnops.errors import InvalidInputError
from churnops.monitoring.drift import (
    PSI_EPSILON,
    DriftPolicy,
    Layout,
    WindowCounts,
    benjamini_hochberg,
    chi_square,
    count_frame,
    count_rows,
    detect_drift,
    evaluate,
    js_distance,
    ks_binned,
    ks_pvalue,
    ks_raw,
    psi_of_proportions,
)
from churnops.monitoring.profile import ReferenceProfile, build_profile, cdf_sketch
from tests.monitoring.drift_data import CATEGORICAL, NUMERIC, Generated, SmallFrame, pseudo_scores

FEATURES = ["amount", "visits", "rating", "plan"]

# --- statistics on small counts, computed by hand ---------------------------------------------------


def test_psi_known_values() -> None:
    # (0.25 - 0.5) ln(0.25 / 0.5) + (0.75 - 0.5) ln(0.75 / 0.5) = 0.25 ln 2 + 0.25 ln 1.5
    assert psi_of_proportions(np.array([0.5, 0.5]), np.array([0.25, 0.75]))[0] == pytest.approx(0.2746530722, abs=1e-10)
    # an empty reference bin counts as 1e-4: 0.1 ln(0.5 / 0.4) + (0.1 - 1e-4) ln(0.1 / 1e-4)
    assert PSI_EPSILON == 1e-4
    assert psi_of_proportions(np.array([0.5, 0.5, 0.0]), np.array([0.5, 0.4, 0.1]))[0] == pytest.approx(0.7123991075, abs=1e-10)
    assert psi_of_proportions(np.array([0.2, 0.8]), np.array([0.2, 0.8]))[0] == 0.0


def test_js_is_the_natural_log_distance() -> None:
    # m = (0.375, 0.625); KL(p||m) = 0.0322693, KL(q||m) = 0.0353749; sqrt of their mean
    assert js_distance(np.array([0.5, 0.5]), np.array([0.25, 0.75]))[0] == pytest.approx(0.1839077909, abs=1e-9)
    assert js_distance(np.array([1.0, 0.0]), np.array([0.0, 1.0]))[0] == pytest.approx(math.sqrt(math.log(2)), abs=1e-12)
    assert js_distance(np.array([0.3, 0.7]), np.array([0.3, 0.7]))[0] == 0.0


def test_ks_on_bins_is_the_largest_cdf_gap_at_the_edges() -> None:
    # CDFs (0.2, 0.5, 1) and (0.1, 0.3, 1)
    assert ks_binned(np.array([0.2, 0.3, 0.5]), np.array([0.1, 0.2, 0.7]))[0] == pytest.approx(0.2)


def test_chi_square_two_samples_and_goodness_of_fit() -> None:
    # reference 30/70 of 100, window 50/50: pooled expectation 40/60 on both sides
    stat, p = chi_square(np.array([0.3, 0.7]), np.array([100]), np.array([50, 50]))
    assert stat[0] == pytest.approx(25 / 3)
    assert p[0] == pytest.approx(stats.chi2.sf(25 / 3, 1))
    expected = stats.chi2_contingency([[30, 70], [50, 50]], correction=False)
    assert (stat[0], p[0]) == pytest.approx((expected.statistic, expected.pvalue))
    # reference proportions taken as exact: (50 - 30)^2 / 30 + (50 - 70)^2 / 70
    stat, p = chi_square(np.array([0.3, 0.7]), np.array([100]), np.array([50, 50]), reference_is_sample=False)
    assert stat[0] == pytest.approx(400 / 30 + 400 / 70)


def test_chi_square_ignores_bins_empty_on_both_sides_and_handles_new_categories() -> None:
    stat, p = chi_square(np.array([0.3, 0.7, 0.0, 0.0]), np.array([100]), np.array([50, 50, 0, 0]))
    assert stat[0] == pytest.approx(25 / 3)
    assert p[0] == pytest.approx(stats.chi2.sf(25 / 3, 1))  # one degree of freedom, not three
    stat, p = chi_square(np.array([1.0, 0.0]), np.array([100]), np.array([90, 10]))
    assert stats.chi2_contingency([[100, 0], [90, 10]], correction=False).statistic == pytest.approx(stat[0])
    stat, p = chi_square(np.array([1.0]), np.array([100]), np.array([40]))
    assert (stat[0], p[0]) == (0.0, 1.0)  # one category: nothing to compare


def test_benjamini_hochberg_known_values() -> None:
    q = benjamini_hochberg(np.array([0.01, 0.04, 0.03, 0.5, np.nan]))
    # sorted 0.01, 0.03, 0.04, 0.5 times 4/rank: 0.04, 0.06, 0.0533, 0.5; then running minimum from the top
    np.testing.assert_allclose(q[:4], [0.04, 0.04 * 4 / 3, 0.04 * 4 / 3, 0.5])
    assert np.isnan(q[4])
    assert np.isnan(benjamini_hochberg(np.array([np.nan]))).all()


@given(st.lists(st.floats(0, 1), min_size=1, max_size=40))
def test_benjamini_hochberg_is_monotone_and_never_below_p(ps: list[float]) -> None:
    p = np.array(ps)
    q = benjamini_hochberg(p)
    assert (q >= p - 1e-15).all() and (q <= 1).all()
    order = np.argsort(p, kind="stable")
    assert (np.diff(q[order]) >= -1e-15).all()


samples = st.lists(st.integers(-5, 5) | st.floats(-3, 3, allow_nan=False), min_size=1, max_size=60)


@pytest.mark.filterwarnings("ignore:divide by zero:RuntimeWarning")  # scipy's p-value for one-value samples; only the statistic is compared
@given(samples, samples)
def test_ks_on_raw_values_equals_scipy_with_the_full_reference(ref: list[float], win: list[float]) -> None:
    r, w = np.sort(np.array(ref, dtype=float)), np.sort(np.array(win, dtype=float))
    grid, cdf = cdf_sketch(r, points=10_000)  # fewer distinct values than points: the grid is exact
    assert ks_raw(w, np.asarray(grid), np.asarray(cdf)) == pytest.approx(stats.ks_2samp(r, w, method="asymp").statistic, abs=1e-12)


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 10_000), st.floats(-1, 1), st.floats(0.5, 2))
def test_binned_ks_is_a_lower_bound_within_the_largest_bin_mass(seed: int, shift: float, scale: float) -> None:
    rng = np.random.default_rng(seed)
    ref = pd.DataFrame({"x": rng.normal(size=3_000)})
    win = pd.DataFrame({"x": rng.normal(shift, scale, size=800)})
    profile = build_profile(ref, np.full(3_000, 0.5), ["x"], sketch_points=100_000)
    layout = Layout.of(profile)
    counts = count_frame(layout, win, np.full(800, 0.5))
    assert counts.ks is not None
    window = counts.bins[0] / counts.bins[0].sum()
    binned = ks_binned(layout.reference[0], window)[0]
    assert counts.ks[0] == pytest.approx(stats.ks_2samp(ref["x"], win["x"]).statistic, abs=1e-12)
    assert binned <= counts.ks[0] + 1e-12
    assert counts.ks[0] <= binned + max(layout.reference[0].max(), window.max()) + 1e-12


def test_ks_pvalue_matches_scipys_distribution() -> None:
    d, n, m = np.array([0.05, 0.08, 0.02, 0.01]), np.array([1_200, 20_000, 50_000, 50_000]), np.array([1_500, 800, 5_000, 40_000])
    p = ks_pvalue(d, n, m)
    en = np.round(n * m / (n + m))
    exact = np.array([stats.kstwo.sf(x, k) for x, k in zip(d, en, strict=True)])
    assert p[1] == pytest.approx(exact[1], rel=1e-12)  # effective size <= 1,000: scipy's own distribution
    np.testing.assert_allclose(p, exact, rtol=0.05)  # larger: Stephens-corrected limit, within 5 %


# --- the two counting paths ---------------------------------------------------------------------------

cells = st.one_of(st.none(), st.just(float("nan")), st.floats(-10, 200), st.integers(0, 20), st.sampled_from([math.inf, -math.inf]))
categories = st.one_of(st.none(), st.sampled_from(["basic", "pro", "team", "enterprise", "legacy"]))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(cells, cells, cells, categories, st.floats(0, 1)), min_size=1, max_size=40))
def test_request_path_counts_equal_window_job_counts(small_profile: ReferenceProfile, data: list[tuple[object, ...]]) -> None:
    layout = Layout.of(small_profile)
    rows = np.array([r[:4] for r in data], dtype=object)
    scores = np.array([r[4] for r in data], dtype=float)
    frame = pd.DataFrame(rows, columns=FEATURES)
    live, job = count_rows(layout, rows, scores), count_frame(layout, frame, scores)
    np.testing.assert_array_equal(live.bins, job.bins)
    np.testing.assert_array_equal(live.missing, job.missing)
    np.testing.assert_array_equal(live.out_of_range, job.out_of_range)
    np.testing.assert_array_equal(live.score_bins, job.score_bins)
    assert live.bins.sum() + live.missing.sum() == len(data) * len(FEATURES)


def test_quality_rates_and_unseen_categories(small_profile: ReferenceProfile) -> None:
    layout = Layout.of(small_profile)
    amount = small_profile.feature("amount")
    assert amount.kind == "numeric"
    low, high = small_profile.feature("amount").minimum, small_profile.feature("amount").maximum  # type: ignore[union-attr]
    rows = np.array(
        [
            [low - 1, 3.0, None, "basic"],
            [high + 1, 3.0, 5.0, "enterprise"],
            [None, 3.0, float("nan"), None],
            [low, 3.0, 7.0, "pro"],
        ],
        dtype=object,
    )
    result = evaluate(layout, count_rows(layout, rows, [0.1, 0.2, 0.3, 0.4]), DriftPolicy(min_rows=1))
    a, r, p = result.feature("amount"), result.feature("rating"), result.feature("plan")
    assert a.missing_rate == 0.25
    assert a.out_of_range_rate == pytest.approx(2 / 3)  # the minimum itself is in range
    assert r.missing_rate == 0.5
    assert r.reference_missing_rate == pytest.approx(small_profile.feature("rating").missing_rate)
    assert (p.missing_rate, p.out_of_range_rate) == (0.25, None)
    assert p.unseen_rate == pytest.approx(1 / 3)


def test_a_feature_without_values_gets_no_statistics_not_zeros(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(500, seed=3)
    frame["rating"] = np.nan
    result = detect_drift(small_profile, frame, scores)
    rating = result.feature("rating")
    assert (rating.psi, rating.js, rating.ks, rating.p_value, rating.q_value) == (None, None, None, None, None)
    assert rating.missing_rate == 1.0 and not rating.drifted
    assert "no values in the window" in rating.reason
    assert result.tested == 3


# --- the verdict ----------------------------------------------------------------------------------------


def test_same_process_is_not_drift_and_covariate_drift_is(generated: Generated) -> None:
    features = [*NUMERIC, *CATEGORICAL]
    same = detect_drift(generated.profile, generated.same[features], pseudo_scores(generated.same))
    assert same.drift_detected is False
    assert same.drifted_features == ()
    assert all(f.ks_basis == "raw" for f in same.features if f.kind == "numeric")
    shifted = detect_drift(generated.profile, generated.covariate[features], pseudo_scores(generated.covariate))
    assert shifted.drift_detected is True
    assert {"seat_utilization_30d", "tickets_per_seat_90d"} <= set(shifted.drifted_features)
    assert shifted.drifted_share is not None and shifted.drifted_share >= shifted.policy.drifted_share
    assert any("features drifted" in r for r in shifted.reasons)
    for f in shifted.features:
        assert f.reason and (f.drifted == ("<=" in f.reason and "psi" in f.reason))


def test_one_noisy_feature_does_not_make_a_drifted_window(generated: Generated) -> None:
    features = [*NUMERIC, *CATEGORICAL]
    window = generated.same[features].copy()
    window["mrr"] = window["mrr"] * 10
    result = detect_drift(generated.profile, window, pseudo_scores(generated.same))
    assert result.feature("mrr").drifted
    assert result.drifted_features == ("mrr",)
    assert result.drift_detected is False


def test_tiny_significant_shift_stays_below_the_effect_size_floor(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(60_000, seed=5, shift=0.03)
    result = detect_drift(small_profile, frame, scores)
    amount = result.feature("amount")
    assert amount.q_value is not None and amount.q_value <= 0.05
    assert amount.psi is not None and amount.psi < 0.1
    assert not amount.drifted and "below the floor" in amount.reason


def test_score_drift_alone_marks_the_window(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, _ = make_small(2_000, seed=6)
    result = detect_drift(small_profile, frame, np.full(2_000, 0.95))
    assert result.drifted_features == ()
    assert result.score.drifted and result.drift_detected
    assert result.reasons[0].startswith("score drifted")


def test_small_windows_get_no_verdict(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(50, seed=7, shift=2.0)
    result = detect_drift(small_profile, frame, scores)
    assert result.drift_detected is None
    assert "50 predictions in the window, 200 needed" in result.reasons[0]
    assert result.to_dict()["drift_detected"] is None


# --- bad input --------------------------------------------------------------------------------------------


def test_empty_window(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, _ = make_small(1, seed=1)
    with pytest.raises(InvalidInputError, match="window: the window holds no predictions"):
        detect_drift(small_profile, frame.iloc[:0], [])
    with pytest.raises(InvalidInputError, match="no predictions"):
        evaluate(Layout.of(small_profile), WindowCounts.empty(Layout.of(small_profile)))


def test_feature_missing_from_the_reference_or_the_window(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(10, seed=1)
    with pytest.raises(InvalidInputError, match=r"not in the reference profile of this model version: \['extra'\]"):
        detect_drift(small_profile, frame.assign(extra=1.0), scores)
    with pytest.raises(InvalidInputError, match=r"missing from the window: \['visits'\]"):
        detect_drift(small_profile, frame.drop(columns="visits"), scores)
    with pytest.raises(InvalidInputError, match=r"window: feature columns not in the window frame: \['visits'\]"):
        detect_drift(small_profile, frame.drop(columns="visits"), scores, features=FEATURES)


def test_nan_and_out_of_range_scores_name_the_position(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(10, seed=1)
    scores[3] = np.nan
    with pytest.raises(InvalidInputError, match=r"scores\[3\]: 1 score\(s\) are NaN or outside \[0, 1\]"):
        detect_drift(small_profile, frame, scores)
    with pytest.raises(InvalidInputError, match=r"scores\[0\]"):
        count_rows(Layout.of(small_profile), frame.to_numpy(dtype=object), np.full(10, 1.5))
    with pytest.raises(InvalidInputError, match="9 scores for a window of 10 rows"):
        detect_drift(small_profile, frame, np.full(9, 0.5))


def test_counts_on_other_bins_are_refused(small_profile: ReferenceProfile, generated: Generated) -> None:
    layout, other = Layout.of(small_profile), Layout.of(generated.profile)
    foreign = WindowCounts.empty(other)
    foreign.rows = 1
    with pytest.raises(InvalidInputError, match=r"counts\.bins: counts have shape"):
        evaluate(layout, foreign)
    counts = WindowCounts.empty(layout)
    counts.rows, counts.bins[3, layout.width - 1], counts.missing[:3] = 1, 1, 1  # "plan" has fewer bins than the widest feature
    with pytest.raises(InvalidInputError, match=r"counts.bins\['plan'\]: counts of 'plan' fall outside its 4 reference bins"):
        evaluate(layout, counts)
    counts = WindowCounts.empty(layout)
    counts.rows = 2
    with pytest.raises(InvalidInputError, match=r"'amount' has 0 values for 2 rows"):
        evaluate(layout, counts)


def test_request_rows_of_the_wrong_shape_or_type(small_profile: ReferenceProfile) -> None:
    layout = Layout.of(small_profile)
    with pytest.raises(InvalidInputError, match=r"rows: expected an \(n, 4\) array"):
        count_rows(layout, np.zeros((2, 3), dtype=object), [0.1, 0.2])
    rows = np.array([[1.0, 2.0, 3.0, "pro"], [1.0, "many", 3.0, "pro"]], dtype=object)
    with pytest.raises(InvalidInputError, match=r"rows\[1\]\[1\]: numeric feature 'visits' holds 'many', not a number"):
        count_rows(layout, rows, [0.1, 0.2])


def test_policy_values_are_checked() -> None:
    with pytest.raises(InvalidInputError, match=r"policy\.fdr"):
        DriftPolicy(fdr=0)
    with pytest.raises(InvalidInputError, match=r"policy\.psi_floor"):
        DriftPolicy(psi_floor=-1)
    with pytest.raises(InvalidInputError, match=r"policy\.min_rows"):
        DriftPolicy(min_rows=0)
