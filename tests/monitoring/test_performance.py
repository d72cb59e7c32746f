"""Delayed labels joined by customer and time, measured performance, and CBPE estimates with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, roc_auc_score

from churnops.errors import InvalidInputError
from churnops.monitoring.performance import (
    LABEL,
    calibration_check,
    estimated_auc,
    estimated_average_precision,
    estimated_metrics,
    expected_calibration_error,
    expected_confusion,
    join_labels,
    measured_metrics,
    performance_report,
)

T0 = pd.Timestamp("2026-03-01", tz="UTC")


def day(d: float) -> pd.Timestamp:
    return T0 + pd.Timedelta(days=d)


def labels_of(rows: list[tuple[int, float, int]]) -> pd.DataFrame:
    return pd.DataFrame(
        {"customer_id": [r[0] for r in rows], "event_timestamp": [day(r[1]) for r in rows], "churned_30d": [r[2] for r in rows]}
    )


def predictions_of(rows: list[tuple[int | None, float, float]], version: str = "7", segment: str = "smb") -> pd.DataFrame:
    return pd.DataFrame(
        {
            "customer_id": pd.array([r[0] for r in rows], dtype="Int64"),
            "time": [day(r[1]) for r in rows],
            "score": [r[2] for r in rows],
            "model_version": version,
            "segment": segment,
        }
    )


# --- the join ------------------------------------------------------------------------------------------


def test_a_prediction_takes_the_outcome_of_the_window_that_contains_it() -> None:
    labels = labels_of([(1, 0, 1), (1, 30, 0), (2, 0, 0), (3, 10, 1), (3, 20, 0)])
    preds = predictions_of(
        [
            (1, 0, 0.9),  # at the window start: inside
            (1, 29.9, 0.8),  # just before the end: still the first window
            (1, 30, 0.2),  # at day 30 the second window begins
            (2, 30, 0.1),  # the only window ended at day 30 (half-open): pending
            (2, -1, 0.3),  # before any window: pending
            (3, 25, 0.4),  # two windows contain day 25: the later one (day 20)
            (None, 5, 0.5),  # no customer id: never labelled
        ]
    )
    joined = join_labels(preds, labels)
    got = joined.frame[LABEL].tolist()
    assert got[:3] == [1.0, 1.0, 0.0]
    assert np.isnan(got[3]) and np.isnan(got[4]) and np.isnan(got[6])
    assert got[5] == 0.0
    s = joined.summary
    assert (s.predictions, s.labelled, s.pending, s.anonymous) == (7, 4, 2, 1)
    assert (s.labels, s.unknown_customer_labels, s.unmatched_labels) == (5, 0, 2)  # (2, day 0) and (3, day 10) matched nothing


def test_labels_of_unknown_customers_are_reported_not_dropped() -> None:
    joined = join_labels(predictions_of([(1, 3, 0.5)]), labels_of([(1, 0, 0), (77, 0, 1), (78, 0, 0), (77, 30, 1)]))
    s = joined.summary
    assert s.unknown_customer_labels == 3 and s.unknown_customers == (77, 78)
    assert any("3 label(s) for customers no prediction mentions (first: 77, 78)" in msg for msg in s.messages)


def test_bad_labels_name_the_problem() -> None:
    preds = predictions_of([(1, 3, 0.5)])
    with pytest.raises(InvalidInputError, match=r"labels\.churned_30d\[1\]: outcomes must be 0 or 1, got 2"):
        join_labels(preds, labels_of([(1, 0, 0), (2, 0, 2)]))
    with pytest.raises(InvalidInputError, match="customer 1 has conflicting outcomes"):
        join_labels(preds, labels_of([(1, 0, 0), (1, 0, 1)]))
    with pytest.raises(InvalidInputError, match=r"labels: required columns are missing: \['churned_30d'\]"):
        join_labels(preds, labels_of([(1, 0, 0)]).drop(columns="churned_30d"))
    with pytest.raises(InvalidInputError, match=r"predictions\.time: 1 missing timestamps"):
        join_labels(preds.assign(time=pd.Series([None], dtype="datetime64[ns, UTC]")), labels_of([(1, 0, 0)]))
    repeated = join_labels(preds, labels_of([(1, 0, 1), (1, 0, 1)]))
    assert repeated.summary.duplicate_labels == 1 and repeated.frame[LABEL].tolist() == [1.0]


def test_late_labels_give_the_right_auc_and_pending_is_never_negative() -> None:
    # six customers scored on day 5; outcomes of four have arrived (windows from day 0)
    preds = predictions_of([(1, 5, 0.9), (2, 5, 0.8), (3, 5, 0.3), (4, 5, 0.6), (5, 5, 0.95), (6, 5, 0.05)])
    labels = labels_of([(1, 0, 1), (2, 0, 0), (3, 0, 0), (4, 0, 1)])
    report = performance_report(preds, labels, 0.5, by_segment=False)
    auc = report.get("auc", "measured", "7")
    # labelled: churners score 0.9, 0.6; stayers 0.8, 0.3; pairs won: (0.9>0.8), (0.9>0.3), (0.6>0.3) = 3 of 4
    assert auc.value == pytest.approx(0.75) and auc.rows == 4
    assert report.get("recall", "measured", "7").value == 1.0
    assert report.get("precision", "measured", "7").value == pytest.approx(2 / 3)
    cov = report.coverage[0]
    assert (cov.predictions, cov.labelled, cov.pending) == (6, 4, 2)
    assert cov.coverage == pytest.approx(4 / 6)
    # had the two pending predictions been taken as stayers, the AUC would differ
    assert roc_auc_score([1, 0, 0, 1, 0, 0], [0.9, 0.8, 0.3, 0.6, 0.95, 0.05]) != pytest.approx(0.75)
    # the estimate covers every prediction and says so
    est = report.get("auc", "estimated", "7")
    assert est.rows == 6 and est.value == pytest.approx(estimated_auc(preds["score"].to_numpy()))


def test_report_per_version_segment_and_period() -> None:
    a = predictions_of([(1, 1, 0.9), (2, 1, 0.1), (3, 9, 0.7), (4, 9, 0.2)], version="7", segment="smb")
    b = predictions_of([(5, 1, 0.6), (6, 1, 0.4)], version="8", segment="enterprise")
    labels = labels_of([(1, 0, 1), (2, 0, 0), (3, 0, 0), (4, 0, 1), (5, 0, 1), (6, 0, 0)])
    report = performance_report(pd.concat([a, b], ignore_index=True), labels, {"7": 0.5, "8": 0.5}, period="7D")
    assert {(c.version, c.segment) for c in report.coverage} == {("7", "all"), ("7", "smb"), ("8", "all"), ("8", "enterprise")}
    periods = sorted({c.period for c in report.coverage if c.version == "7" and c.period is not None})
    assert len(periods) == 2  # days 1 and 9 fall into different 7-day periods
    first = report.get("auc", "measured", "7", "smb", periods[0])
    assert first.value == 1.0 and first.rows == 2
    assert report.get("auc", "measured", "7", "smb", periods[1]).value == 0.0
    with pytest.raises(InvalidInputError, match=r"thresholds: no threshold for model version '8'"):
        performance_report(pd.concat([a, b]), labels, {"7": 0.5})


def test_missing_values_say_why() -> None:
    report = performance_report(predictions_of([(1, 1, 0.9), (2, 1, 0.2)]), labels_of([(1, 0, 1), (2, 0, 1)]), 0.5, by_segment=False)
    auc = report.get("auc", "measured", "7")
    assert auc.value is None and auc.note == "needs both outcomes (2 churned, 0 stayed)"
    assert report.get("precision", "measured", "7").value == 1.0
    nothing = performance_report(predictions_of([(1, 1, 0.9)]), None, 0.5, by_segment=False)
    assert nothing.get("auc", "measured", "7").note == "no labelled predictions"
    assert nothing.coverage[0].coverage == 0.0
    with pytest.raises(InvalidInputError, match=r"predictions\.score\[0\]: 1 score\(s\) are NaN"):
        performance_report(predictions_of([(1, 1, float("nan"))]), None, 0.5)


def test_measured_metrics_known_values() -> None:
    y = np.array([1, 0, 1, 0, 0])
    p = np.array([0.8, 0.6, 0.4, 0.2, 0.1])
    got = measured_metrics(y, p, 0.5)
    assert got["auc"].value == pytest.approx(5 / 6)  # churners beat 3 + 2 of the 6 pairs
    assert got["precision"].value == 0.5 and got["recall"].value == 0.5
    assert got["brier"].value == pytest.approx(np.mean((p - y) ** 2))
    assert got["pr_auc"].value == pytest.approx(average_precision_score(y, p))
    # bins [0.8, 0.9): |1 - 0.8|; [0.6, 0.7): |0 - 0.6|; [0.4, 0.5): |1 - 0.4|; [0.2, 0.3): |0 - 0.2|; [0.1, 0.2): |0 - 0.1|
    assert got["ece"].value == pytest.approx((0.2 + 0.6 + 0.6 + 0.2 + 0.1) / 5)
    assert expected_calibration_error(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0


# --- CBPE ---------------------------------------------------------------------------------------------------


def test_expected_confusion_matrix_by_hand() -> None:
    cm = expected_confusion(np.array([0.9, 0.6, 0.3, 0.1]), threshold=0.5)
    assert cm == pytest.approx({"tp": 1.5, "fp": 0.5, "fn": 0.4, "tn": 1.6})
    est = estimated_metrics(np.array([0.9, 0.6, 0.3, 0.1]), 0.5)
    assert est["precision"].value == pytest.approx(0.75) and est["recall"].value == pytest.approx(1.5 / 1.9)
    assert est["brier"].value == pytest.approx((0.09 + 0.24 + 0.21 + 0.09) / 4)


def test_estimated_auc_by_hand() -> None:
    # p = (0.9, 0.2): sum p = 1.1, sum (1 - p) = 0.9; pair 0.9 over 0.2 weighs 0.9 x 0.8 = 0.72,
    # each row with itself half of p (1 - p): (0.09 + 0.16) / 2; AUC = 0.845 / 0.99
    assert estimated_auc(np.array([0.9, 0.2])) == pytest.approx(0.845 / 0.99)
    assert estimated_auc(np.array([0.5, 0.5, 0.5])) == pytest.approx(0.5)  # one score: no ranking at all
    assert estimated_auc(np.array([1.0, 1.0])) is None  # no expected stayer
    # average precision: recall steps 0.9/1.1 at precision 0.9, then 0.2/1.1 at precision 1.1/2
    assert estimated_average_precision(np.array([0.9, 0.2])) == pytest.approx(0.9 / 1.1 * 0.9 + 0.2 / 1.1 * 0.55)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from([0.05, 0.1, 0.3, 0.5, 0.7, 0.95]) | st.floats(0.01, 0.99), min_size=2, max_size=30))
def test_estimated_auc_equals_the_pairwise_formula(ps: list[float]) -> None:
    p = np.array(ps)
    w = p[:, None] * (1 - p[None, :])
    above = (p[:, None] > p[None, :]) + 0.5 * (p[:, None] == p[None, :])
    assert estimated_auc(p) == pytest.approx((w * above).sum() / (p.sum() * (1 - p).sum()), rel=1e-9)


def test_estimates_match_labels_drawn_from_the_probabilities() -> None:
    rng = np.random.default_rng(3)
    p = rng.beta(1.2, 6, 20_000)
    draws = [rng.random(p.size) < p for _ in range(40)]
    measured = {
        k: np.mean([measured_metrics(y.astype(float), p, 0.3)[k].value for y in draws])
        for k in ("auc", "pr_auc", "precision", "recall", "brier")
    }
    estimated = {k: v.value for k, v in estimated_metrics(p, 0.3).items()}
    assert estimated == pytest.approx(measured, abs=0.005)


def test_calibration_check_by_hand_and_by_simulation() -> None:
    check = calibration_check(np.array([1.0, 1.0, 1.0, 0.0]), np.full(4, 0.5), min_labelled=1)
    # observed 3, expected 2, variance 4 x 0.25 = 1: z = 1, two-sided p = 0.3173
    assert (check.observed, check.expected, check.ratio, check.z) == (3.0, 2.0, 1.5, 1.0)
    assert check.p_value == pytest.approx(0.3173105, abs=1e-6) and not check.breached
    assert calibration_check(np.ones(10), np.full(10, 0.5)).reason == "10 labelled predictions, 200 needed"
    rng = np.random.default_rng(4)
    p = rng.beta(1.2, 6, 5_000)
    assert not any(calibration_check((rng.random(p.size) < p).astype(float), p).breached for _ in range(50))
    halved = calibration_check((rng.random(p.size) < p / 2).astype(float), p)
    assert halved.breached and halved.ratio == pytest.approx(0.5, abs=0.05)
    assert "no longer match the scores" in halved.reason
