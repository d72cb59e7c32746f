"""The window job's reports: JSON with every statistic, self-contained HTML, the gauges, and Evidently's page."""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from churnops.monitoring.business import business_report
from churnops.monitoring.drift import BinnedStatistics, DriftPolicy, DriftResult, Layout, WindowCounts, count_frame
from churnops.monitoring.fairness import FairnessConfig, fairness_report
from churnops.monitoring.performance import join_labels, performance_report
from churnops.monitoring.profile import CategoricalProfile, NumericProfile, ReferenceProfile, bin_counts
from churnops.reports.drift import WindowInfo, bin_labels, outcome_families, reference_sample, run_window_job
from churnops_contract import metric_names as m
from tests.monitoring.drift_data import CATEGORICAL, NUMERIC, Generated, SmallFrame, pseudo_scores


def test_window_job_writes_every_report(tmp_path: Path, generated: Generated) -> None:
    window = generated.covariate[[*NUMERIC, *CATEGORICAL]]
    info = WindowInfo("churn-classifier", "7", "2026-06-01T00:00:00+00:00", "2026-06-02T00:00:00+00:00")
    out = run_window_job(
        generated.profile, window, pseudo_scores(generated.covariate), tmp_path / "drift", info, evidently=False, max_plots=12
    )
    assert out.result.drift_detected is True

    doc = json.loads(out.json_path.read_text())
    assert doc["format"] == "churnops.drift_report" and doc["model_version"] == "7" and doc["window"]["rows"] == len(window)
    assert doc["drift_detected"] is True and doc["reasons"] == list(out.result.reasons)
    assert [f["feature"] for f in doc["features"]] == list(generated.profile.names)
    seat = next(f for f in doc["features"] if f["feature"] == "seat_utilization_30d")
    assert seat["drifted"] and "psi" in seat["reason"] and seat["ks_basis"] == "raw"
    assert sum(seat["bins"]["window_counts"]) == seat["values"]
    assert len(seat["bins"]["labels"]) == len(seat["bins"]["reference"]) == len(seat["bins"]["window"])
    assert sorted(doc["drifted_features"]) == sorted(f["feature"] for f in doc["features"] if f["drifted"])

    page = out.html_path.read_text()
    assert "Drift detected" in page and "seat_utilization_30d" in page
    images = re.findall(r'<img alt="drift plot" src="data:image/png;base64,([^"]+)"', page)
    assert len(images) == 13  # the score and the twelve most drifted features
    assert f"{len(generated.profile.features) - 12} more features are in the table" in page
    assert base64.b64decode(images[0])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"(src|href)=\"(https?:|//)", page)  # self-contained

    families = {f.name: f for f in text_string_to_metric_families(out.metrics_path.read_text())}
    assert set(families) >= {m.DRIFT_SCORE, m.DRIFT_PVALUE, m.DRIFT_DETECTED, m.DRIFTED_FEATURES_SHARE, m.SCORE_DRIFT, m.FEATURE_QUALITY}
    assert families[m.DRIFT_DETECTED].samples[0].value == 1.0
    assert families[m.DRIFT_WINDOW_SIZE].samples[0].labels == {"model": "churn-classifier", "version": "7"}
    assert out.evidently_path is None


def test_every_feature_is_plotted_and_evidently_writes_its_page(
    tmp_path: Path, small_profile: ReferenceProfile, make_small: SmallFrame
) -> None:
    frame, scores = make_small(800, seed=42, shift=0.5)
    out = run_window_job(small_profile, frame, scores, tmp_path, WindowInfo("churn-classifier", "8"))
    page = out.html_path.read_text()
    assert len(re.findall(r'<img alt="drift plot"', page)) == len(small_profile.features) + 1  # every feature and the score
    assert out.evidently_path is not None and out.evidently_path.parent == tmp_path
    evidently_page = out.evidently_path.read_text()
    assert all(name in evidently_page for name in small_profile.names) and len(evidently_page) > 10_000


def test_reference_sample_has_the_profile_distribution(generated: Generated) -> None:
    profile = generated.profile
    sample = reference_sample(profile, rows=5_000)
    assert list(sample.columns) == list(profile.names) and len(sample) == 5_000
    for f in profile.features:
        column = sample[f.name]
        assert column.isna().mean() == pytest.approx(f.missing_rate, abs=1 / 5_000)
        if isinstance(f, NumericProfile):
            shares = bin_counts(np.sort(column.dropna().to_numpy(float)), f.edges) / column.notna().sum()
            np.testing.assert_allclose(shares, f.proportions, atol=0.01, err_msg=f.name)
        else:
            assert isinstance(f, CategoricalProfile)
            category_shares = column.value_counts(normalize=True).reindex(list(f.categories), fill_value=0).to_numpy(dtype=float)
            np.testing.assert_allclose(category_shares, f.proportions[:-1], atol=1 / 5_000, err_msg=f.name)


