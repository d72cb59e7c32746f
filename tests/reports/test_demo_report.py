"""The demo report on a data directory that holds the whole loop: every figure recomputed here from the records.

The story (``story.py``) deploys version 1, promotes version 2 through every
canary step, shifts the population, retrains into version 3 and rolls it
back; labels arrive for the first hours only. Each section's numbers are
compared with what this test computes on its own from the prediction log,
the labels, the registry and the rollout timeline.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from sklearn.metrics import roc_auc_score

from churnops.layout import Layout
from churnops.monitoring.drift import detect_drift
from churnops.monitoring.performance import estimated_auc
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.profile import load_profile
from churnops.reports import attributions as attr
from churnops.reports.demo import DemoSettings, build, write_demo_report
from churnops.reports.output import ReportFiles
from churnops.rollout.store import DeploymentStore
from churnops.serving.explain import CompiledModel
from churnops.training.config import BusinessConfig
from tests.reports.story import MODEL, ROUTE, Story
from tests.support import groups

pytestmark = groups.REPORT_STORY

SECTIONS = ("evaluation", "shap", "drift", "rollout", "performance", "business", "fairness")
PNG = b"\x89PNG\r\n\x1a\n"
WIDE = pd.Timestamp("2000-01-01", tz="UTC"), pd.Timestamp("2100-01-01", tz="UTC")


@pytest.fixture(scope="module")
def report(story: Story, tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    out = tmp_path_factory.mktemp("demo-report") / "demo_report.html"
    return write_demo_report(story.layout, out, DemoSettings(explain_sample=100_000))


def section_html(page: str, key: str) -> str:
    m = re.search(rf'<section id="{key}">(.*?)</section>', page, re.S)
    assert m is not None, f"no section {key}"
    return m.group(1)


def images(fragment: str) -> list[bytes]:
    return [base64.b64decode(b) for b in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', fragment)]


def sec(report: ReportFiles, key: str) -> dict[str, Any]:
    out: dict[str, Any] = report.doc["sections"][key]
    return out


def logged(story: Story, version: str) -> pd.DataFrame:
    return story.logged[story.logged["model_version"] == version]


def log_frame(story: Story, version: str) -> pd.DataFrame:
    return ParquetStore(story.layout.predictions).read_window(*WIDE, model=MODEL, version=version)


def test_every_section_is_there_with_what_it_shows_and_a_plot(report: ReportFiles) -> None:
    page = report.html.read_text()
    assert report.json.exists() and report.json.name == "demo_report.json"
    assert tuple(report.doc["sections"]) == SECTIONS
    assert report.doc["champion"] == "2" and report.doc["versions"] == ["1", "2", "3"]
    for key in SECTIONS:
        s = sec(report, key)
        assert s["status"] == "complete", (key, s["missing"])
        fragment = section_html(page, key)
        assert s["what"] in html.unescape(fragment)
        pngs = images(fragment)
        assert pngs and all(p.startswith(PNG) for p in pngs), key
    assert "http://" not in page and "https://" not in page  # self-contained: nothing to fetch


def test_roc_and_calibration_are_each_promoted_versions_evaluation(report: ReportFiles, story: Story) -> None:
    shown = sec(report, "evaluation")["versions"]
    assert [v["version"] for v in shown] == ["1", "2"]  # deployed first, then promoted; 3 was rolled back
    assert [v["champion"] for v in shown] == [False, True]
    for v in shown:
        ev = story.trained[v["version"]].evaluation
        assert ev is not None
        assert v["roc_auc"] == pytest.approx(ev.roc_auc) and v["brier"] == pytest.approx(ev.brier)
        assert v["roc"] == ev.roc and v["calibration"] == ev.calibration


def test_shap_summary_is_the_champions_exact_attribution(report: ReportFiles, story: Story) -> None:
    doc = sec(report, "shap")["attributions"]
    frame = log_frame(story, "2")
    assert (doc["source"], doc["version"], doc["rows"]) == ("explain", "2", len(logged(story, "2")))
    model = story.trained["2"].model
    values = attr.model_frame(frame, model)
    scored = CompiledModel(model).explain(values)
    assert scored.contributions is not None
    mean_abs = np.abs(scored.contributions).mean(axis=0)
    expected = sorted(zip(model.feature_names, mean_abs, strict=True), key=lambda kv: -kv[1])[:15]
    assert [f["feature"] for f in doc["features"]] == [k for k, _ in expected]
    for f, (_, value) in zip(doc["features"], expected, strict=True):
        assert f["mean_abs_contribution"] == pytest.approx(value)
        if f["kind"] == "numeric" and f["correlation"] is not None and abs(f["correlation"]) >= 0.1:
            j = model.feature_names.index(f["feature"])
            rho = stats.spearmanr(values[f["feature"]], scored.contributions[:, j], nan_policy="omit").statistic
            assert f["correlation"] == pytest.approx(rho, abs=1e-6)
            assert f["direction"] == ("higher values raise the risk" if rho > 0 else "higher values lower the risk")


def test_drift_windows_are_the_monitoring_statistic_and_show_the_shift(report: ReportFiles, story: Story) -> None:
    doc = sec(report, "drift")
    seconds = doc["window_seconds"]
    windows = doc["windows"]
    assert {w["version"] for w in windows} == {"1", "2", "3"}
    store = ParquetStore(story.layout.predictions)
    for w in windows[:2] + windows[-2:]:
        start = pd.Timestamp(w["start"])
        frame = store.read_window(start, start + pd.Timedelta(seconds=seconds), model=MODEL, version=w["version"])
        profile = load_profile(story.cfg.tracking_uri, MODEL, w["version"])
        result = detect_drift(profile, frame[list(profile.names)], frame["score"].to_numpy(), list(profile.names))
        assert w["rows"] == len(frame) and w["drifted_share"] == pytest.approx(result.drifted_share)
        assert w["score_psi"] == pytest.approx(result.score.psi) and w["detected"] == result.drift_detected
    shift = pd.Timestamp(story.drift_from, unit="s", tz="UTC")
    before = [w for w in windows if pd.Timestamp(w["end"]) <= shift and w["detected"] is not None]
    after = [w for w in windows if pd.Timestamp(w["start"]) >= shift and w["version"] == "2"]
    assert before and not any(w["detected"] for w in before)
    assert any(w["detected"] for w in after)


def test_canary_timeline_holds_the_promotion_the_rollback_and_the_retraining(report: ReportFiles, story: Story) -> None:
    (dep,) = sec(report, "rollout")["deployments"]
    timeline = DeploymentStore(story.data_dir, ROUTE).timeline()
    checks = [e for e in timeline if e["kind"] == "check"]
    assert dep["promoted"] == ["1", "2"] and dep["rolled_back"] == ["3"]
    assert [c["outcome"] for c in dep["checks"]] == [c["outcome"] for c in checks]
    assert [c["figures"] for c in dep["checks"]] == [c["figures"] for c in checks]  # every verdict with its figures
    assert {
        "Deployed",
        "CanaryStarted",
        "StepAdvanced",
        "Promoted",
        "DriftDetected",
        "RetrainingTriggered",
        "CheckFailed",
        "RolledBack",
    } <= {e["reason"] for e in dep["events"]}
    assert [w["weight"] for w in dep["weights"]][:5] == [0, 25, 50, 100, 0]
    assert dep["runs"][0]["challenger"] == "3" and dep["runs"][0]["state"] == "SUCCEEDED"
    failed = [c for c in dep["checks"] if c["outcome"] == "fail"]
    assert {c["canary"] for c in failed} == {"3"} and all(c["figures"]["score_psi"]["outcome"] == "fail" for c in failed)


def test_measured_and_estimated_performance_per_period(report: ReportFiles, story: Story) -> None:
    doc = sec(report, "performance")
    seconds = doc["period_seconds"]
    rows = story.logged.assign(period=story.logged["time"].dt.floor(f"{seconds}s"))
    outcome = dict(zip(story.labels["customer_id"], story.labels["churned_30d"], strict=True))
    measured = 0
    for p in doc["points"]:
        part = rows[(rows["model_version"] == p["version"]) & (rows["period"] == pd.Timestamp(p["start"]))]
        assert p["predictions"] == len(part)
        assert p["estimated"] == pytest.approx(estimated_auc(part["score"].to_numpy()))
        y = part["customer_id"].map(outcome)
        labelled = part[y.notna()]
        assert p["labelled"] == len(labelled)
        if p["measured"] is not None:
            measured += 1
            assert p["measured"] == pytest.approx(roc_auc_score(y[y.notna()].astype(int), labelled["score"]))
    assert measured >= 3
    assert any(p["labelled"] < p["predictions"] for p in doc["points"])  # late labels: some predictions are still pending


def test_business_impact_by_band_on_each_customers_latest_score(report: ReportFiles, story: Story) -> None:
    doc = sec(report, "business")
    latest = logged(story, "2").sort_values("time", kind="stable").drop_duplicates("customer_id", keep="last")
    cfg = BusinessConfig()
    bands = {b["band"]: b for b in doc["bands"]}
    assert doc["customers"] == len(latest)
    for band, rows in latest.groupby("risk_band"):
        b = bands[str(band)]
        at_risk = float((rows["score"] * rows["mrr"]).sum())
        saved = cfg.save_rate * cfg.months_saved * at_risk
        cost = len(rows) * cfg.contact_cost
        assert b["customers"] == len(rows) and b["revenue_at_risk"] == pytest.approx(at_risk)
        assert b["expected_net_savings"] == pytest.approx(saved - cost) and b["roi"] == pytest.approx((saved - cost) / cost)


def positive_rate_gap(rows: pd.DataFrame, threshold: float, min_rows: int = 30) -> float:
    rates = [(g["score"] >= threshold).mean() for _, g in rows.groupby("segment") if len(g) >= min_rows]
    return float(max(rates) - min(rates))


def test_fairness_at_training_and_live_against_the_gate(report: ReportFiles, story: Story) -> None:
    doc = sec(report, "fairness")
    assert doc["gate"] == 0.25 and doc["gate_metrics"] == ["recall_gap"]
    rows = {(r["version"], r["when"]): r for r in doc["rows"]}
    for v in ("1", "2"):
        ev = story.trained[v].evaluation
        assert ev is not None
        assert rows[(v, "training")]["positive_rate_gap"] == pytest.approx(ev.fairness["positive_rate_gap"])
        assert rows[(v, "training")]["recall_gap"] == pytest.approx(ev.fairness["recall_gap"])
    for v in ("1", "2", "3"):
        threshold = 0.3 if v == "3" else story.trained[v].evaluation.threshold  # type: ignore[union-attr]
        assert rows[(v, "live")]["positive_rate_gap"] == pytest.approx(positive_rate_gap(logged(story, v), threshold))


def test_a_data_directory_without_anything_names_each_missing_piece(tmp_path: Path) -> None:
    doc, page = build(Layout(tmp_path / "empty"), now=dt.datetime(2026, 5, 1, tzinfo=dt.UTC))
    assert doc["generated_at"] == "2026-05-01T00:00:00+00:00"
    assert "<img" not in page
    for key in SECTIONS:
        s = doc["sections"][key]
        assert s["status"] == "missing" and s["missing"], key
    assert "no champion in the registry" in doc["sections"]["evaluation"]["missing"][0]
    assert "no rollout recorded under" in doc["sections"]["rollout"]["missing"][-1]
    assert "run `churnops rollout start` first" in page
    assert "prediction log" in doc["sections"]["drift"]["missing"][0] and "is empty" in doc["sections"]["drift"]["missing"][0]


def test_a_deployment_without_decisions_is_named_not_drawn(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path / "data", "trial")
    with store.locked():
        store.create_or_update({"model": {"version": "1"}}, defaults={"featureService": "churn_v1"}, now=0.0)
    doc, page = build(Layout(tmp_path / "data"))
    rollout = doc["sections"]["rollout"]
    assert rollout["status"] == "missing" and rollout["deployments"] == []
    assert rollout["missing"] == ["deployment 'trial' has taken no decision yet: run `churnops rollout run --name trial`"]
    assert "<img" not in section_html(page, "rollout")


@pytest.fixture
def copied(story: Story, tmp_path: Path) -> Layout:
    shutil.copytree(story.data_dir, tmp_path / "data")
    return Layout(tmp_path / "data")


def test_without_labels_performance_is_estimated_and_says_so(copied: Layout) -> None:
    shutil.rmtree(copied.data_dir / "labels")
    doc, page = build(copied)
    perf = doc["sections"]["performance"]
    assert perf["status"] == "partial"
    assert any("no outcome has arrived yet" in m for m in perf["missing"])
    assert all(p["measured"] is None and p["estimated"] is not None for p in perf["points"])
    assert "Missing: delayed labels" in page


def test_without_a_prediction_log_the_shap_summary_comes_from_the_batch_reasons(copied: Layout) -> None:
    shutil.rmtree(copied.predictions)
    doc, _ = build(copied)
    shap = doc["sections"]["shap"]
    assert shap["attributions"]["source"] == "batch_reasons"
    assert shap["attributions"]["version"] == "2"  # named by the batch audit record that wrote the scores
    scores = pd.read_parquet(copied.reports / "scores.parquet")
    long = pd.concat([scores[[f"reason_{i}_feature", f"reason_{i}_contribution"]].set_axis(["feature", "c"], axis=1) for i in range(1, 6)])
    expected = long.groupby("feature")["c"].apply(lambda c: c.abs().sum() / len(scores)).sort_values(ascending=False)
    got = {f["feature"]: f["mean_abs_contribution"] for f in shap["attributions"]["features"]}
    for feature, value in expected.head(15).items():
        assert got[str(feature)] == pytest.approx(value)
    assert shap["status"] == "partial" and "no logged prediction of the champion" in shap["missing"][0]
    for key in ("drift", "performance", "business"):
        assert doc["sections"][key]["status"] == "missing"
    assert doc["sections"]["rollout"]["status"] == "complete"  # the rollout's own record does not need the log
