"""Stage 5 of the demo in pieces: how its challenger is chosen, and how its AUC case is recorded, said and reported.

The whole stage runs in ``tests/test_demo.py``; here each piece gets the
cases a run rarely shows (no champion, nothing worse enough, a check without
figures) on small hand-made timelines.
"""

from __future__ import annotations

import html
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from churnops.demo import worse
from churnops.demo.story import AucWatch, Timeline, calibration_breached, first_calibration
from churnops.errors import InvalidInputError
from churnops.reports.demo import auc_case_row, auc_cases, auc_cases_html
from churnops.rollout.outcomes import VersionOutcomes
from churnops.rollout.store import DeploymentStore
from churnops.training.dataset import churn_spec
from churnops_contract.policy import RetrainingPolicy


def check(t: float, outcome: str, auc: dict[str, Any] | None, reason: str = "", canary: str = "5", weight: int = 50) -> dict[str, Any]:
    figures: dict[str, Any] = {"outcome": outcome, "score_psi": {"outcome": "pass", "canary": 0.02, "stable": None, "limit": 0.5}}
    if auc is not None:
        figures["auc_delta"] = {"limit": -0.03, "evidence": 0.0, **auc}
    return {
        "time": t,
        "kind": "check",
        "outcome": outcome,
        "canary": canary,
        "stable": "3",
        "weight": weight,
        "reason": reason,
        "figures": figures,
    }


FEW = "auc_delta undecided: fewer than 8000 delayed labels per model; requireAUC holds the promotion"
CHECKS = [
    check(1.0, "wait", None, "18 of 400 canary requests", weight=25),
    check(3.0, "pass", {"outcome": "undecided", "canary": 0.84, "stable": 0.87}, f"all judged metrics within limits; {FEW}", weight=25),
    check(5.0, "pass", {"outcome": "undecided", "canary": 0.83, "stable": 0.87, "evidence": 0.4}, "all judged metrics within limits"),
    check(7.0, "fail", {"outcome": "fail", "canary": 0.831, "stable": 0.871, "evidence": 1.2}, "auc_delta fail: AUC canary 0.8310"),
]


def test_without_leaves_out_the_named_features_and_refuses_unknown_ones() -> None:
    spec = churn_spec()
    fewer = worse.without(spec, ("days_to_renewal", "renewal_within_30d"))
    assert set(spec.features) - set(fewer.features) == {"days_to_renewal", "renewal_within_30d"}
    assert fewer.target_column == spec.target_column and fewer.segment_column == spec.segment_column
    with pytest.raises(InvalidInputError, match="not_a_feature"):
        worse.without(spec, ("not_a_feature",))


def test_the_ladder_stops_at_the_first_candidate_worse_enough() -> None:
    deltas = {worse.LADDER[0]: -0.012, worse.LADDER[1]: -0.034, worse.LADDER[2]: -0.09}
    asked: list[tuple[str, ...]] = []

    def measure(left_out: tuple[str, ...]) -> worse.Probe:
        asked.append(left_out)
        return worse.Probe(left_out, 0.85 + deltas[left_out], deltas[left_out])

    chosen, probes = worse.choose(worse.LADDER, measure, -0.03)
    assert chosen.left_out == worse.LADDER[1]
    assert asked == list(worse.LADDER[:2])  # the third is never trained
    assert [p.delta for p in probes] == [-0.012, -0.034]


def test_the_ladder_takes_its_last_step_when_none_is_worse_enough_and_the_first_without_a_champion() -> None:
    chosen, probes = worse.choose(worse.LADDER, lambda lo: worse.Probe(lo, 0.87, -0.01), -0.03)
    assert chosen.left_out == worse.LADDER[-1] and len(probes) == len(worse.LADDER)
    chosen, probes = worse.choose(worse.LADDER, lambda lo: worse.Probe(lo, 0.87, None), -0.03)
    assert chosen.left_out == worse.LADDER[0] and len(probes) == 1
    with pytest.raises(InvalidInputError):
        worse.choose((), lambda lo: worse.Probe(lo, 0.87, None), -0.03)