def test_bin_labels_read_as_intervals(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    visits = small_profile.feature("visits")
    assert isinstance(visits, NumericProfile)
    labels = bin_labels(visits)
    assert labels[0] == f"<= {visits.edges[0]:.4g}" and labels[-1] == f"> {visits.edges[-1]:.4g}" and len(labels) == visits.n_bins
    assert bin_labels(small_profile.feature("plan")) == ["basic", "pro", "team", "(unseen)"]
    frame, scores = make_small(300, seed=41)
    counts = count_frame(Layout.of(small_profile), frame, scores)
    assert counts.bins[1, : visits.n_bins].sum() == 300


class Fixed(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def test_outcome_figures_become_contract_gauges() -> None:
    t0 = pd.Timestamp("2026-05-01", tz="UTC")
    log = pd.DataFrame(
        {
            "customer_id": [1, 2, 3, 4, 5, 6, 7],
            "time": t0,
            "model_version": "7",
            "segment": ["smb", "smb", "smb", "enterprise", "enterprise", "enterprise", "mid_market"],  # mid_market: no outcome yet
            "score": [0.8, 0.4, 0.1, 0.6, 0.2, 0.05, 0.3],
            "risk_band": ["high", "medium", "low", "high", "medium", "low", "medium"],
            "mrr": [100.0, 200.0, 300.0, 1_000.0, 50.0, 500.0, 80.0],
            "csat_mean_90d": [2.0, 4.0, np.nan, 3.0, 5.0, 4.5, 4.0],
            "nps_last": [3.0, 9.0, 10.0, np.nan, 7.0, 6.0, 8.0],
        }
    )
    labels = pd.DataFrame({"customer_id": [1, 2, 4, 5], "event_timestamp": t0 - pd.Timedelta(days=1), "churned_30d": [1, 0, 0, 1]})
    joined = join_labels(log, labels).frame
    perf = performance_report(log, labels, 0.5)
    biz = business_report(joined, 0.5)
    fair = fairness_report(joined, 0.5, FairnessConfig(min_rows=1, min_churners=1))
    registry = CollectorRegistry()
    registry.register(Fixed(outcome_families("churn-classifier", perf, biz, fair)))
    got = {f.name: f.samples for f in text_string_to_metric_families(generate_latest(registry).decode())}
    auc = [s for s in got[m.PERFORMANCE] if s.labels["metric"] == "auc" and s.labels["segment"] == "all"]
    assert {s.labels["source"]: s.value for s in auc} == {
        "measured": pytest.approx(perf.get("auc", "measured", "7").value),
        "estimated": pytest.approx(perf.get("auc", "estimated", "7").value),
    }
    exported = {(s.labels["version"], s.labels["segment"], s.labels["metric"], s.labels["source"]) for s in got[m.PERFORMANCE]}
    known = {(f.version, f.segment, f.metric, f.source) for f in perf.figures if f.value is not None and f.metric in m.PERFORMANCE_METRICS}
    assert exported == known  # a figure without a value has no sample
    assert len(known) < len([f for f in perf.figures if f.metric in m.PERFORMANCE_METRICS])
    assert ("7", "mid_market", "auc", "measured") not in exported and ("7", "mid_market", "auc", "estimated") in exported
    assert got[m.LABEL_COVERAGE][0].value == pytest.approx(4 / 7)
    assert {(s.labels["segment"], s.labels["source"]) for s in got[m.CHURN_RATE]} >= {("all", "measured"), ("all", "estimated")}
    assert {s.labels["band"] for s in got[m.REVENUE_AT_RISK]} == {"all", "high", "medium", "low"}
    assert {s.labels["metric"] for s in got[m.FAIRNESS_GAP]} == {"positive_rate_gap", "recall_gap"}
    assert {s.labels["metric"] for s in got[m.SATISFACTION]} == {"csat", "nps"}
    assert m.EXPECTED_SAVINGS in got and m.CAMPAIGN_ROI in got


class StrictDetector:
    """Another detector behind the same interface: the default statistics under a policy that never alerts."""

    def __init__(self) -> None:
        self.calls = 0

    def detect(
        self, layout: Layout, frame: pd.DataFrame, scores: np.ndarray | Sequence[float], features: Sequence[str] | None, policy: DriftPolicy
    ) -> tuple[WindowCounts, DriftResult]:
        self.calls += 1
        return BinnedStatistics().detect(layout, frame, scores, features, replace(policy, drifted_share=1.0, score_psi_floor=100.0))


def test_the_window_job_reports_what_its_detector_decides(tmp_path: Path, small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(800, seed=43, shift=1.0)
    default = run_window_job(small_profile, frame, scores, tmp_path / "default", WindowInfo("m", "1"), evidently=False)
    detector = StrictDetector()
    strict = run_window_job(small_profile, frame, scores, tmp_path / "strict", WindowInfo("m", "1"), evidently=False, detector=detector)
    assert default.result.drift_detected is True
    assert detector.calls == 1 and strict.result.drift_detected is False
    assert json.loads(strict.json_path.read_text())["drift_detected"] is False
