"""Expectations of the feature tables: schema, nulls, ranges and distribution bounds per domain.

Built from the feature catalog; run with the same Great Expectations
machinery as the raw tables (``churnops.data.validation``).
"""

from __future__ import annotations

import great_expectations.expectations as gxe
from great_expectations.expectations.expectation import Expectation

from churnops.data.schema import CUSTOMER_CATEGORIES, ENTITY, TIMESTAMP
from churnops.data.validation import between, in_set, not_null
from churnops.features.catalog import RECENCY_CAP_DAYS, FeatureSpec, features_of


def _feature_bounds(spec: FeatureSpec) -> Expectation | None:
    name = spec.name
    if name.startswith(("days_since_", "inactive_streak")):
        return between(name, 0, RECENCY_CAP_DAYS)
    if name.endswith("_rate_90d") or name.endswith("_share_30d") or name == "feature_adoption_rate_30d":
        return between(name, 0, 1)
    if name.startswith("nps_") and name != "nps_responses_90d":
        return between(name, 0, 10)
    if name == "csat_mean_90d":
        return between(name, 1, 5)
    if name == "engagement_score":
        return between(name, 0, 100)
    if name in ("discount_pct",):
        return between(name, 0, 100)
    if spec.dtype != "string" and not name.endswith(("_trend_7_30", "_trend_30_90", "_slope_30d", "mrr_change_30d")):
        return between(name, 0, None)  # counts, sums, means and amounts are never negative
    return None


def feature_suite(domain: str) -> list[Expectation]:
    """Schema, nulls, ranges and distribution bounds of one feature domain."""
    specs = features_of(domain)
    exps: list[Expectation] = [
        gxe.ExpectTableColumnsToMatchSet(column_set=[ENTITY, TIMESTAMP, *(s.name for s in specs)], exact_match=True),
        *not_null([ENTITY, TIMESTAMP]),
        gxe.ExpectCompoundColumnsToBeUnique(column_list=[ENTITY, TIMESTAMP]),
    ]
    for s in specs:
        if not s.nullable:
            exps.append(gxe.ExpectColumnValuesToNotBeNull(column=s.name))
        bound = _feature_bounds(s)
        if bound is not None:
            exps.append(bound)
    exps += [in_set(c, list(v)) for c, v in CUSTOMER_CATEGORIES.items() if any(s.name == c for s in specs)]
    # Distribution bounds: a healthy population never averages outside these.
    distribution = {
        "seat_utilization_30d": (0.05, 0.95),
        "failed_payment_rate_90d": (0.0, 0.3),
        "tickets_per_seat_90d": (0.0, 2.0),
        "engagement_score": (20.0, 90.0),
    }
    exps += [
        gxe.ExpectColumnMeanToBeBetween(column=c, min_value=lo, max_value=hi)
        for c, (lo, hi) in distribution.items()
        if any(s.name == c for s in specs)
    ]
    return exps