def test_the_auc_case_holds_the_last_judged_figures_the_labels_and_how_it_ended() -> None:
    labels = {"5": VersionOutcomes(9_000, 8_400, 0.83, 0.066, 0.9, None), "3": VersionOutcomes(20_000, 19_000, 0.87, 0.07, 0.95, None)}
    ended = {"reason": "RolledBack", "message": "Canary 5 rolled back to 3: 2 failed checks: auc_delta fail"}
    holdout = {"auc": 0.84, "champion": "3", "championAUC": 0.875, "delta": -0.035}
    case = worse.auc_case("5", "3", "made without days_to_renewal", holdout, CHECKS, labels, ended, 9.0)
    auc = case["auc"]
    assert (case["kind"], case["canary"], case["stable"], case["made"]) == ("outcomes", "5", "3", "made without days_to_renewal")
    assert (auc["canary"], auc["stable"], auc["delta"], auc["verdict"]) == (0.831, 0.871, -0.04, "fail")
    assert auc["outcomes"] == ["undecided", "undecided", "fail"]  # checks that judged no metric are not counted
    assert (auc["labelledCanary"], auc["labelledStable"]) == (8_400, 19_000)
    assert case["scorePSI"]["canary"] == 0.02 and case["ended"]["reason"] == "RolledBack"
    nothing = worse.auc_case("5", "3", "", {}, CHECKS[:1], {}, None, 9.0)
    assert nothing["auc"]["delta"] is None and nothing["auc"]["labelledCanary"] is None and nothing["ended"] is None


def test_progress_lines_say_when_the_test_waits_for_labels_and_when_it_fails() -> None:
    lines = [worse.progress_line(c, 8_000) for c in CHECKS]
    assert "wait" in lines[0]
    assert "held until each model has 8,000 delayed labels" in lines[1]
    assert "undecided, evidence 0.40" in lines[2] and "(-0.040" in lines[2]
    assert "FAILED" in lines[3]


def test_the_watch_says_each_change_of_the_test_once_and_keeps_the_window_start(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = DeploymentStore(tmp_path, "churn")
    store.create_or_update({"model": {"registeredModel": "churn-classifier", "version": "3"}, "featureService": "churn_v1"}, now=1.0)
    store.save(replace(store.load(), status={"canaryVersion": "5", "trafficSince": 0.5}))
    store.record(CHECKS[:3])
    watch, timeline = AucWatch("5", 8_000), Timeline()
    watch.tick(store, timeline)
    watch.tick(store, timeline)  # nothing new: nothing said again
    store.record(CHECKS[3:])
    watch.tick(store, timeline)
    said = [line for line in timeline.lines if "AUC test" in line]
    assert len(said) == 4 and "FAILED" in said[-1]
    assert watch.since == 0.5
    capsys.readouterr()


def test_the_first_calibration_after_a_promotion_is_the_one_reported() -> None:
    def evaluation(t: float, version: str, ratio: float | None) -> dict[str, Any]:
        return {"time": t, "kind": "evaluation", "version": version, "signals": {"calibrationRatio": ratio}, "reason": "x"}

    timeline = [evaluation(1.0, "3", 0.5), evaluation(2.0, "2", 0.4), evaluation(3.0, "3", None), evaluation(4.0, "3", 0.93)]
    assert first_calibration(timeline, "3", 2.5) == timeline[3]
    assert first_calibration(timeline, "3", 0.0) == timeline[0]
    assert first_calibration(timeline, "4", 0.0) is None


def test_a_calibration_is_called_breached_by_the_policys_own_rule() -> None:
    rule = RetrainingPolicy()
    assert calibration_breached(rule, 0.46, 500)
    assert not calibration_breached(rule, 0.9, 500)  # within ±25 %
    assert not calibration_breached(rule, 0.46, rule.min_labelled - 1)  # too few labels to count


def test_the_report_shows_each_auc_case_with_its_checks_and_a_plot() -> None:
    labels = {"5": VersionOutcomes(9_000, 8_400, 0.831, 0.066, 0.9, None), "3": VersionOutcomes(20_000, 19_000, 0.871, 0.07, 0.95, None)}
    case = worse.auc_case(
        "5",
        "3",
        "made without days_to_renewal",
        {"auc": 0.84, "champion": "3", "championAUC": 0.875, "delta": -0.035},
        CHECKS,
        labels,
        None,
        9.0,
    )
    timeline: list[dict[str, Any]] = [*CHECKS, case]
    assert auc_cases(timeline) == [case]
    row = auc_case_row(case)
    assert row[:3] == ["5", "3", "made without days_to_renewal"]
    assert row[4] == "0.831 (8,400)" and row[5] == "0.871 (19,000)" and row[6] == "-0.040 (-0.03)" and row[-1] == "running"
    page = html.unescape(auc_cases_html(auc_cases(timeline), timeline))
    assert page.count("<img") == 1
    assert len(re.findall(r"<tr class=\"(?:pass|fail)\">", page)) == 3 + 1  # three checks judged AUC, one case row
    assert "auc_delta fail: AUC canary 0.8310" in page
