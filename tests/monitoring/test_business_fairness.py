"""Business figures and fairness gaps with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from churnops.errors import InvalidInputError
from churnops.monitoring.business import CampaignConfig, business_report, campaign_value, contacted, net_promoter_score
from churnops.monitoring.fairness import FairnessConfig, fairness_report, segment_fairness
from churnops.monitoring.performance import LABEL


def log_rows() -> pd.DataFrame:
    """Six logged predictions of one version: scores, bands, revenue, satisfaction, two segments."""
    return pd.DataFrame(
        {
            "time": pd.Timestamp("2026-05-01", tz="UTC"),
            "model_version": "7",
            "segment": ["smb", "smb", "smb", "enterprise", "enterprise", "enterprise"],
            "score": [0.8, 0.4, 0.1, 0.6, 0.2, 0.05],
            "risk_band": ["high", "medium", "low", "high", "medium", "low"],
            "mrr": [100.0, 200.0, 300.0, 1_000.0, np.nan, 500.0],
            "csat_mean_90d": [2.0, 4.0, np.nan, 3.0, 5.0, 4.5],
            "nps_last": [3.0, 9.0, 10.0, np.nan, 7.0, 6.0],
        }
    )


def test_contact_capacity_keeps_the_highest_scores() -> None:
    p = np.array([0.9, 0.2, 0.7, 0.8, 0.6])
    assert contacted(p, 0.5, 1.0).tolist() == [True, False, True, True, True]
    assert contacted(p, 0.5, 0.4).tolist() == [True, False, False, True, False]  # capacity 2 of 5


def test_campaign_value_expected_and_measured() -> None:
    cfg = CampaignConfig(contact_cost=10.0, save_rate=0.5, months_saved=2.0, max_contact_share=1.0)
    p, revenue = np.array([0.8, 0.6, 0.1]), np.array([100.0, 50.0, 400.0])
    expected = campaign_value(p, revenue, 0.5, cfg)
    # contacted: the first two; saved = 0.5 x 2 x (0.8 x 100 + 0.6 x 50) = 110; cost 20
    assert expected == pytest.approx({"contacted": 2, "campaign_cost": 20.0, "saved_revenue": 110.0, "net_savings": 90.0, "roi": 4.5})
    measured = campaign_value(p, revenue, 0.5, cfg, churned=np.array([0.0, 1.0, 1.0]))
    assert measured["saved_revenue"] == 50.0 and measured["roi"] == pytest.approx(1.5)
    assert campaign_value(p, revenue, 0.95, cfg)["roi"] is None  # nobody contacted: no ROI, not zero


def test_net_promoter_score() -> None:
    assert net_promoter_score(np.array([10, 9, 8, 6, 0, np.nan])) == pytest.approx(100 * (2 / 5 - 2 / 5))
    assert net_promoter_score(np.array([9.0, 10.0, 7.0])) == pytest.approx(200 / 3)
    assert net_promoter_score(np.array([np.nan])) is None


def test_business_report_by_band_and_segment() -> None:
    frame = log_rows()
    report = business_report(frame, 0.5, CampaignConfig(contact_cost=50.0, save_rate=0.5, months_saved=2.0, max_contact_share=0.5))
    assert report.get("churn_rate", "estimated", "7").value == pytest.approx(frame["score"].mean())
    measured = report.get("churn_rate", "measured", "7")
    assert measured.value is None and measured.note == "no outcome has arrived yet"
    # 0.8 x 100 + 0.4 x 200 + 0.1 x 300 + 0.6 x 1000 + 0.05 x 500; the row without revenue is left out
    all_risk = report.get("revenue_at_risk", "estimated", "7")
    assert all_risk.value == pytest.approx(815.0) and all_risk.rows == 5
    assert report.get("revenue_at_risk", "estimated", "7", band="high").value == pytest.approx(680.0)
    assert report.get("revenue_at_risk", "estimated", "7", "smb", "medium").value == pytest.approx(80.0)
    assert report.get("revenue_at_risk", "estimated", "7", "enterprise", "medium").value is None  # its only row lacks revenue
    assert report.get("csat", "measured", "7", band="high").value == pytest.approx(2.5)
    assert report.get("nps", "measured", "7", band="low").value == pytest.approx(0.0)  # one promoter (10), one detractor (6)
    assert report.get("customers", "measured", "7", "smb", "low").value == 1
    # capacity 2 of 5 rows with revenue: 0.8 and 0.6 are contacted; saved 0.5 x 2 x (80 + 600) = 680, cost 100
    assert report.get("net_savings", "estimated", "7").value == pytest.approx(580.0)
    assert report.get("roi", "estimated", "7").value == pytest.approx(5.8)


def test_measured_business_figures_use_arrived_outcomes() -> None:
    frame = log_rows().assign(**{LABEL: [1.0, 0.0, np.nan, 0.0, 1.0, np.nan]})
    report = business_report(frame, 0.5, CampaignConfig(max_contact_share=1.0), by_segment=False)
    churn = report.get("churn_rate", "measured", "7")
    assert churn.value == pytest.approx(0.5) and churn.rows == 4
    assert report.get("saved_revenue", "measured", "7").value == pytest.approx(0.25 * 6 * 100.0)  # one contacted churner


def test_business_report_needs_its_columns() -> None:
    with pytest.raises(InvalidInputError, match=r"predictions: required columns are missing: \['mrr'\]"):
        business_report(log_rows().drop(columns="mrr"), 0.5)
    with pytest.raises(InvalidInputError, match=r"campaign\.save_rate"):
        CampaignConfig(save_rate=2)


def test_fairness_gaps_by_hand() -> None:
    scores = np.array([0.9, 0.8, 0.2, 0.1] * 10 + [0.9, 0.2, 0.2, 0.1] * 10)
    segments = np.array(["a"] * 40 + ["b"] * 40)
    labels = np.array([1, 0, 1, 0] * 10 + [1, 1, 0, 0] * 10)
    live = segment_fairness(scores, segments, 0.5, FairnessConfig(min_churners=5))
    assert live.positive_rate_gap == pytest.approx(0.5 - 0.25) and live.recall_gap is None
    assert live.population == "predictions" and live.breached == ()
    done = segment_fairness(scores, segments, 0.5, FairnessConfig(max_gap=0.25, min_churners=5), labels)
    # recall: segment a flags 10 of its 20 churners, b flags 10 of 20
    assert done.recall_gap == pytest.approx(0.0)
    labels_b = np.array([1, 0, 1, 0] * 10 + [0, 1, 1, 0] * 10)
    skewed = segment_fairness(scores, segments, 0.5, FairnessConfig(max_gap=0.25, min_churners=5), labels_b)
    assert skewed.recall_gap == pytest.approx(0.5) and skewed.breached == ("recall_gap",)  # b flags none of its churners


def test_small_segments_are_listed_but_kept_out_of_the_gaps() -> None:
    scores = np.array([0.9] * 40 + [0.1] * 40 + [0.9] * 5)
    segments = np.array(["a"] * 40 + ["b"] * 40 + ["tiny"] * 5)
    result = segment_fairness(scores, segments, 0.5)
    assert [s.segment for s in result.segments] == ["a", "b", "tiny"]
    assert [s.in_gap for s in result.segments] == [True, True, False]
    assert result.positive_rate_gap == 1.0
    assert "left out of the gaps: ['tiny']" in result.notes[0]
    alone = segment_fairness(scores[:40], segments[:40], 0.5)
    assert alone.positive_rate_gap is None and any("fewer than two segments" in n for n in alone.notes)


def test_fairness_report_per_version_and_population() -> None:
    frame = log_rows().assign(**{LABEL: [1.0, 0.0, np.nan, 0.0, 1.0, np.nan]})
    results = fairness_report(frame, {"7": 0.5}, FairnessConfig(min_rows=1, min_churners=1))
    assert [(r.version, r.population) for r in results] == [("7", "predictions"), ("7", "labelled")]
    # labelled: smb flags its churner (0.8), enterprise misses its churner (0.2)
    assert results[1].recall_gap == 1.0 and results[1].breached == ("recall_gap",)
    with pytest.raises(InvalidInputError, match=r"fairness\.gate_metrics"):
        FairnessConfig(gate_metrics=("accuracy_gap",))
    with pytest.raises(InvalidInputError, match="labels must be 0 or 1"):
        segment_fairness(np.array([0.5]), np.array(["a"]), 0.5, labels=np.array([0.5]))
