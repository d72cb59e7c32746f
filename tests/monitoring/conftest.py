"""Fixtures for the monitoring statistics: generated customers with and without drift, and small synthetic frames."""

from __future__ import annotations

import pytest

from churnops.monitoring.profile import ReferenceProfile, build_profile
from tests.monitoring.drift_data import CATEGORICAL, NUMERIC, Generated, SmallFrame, generated_features, pseudo_scores, small_frame


@pytest.fixture(scope="session")
def generated() -> Generated:
    """A reference of 6,000 customers; windows of 3,000 other customers, without and with covariate drift."""
    reference = generated_features(6_000, seed=11)
    profile = build_profile(reference, pseudo_scores(reference), NUMERIC, CATEGORICAL)
    return Generated(reference, profile, generated_features(3_000, seed=12), generated_features(3_000, seed=12, preset="covariate"))


@pytest.fixture(scope="session")
def small_profile() -> ReferenceProfile:
    """Three numeric features (continuous, a count, a nullable rating) and one categorical, 4,000 rows."""
    return build_profile(*small_frame(4_000, seed=1), ["amount", "visits", "rating"], ["plan"])


@pytest.fixture(name="make_small")
def make_small_fixture() -> SmallFrame:
    """``make_small(n, seed, shift=0.0)``: a frame like ``small_profile``'s reference; ``shift`` moves every feature and the score."""
    return small_frame
