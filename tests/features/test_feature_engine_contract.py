"""The feature engine on raw tables the generator did not write: hand-made events, hand-computed features.

Two customers, 120 days of history from 2026-01-01, snapshots on days 90 and 120.
Customer 1 is active; customer 2 churned on day 70 and must not appear at either snapshot.
"""

from __future__ import annotations

import datetime as dt
import math

import numpy as np
import pandas as pd
import pytest

from churnops.data.schema import TABLES, Calendar, SchemaError
from churnops.features.catalog import FEATURES
from churnops.features.engine import compute_block_features

CAL = Calendar(start_date=dt.date(2026, 1, 1), history_days=120)
DAY0 = pd.Timestamp("2026-01-01", tz="UTC")


def day(d: float) -> pd.Timestamp:
    return DAY0 + pd.Timedelta(days=d)


def customers() -> pd.DataFrame:
    row = {
        "signup_date": day(-100),
        "segment": "smb",
        "plan": "growth",
        "region": "emea",
        "industry": "retail",
        "contract_type": "annual",
        "payment_method": "card",
        "acquisition_channel": "partner",
        "company_size": 50,
        "seats_purchased": 5,
        "list_price_per_seat": 120.0,
        "discount_pct": 10.0,
        "mrr": 500.0,
        "auto_renew": True,
        "has_dedicated_csm": False,
        "onboarding_completed": True,
        "renewal_date": day(100),
        "contract_length_days": 365,
    }
    frame = pd.DataFrame([{"customer_id": 1, **row, "churn_date": pd.NaT}, {"customer_id": 2, **row, "churn_date": day(70)}])
    frame["churn_date"] = pd.to_datetime(frame["churn_date"], utc=True)
    return frame


def account_daily() -> pd.DataFrame:
    days = np.arange(120)
    logins = np.where((days >= 80) & (days < 90), 2, 0)
    frame = pd.DataFrame(
        {
            "customer_id": 1,
            "date": [day(int(d)) for d in days],
            "seats_purchased": 5,
            "mrr": 500.0,
            "active_users": (logins > 0).astype(np.int64),
            "logins": logins,
            "session_minutes": 10.0 * logins,
            "api_calls": np.where((days >= 85) & (days < 90), 5, 0),
            "features_used": np.select([days == 88, days == 89], [4, 2], 0),
            "reports_created": (days == 89).astype(np.int64),
        }
    )
    churned = pd.DataFrame({c: frame[c].head(70) for c in frame.columns}).assign(customer_id=2)  # only until it churned
    return pd.concat([frame, churned], ignore_index=True)


def tickets() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "ticket_id": ["t1", "t2"],
            "customer_id": [1, 1],
            "created_at": [day(60) + pd.Timedelta(hours=10), day(88) + pd.Timedelta(hours=9)],
            "resolved_at": [day(61) + pd.Timedelta(hours=10), day(95)],
            "category": ["bug", "billing"],
            "severity": ["high", "low"],
            "resolution_hours": [24.0, 159.0],
            "escalated": [True, False],
            "csat": [2.0, np.nan],
        }
    )


def invoices() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": [1, 1, 1],
            "invoice_date": [day(10), day(40), day(70)],
            "amount": [100.0, 100.0, 100.0],
            "status": ["paid", "failed", "paid"],
            "days_late": [0, 0, 3],
        }
    )


def nps() -> pd.DataFrame:
    return pd.DataFrame({"customer_id": [1], "responded_at": [day(50)], "score": [5]})


def tables() -> dict[str, pd.DataFrame]:
    return {"customers": customers(), "account_daily": account_daily(), "tickets": tickets(), "invoices": invoices(), "nps": nps()}


@pytest.fixture(scope="module")
def snapshot_90() -> dict[str, float | str]:
    out = compute_block_features(CAL, tables(), [90])
    row: dict[str, float | str] = {}
    for frame in out.values():
        assert frame["customer_id"].tolist() == [1], "a customer who churned before the snapshot is not in it"
        row.update({str(k): v for k, v in frame.drop(columns=["customer_id", "event_timestamp"]).iloc[0].items()})
    return row


# (feature, hand-computed value at day 90)
EXPECTED: list[tuple[str, float | str]] = [
    ("segment", "smb"),
    ("tenure_days", 190),
    ("is_new_customer", 0),
    ("log_company_size", math.log(50)),
    ("days_to_renewal", 10),
    ("renewal_within_30d", 1),
    ("mrr", 500.0),
    ("arr", 6000.0),
    ("price_per_seat_paid", 100.0),
    ("mrr_per_employee", 10.0),
    ("mrr_change_30d", 0.0),
    ("invoices_90d", 3),
    ("failed_payments_30d", 0),
    ("failed_payments_90d", 1),
    ("failed_payment_rate_90d", 1 / 3),
    ("days_since_last_failed_payment", 50),
    ("avg_days_late_90d", 1.5),
    ("max_days_late_90d", 3),
    ("amount_billed_90d", 300.0),
    ("amount_failed_90d", 100.0),
    ("logins_mean_7d", 2.0),
    ("logins_mean_30d", 20 / 30),
    ("logins_mean_90d", 20 / 90),
    ("logins_trend_7_30", 3.0),
    ("active_days_30d", 10),
    ("seat_utilization_30d", (10 / 30) / 5),
    ("days_since_last_login", 1),
    ("days_since_last_api_call", 1),
    ("days_since_last_report", 1),
    ("tickets_7d", 1),
    ("tickets_30d", 2),
    ("high_severity_tickets_30d", 1),
    ("open_tickets", 1),
    ("avg_resolution_hours_30d", 24.0),
    ("escalations_90d", 1),
    ("csat_mean_90d", 2.0),
    ("low_csat_90d", 1),
    ("days_since_last_ticket", 2),
    ("bug_tickets_90d", 1),
    ("billing_tickets_90d", 1),
    ("nps_last", 5.0),
    ("is_nps_detractor", 1),
    ("days_since_last_nps", 40),
    ("features_used_max_30d", 4.0),
    ("feature_adoption_rate_30d", 0.2),
    ("inactive_streak_days", 0),
]


@pytest.mark.parametrize(("feature", "expected"), EXPECTED, ids=[e[0] for e in EXPECTED])
def test_feature_equals_hand_computed_value(snapshot_90: dict[str, float | str], feature: str, expected: float | str) -> None:
    value = snapshot_90[feature]
    if isinstance(expected, str):
        assert value == expected
    else:
        assert float(value) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_every_catalog_feature_is_computed(snapshot_90: dict[str, float | str]) -> None:
    assert set(snapshot_90) == {f.name for f in FEATURES}


def test_default_snapshots_follow_the_calendar() -> None:
    out = compute_block_features(CAL, tables())
    assert sorted(out["usage"]["event_timestamp"].unique()) == [day(90), day(120)]


def test_a_missing_contract_column_names_table_and_column() -> None:
    broken = tables()
    broken["invoices"] = broken["invoices"].drop(columns=["days_late"])
    with pytest.raises(SchemaError, match=r"invoices: lacks column\(s\) \['days_late'\]"):
        compute_block_features(CAL, broken)


def test_a_wrongly_typed_column_names_it() -> None:
    broken = tables()
    broken["nps"] = broken["nps"].assign(score=["five"])
    with pytest.raises(SchemaError, match=r"nps.score: expected int64"):
        compute_block_features(CAL, broken)


def test_the_contract_lists_what_the_engine_reads() -> None:
    assert {c.name for c in TABLES["customers"]} <= set(customers().columns)
