"""The reference profile: bins, ranges, categories, JSON round trip and the MLflow artifact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.tracking import MlflowClient

from churnops.errors import InvalidInputError, NotFoundError
from churnops.monitoring.profile import (
    ARTIFACT_PATH,
    SCORE_EDGES,
    CategoricalProfile,
    NumericProfile,
    ReferenceProfile,
    bin_counts,
    build_profile,
    categorical_profile,
    distinct_sorted,
    load_profile,
    log_profile,
    numeric_profile,
    quantile_edges,
    sorted_quantiles,
)
from tests.monitoring.drift_data import SmallFrame


def test_quantile_edges_of_a_continuous_feature_give_ten_even_bins() -> None:
    x = np.sort(np.random.default_rng(0).normal(size=10_000))
    edges = quantile_edges(x, 10)
    assert len(edges) == 9
    np.testing.assert_allclose(bin_counts(x, edges) / x.size, 0.1, atol=1e-3)


def test_ties_give_one_edge_per_value_and_no_empty_bin() -> None:
    flag = np.sort(np.array([0.0] * 70 + [1.0] * 30))
    assert quantile_edges(flag, 10) == (0.0,)  # the edge at the maximum would only open an empty bin
    assert bin_counts(flag, (0.0,)).tolist() == [70, 30]
    counts = np.sort(np.random.default_rng(1).poisson(1.0, 5_000).astype(float))
    edges = quantile_edges(counts, 10)
    assert list(edges) == sorted(set(edges)) and max(edges) < counts.max()
    assert (bin_counts(counts, edges) > 0).all()


def test_bins_are_right_closed_and_outer_bins_open() -> None:
    x = np.array([-100.0, 1.0, 1.5, 2.0, 2.0, 100.0])
    assert bin_counts(x, (1.0, 2.0)).tolist() == [2, 3, 1]  # (-inf, 1], (1, 2], (2, inf)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(-1e6, 1e6) | st.integers(-3, 3), min_size=1, max_size=200), st.integers(2, 20))
def test_every_value_falls_in_exactly_one_bin(values: list[float], bins: int) -> None:
    x = np.array(values, dtype=float)
    p = numeric_profile("x", x, bins=bins)
    assert p.values == x.size and p.missing == 0 and p.n_bins <= bins
    assert (p.minimum, p.maximum) == (x.min(), x.max())
    assert p.cdf[-1] == 1.0 and p.grid[-1] == x.max()
    assert p.proportions.sum() == pytest.approx(1.0)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.floats(-1e3, 1e3) | st.integers(-3, 3), min_size=1, max_size=300), st.integers(1, 600))
def test_quantiles_and_distinct_values_of_sorted_values_are_numpys(values: list[float], points: int) -> None:
    x = np.sort(np.array(values, dtype=float))
    levels = np.arange(1, points + 1) / points
    np.testing.assert_array_equal(sorted_quantiles(x, levels), np.quantile(x, levels, method="inverted_cdf"))
    np.testing.assert_array_equal(distinct_sorted(x), np.unique(x))


@pytest.mark.parametrize(
    "values",
    [
        pd.Series(["pro", None, "basic", "pro", np.nan, "team"]),
        pd.Series(["pro", "basic", "pro", None], dtype="category").cat.add_categories(["unused"]),
        pd.Series([1, 1.0, "1", True, 2.5, None], dtype=object),  # 1, 1.0 and True are equal keys but read differently
        pd.Series(["pro", "basic", None, "pro"], dtype="string"),
    ],
    ids=["object", "category", "mixed", "string"],
)
def test_categories_are_counted_by_their_strings(values: pd.Series) -> None:
    p = categorical_profile("c", values)
    expected = values.dropna().astype(str).value_counts().sort_index()
    assert p.categories == tuple(str(c) for c in expected.index)
    assert p.counts == tuple(int(c) for c in expected) and all(type(c) is int for c in p.counts)  # JSON-ready
    assert p.missing == int(values.isna().sum())


def test_profile_of_a_frame(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(4_000, seed=1)
    assert small_profile.names == ("amount", "visits", "rating", "plan")
    rating = small_profile.feature("rating")
    assert isinstance(rating, NumericProfile)
    assert rating.missing == int(frame["rating"].isna().sum()) and rating.missing_rate == pytest.approx(0.2, abs=0.02)
    assert rating.grid == tuple(float(v) for v in range(11))  # 11 distinct values: the CDF is kept exactly
    plan = small_profile.feature("plan")
    assert isinstance(plan, CategoricalProfile)
    assert plan.categories == ("basic", "pro", "team")
    assert plan.proportions[-1] == 0.0 and plan.n_bins == 4  # the unseen bucket
    assert small_profile.score.edges == SCORE_EDGES and small_profile.score.values == 4_000
    assert small_profile.score.counts == tuple(int(c) for c in bin_counts(np.sort(scores), SCORE_EDGES))
    with pytest.raises(NotFoundError, match="'nope' is not in the reference profile"):
        small_profile.feature("nope")


def test_json_round_trip(small_profile: ReferenceProfile) -> None:
    text = small_profile.to_json()
    assert json.loads(text)["format"] == "churnops.reference_profile" and json.loads(text)["version"] == 1
    assert ReferenceProfile.from_json(text) == small_profile


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.update(format="something"), r"profile\.format: not a reference profile"),
        (lambda d: d.update(version=2), r"profile\.version: profile format version 2 is not supported"),
        (lambda d: d.pop("score"), r"profile\.score: required key is missing"),
        (lambda d: d["features"][0].update(counts=[1, 2]), r"profile\.features\[0\]\.counts: 2 counts for"),
        (lambda d: d["features"][0].update(edges=[3.0, 1.0]), r"profile\.features\[0\]\.edges: values must strictly increase"),
        (lambda d: d["features"][1].update(missing=-1), r"profile\.features\[1\]\.missing: a count cannot be negative"),
        (lambda d: d["features"][1]["counts"].__setitem__(0, "x"), r"profile\.features\[1\]\.counts\[0\]: expected a non-negative integer"),
        (lambda d: d["features"][3].update(kind="text"), r"profile\.features\[3\]\.kind: unknown kind 'text'"),
        (lambda d: d["features"][3].update(categories=["a", "a", "b"]), r"categories must be distinct strings"),
        (lambda d: d["features"].append(d["features"][0]), r"profile\.features: features appear more than once: \['amount'\]"),
    ],
)
def test_bad_profile_documents_name_the_field(small_profile: ReferenceProfile, edit: object, message: str) -> None:
    doc = json.loads(small_profile.to_json())
    edit(doc)  # type: ignore[operator]
    with pytest.raises(InvalidInputError, match=message):
        ReferenceProfile.from_json(json.dumps(doc))
    with pytest.raises(InvalidInputError, match="profile: not JSON"):
        ReferenceProfile.from_json("{")


def test_building_from_bad_training_data(make_small: SmallFrame) -> None:
    frame, scores = make_small(100, seed=2)
    with pytest.raises(InvalidInputError, match=r"frame: columns not in the reference frame: \['tenure'\]"):
        build_profile(frame, scores, ["tenure"])
    with pytest.raises(InvalidInputError, match=r"frame\['amount'\]: no values in the reference"):
        build_profile(frame.assign(amount=np.nan), scores, ["amount"])
    with pytest.raises(InvalidInputError, match=r"frame\['plan'\]: a numeric feature holds values that are not numbers"):
        build_profile(frame, scores, ["plan"])
    bad = scores.copy()
    bad[7] = np.nan
    with pytest.raises(InvalidInputError, match=r"scores\[7\]: 1 score\(s\) are NaN"):
        build_profile(frame, bad, ["amount"])
    with pytest.raises(InvalidInputError, match="scores: 99 scores for 100 rows"):
        build_profile(frame, scores[:99], ["amount"])
    with pytest.raises(InvalidInputError, match="frame: the reference frame has no rows"):
        build_profile(frame.iloc[:0], [], ["amount"])
    with pytest.raises(InvalidInputError, match=r"frame\['amount'\]: infinite values"):
        build_profile(frame.assign(amount=np.inf), scores, ["amount"])


# --- MLflow ---------------------------------------------------------------------------------------------


def _registry(tmp_path: Path) -> tuple[str, MlflowClient, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri, registry_uri=uri)
    experiment = client.create_experiment("churn", artifact_location=(tmp_path / "artifacts").as_uri())
    return uri, client, experiment


def test_profile_travels_with_the_model_version(tmp_path: Path, small_profile: ReferenceProfile) -> None:
    uri, client, experiment = _registry(tmp_path)
    run = client.create_run(experiment).info.run_id
    assert log_profile(small_profile, run, uri) == ARTIFACT_PATH
    client.set_terminated(run)
    client.create_registered_model("churn-classifier")
    version = client.create_model_version("churn-classifier", f"runs:/{run}/model", run_id=run).version
    assert load_profile(uri, "churn-classifier", str(version)) == small_profile
    other = client.create_run(experiment).info.run_id  # a version whose run never logged a profile
    bare = client.create_model_version("churn-classifier", f"runs:/{other}/model", run_id=other).version
    with pytest.raises(NotFoundError, match=f"has no {ARTIFACT_PATH}"):
        load_profile(uri, "churn-classifier", str(bare))
    with pytest.raises(NotFoundError, match="model 'churn-classifier' version '99' is not registered"):
        load_profile(uri, "churn-classifier", "99")


def test_a_profile_artifact_of_the_wrong_shape_is_refused(tmp_path: Path) -> None:
    uri, client, experiment = _registry(tmp_path)
    run = client.create_run(experiment).info.run_id
    client.log_text(run, json.dumps({"format": "churnops.reference_profile", "version": 1}), ARTIFACT_PATH)
    client.create_registered_model("m")
    version = client.create_model_version("m", f"runs:/{run}/model", run_id=run).version
    with pytest.raises(InvalidInputError, match=r"profile\.features: required key is missing"):
        load_profile(uri, "m", str(version))
