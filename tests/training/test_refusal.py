"""A refusal that helps: the card and evaluation stay, the message says why and what to change; protected
attributes are gated, business segments reported; rejected candidates can be inspected but never rolled out."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from churnops.cli import main
from churnops.errors import CheckFailedError
from churnops.training import registry
from churnops.training.config import GateConfig
from churnops.training.equal_opportunity import choose_segment_thresholds, holdout_report
from churnops.training.evaluation import fairness
from churnops.training.gates import GateResult, fairness_gate
from churnops.training.refusal import hints
from churnops.training.runs import OwnData, train_own_data
from tests.training.byod import FAST, contract_table, train_args


@pytest.fixture(scope="module")
def table(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("byod") / "customers.csv"
    contract_table().to_csv(path, index=False)
    return path


def evaluation_of(data_dir: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads((data_dir / "reports" / "training" / "evaluation.json").read_text())
    return doc


def test_a_refused_model_leaves_its_card_and_says_what_to_change(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data_dir = tmp_path / "d"
    assert main(train_args(data_dir, table, "--segment-column", "contract", "--gate-segment")) == CheckFailedError.exit_code
    err = capsys.readouterr().err
    reports = data_dir / "reports" / "training"
    card_path, evaluation_path = reports / "model_card.md", reports / "evaluation.json"
    # the figures: the gap and the recall of every segment, in the message and in the card
    assert "fairness_gap: largest segment recall gap" in err
    recall = {s: v["recall"] for s, v in evaluation_of(data_dir)["evaluation"]["fairness"]["segments"].items()}
    assert set(recall) == {"month-to-month", "one-year", "two-year"}
    assert max(recall.values()) - min(recall.values()) > 0.25  # many-fold base rates, one threshold
    assert f"(recall by segment: month-to-month {recall['month-to-month']:.2f}, one-year {recall['one-year']:.2f}" in err
    # where to look, and what to change: the setting (option and settings field) and the flag that registers anyway
    assert f"evaluation: {evaluation_path}" in err and f"model card: {card_path}" in err
    assert "--max-fairness-gap (settings file: gates.max_fairness_gap) changes it" in err
    assert "--register-rejected registers the model anyway as a rejected candidate for inspection" in err
    card = card_path.read_text()
    assert "**Not registered: quality gates failed (fairness_gap)." in card
    assert "## Fairness across contract (holdout)" in card and "| fairness_gap | FAIL |" in card
    assert "| month-to-month | " in card and "Gaps: positive rate" in card
    assert registry.alias_version(registry.RegistryConfig.embedded(data_dir), registry.CHALLENGER) is None
    assert "'contract' is gated as a business segment because --gate-segment was given" in err
    # registered anyway for inspection: still a failed run (non-zero exit), and it says what it registered
    rejected = main(train_args(data_dir, table, "--segment-column", "contract", "--gate-segment", "--register-rejected"))
    assert rejected == CheckFailedError.exit_code
    assert "quality gates failed (fairness_gap): registered v1 as a rejected candidate for inspection only" in capsys.readouterr().err


def test_a_business_segment_is_reported_not_gated_and_a_protected_attribute_is_gated(
    table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the same table, with contract type named for what it is: a business segment
    business = tmp_path / "business"
    assert main(train_args(business, table, "--segment-column", "contract")) == 0
    assert "Registered models:/churn-classifier/1 as 'challenger'" in capsys.readouterr().out
    doc = evaluation_of(business)
    assert "fairness_gap" not in [g["name"] for g in doc["gates"]]
    assert doc["evaluation"]["fairness"]["recall_gap"] > 0.25  # still measured and reported
    assert doc["fairness"] == {
        "fairness_column": "contract",
        "fairness_role": "segment",
        "fairness_gated": False,
        "segment_thresholds": None,
        "reported_segments": {},
    }
    card = (business / "reports" / "training" / "model_card.md").read_text()
    assert "A business segment: reported, not gated" in card

    # a protected attribute (no effect on churn) is gated, and measured rather than learned from
    protected = tmp_path / "protected"
    stale = protected / "reports" / "training" / "business.png"  # an earlier run's plot this run does not draw
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"an earlier run's plot")
    args = ("--protected-column", "gender", "--segment-column", "contract", "--per-segment-thresholds")
    assert main(train_args(protected, table, *args)) == 0
    assert not stale.exists()  # removed before the run: never shown or logged as this run's
    doc = evaluation_of(protected)
    # per-segment thresholds go by the business segment, never by the protected attribute
    assert doc["fairness"]["segment_thresholds"]["column"] == "contract"
    assert set(doc["fairness"]["segment_thresholds"]["thresholds"]) == {"month-to-month", "one-year", "two-year"}
    fairness_gate = next(g for g in doc["gates"] if g["name"] == "fairness_gap")
    assert fairness_gate["passed"] and "recall by segment: female" in fairness_gate["reason"]
    assert set(doc["evaluation"]["fairness"]["segments"]) == {"female", "male"}
    assert set(doc["fairness"]["reported_segments"]) == {"contract"}  # the business segment beside it, reported
    assert "gender" not in json.loads((protected / "reports" / "training" / "selection.json").read_text())["selected"]
    card = (protected / "reports" / "training" / "model_card.md").read_text()
    assert "## Fairness across gender (holdout)" in card and "## Fairness across contract (holdout)" in card
    assert "- protected_attribute: gender (measured for fairness, not used as a feature)" in card


def test_segment_options_are_checked(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(train_args(tmp_path / "d", table, "--gate-segment")) == 2
    assert "--gate-segment: gates the --segment-column's fairness; give --segment-column too" in capsys.readouterr().err
    assert main(train_args(tmp_path / "d", table, "--protected-column", "religion")) == 2
    assert "--protected-column: 'religion' is not a feature column of the table" in capsys.readouterr().err


def test_a_rejected_candidate_is_registered_for_inspection_but_never_aliased(table: Path, tmp_path: Path) -> None:
    reg = registry.RegistryConfig.embedded(tmp_path / "data")
    base = OwnData(table, "customer", "as_of", "churned", segment_column="contract")
    champion = train_own_data(base, tmp_path / "v1", FAST, reg)
    assert champion.registered is not None
    registry.promote(reg, champion.registered.version, "first model")
    gated = OwnData(table, "customer", "as_of", "churned", segment_column="contract", gate_segment=True)
    outcome = train_own_data(gated, tmp_path / "v2", FAST, reg, register_rejected=True)
    assert outcome.registered is not None and outcome.summary["rejected_gates"] == ["fairness_gap"]
    version = outcome.registered.version
    client = MlflowClient(reg.tracking_uri, registry_uri=reg.tracking_uri)
    mv = client.get_model_version(reg.model_name, version)
    assert mv.tags[registry.TAG_REJECTED] == "true" and mv.tags[registry.TAG_FAILED_GATES] == "fairness_gap"
    assert "Rejected candidate for inspection: failed quality gates fairness_gap" in (mv.description or "")
    assert not mv.aliases
    # nothing a rollout reads points at it: no challenger, the champion unchanged, and promotion refuses it
    assert registry.alias_version(reg, registry.CHALLENGER) is None
    assert registry.alias_version(reg, registry.CHAMPION) == champion.registered.version
    with pytest.raises(CheckFailedError, match=f"v{version} is a rejected candidate \\(failed quality gates: fairness_gap\\)"):
        registry.promote(reg, version, "by hand")
    assert registry.alias_version(reg, registry.CHAMPION) == champion.registered.version
    card = (tmp_path / "v2" / "model_card.md").read_text()
    assert f"# Model card: churn-classifier v{version}" in card
    assert "**Rejected candidate, registered for inspection only: quality gates failed (fairness_gap)" in card


def scored_segments(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated scores for segments whose base rates differ many-fold (as a churn model gives them)."""
    rng = np.random.default_rng(seed)
    segments = rng.choice(np.array(["monthly", "annual", "biennial"]), n, p=[0.5, 0.25, 0.25])
    base = np.select([segments == "monthly", segments == "annual"], [-0.5, -2.5], -3.8)
    p = 1 / (1 + np.exp(-(base + rng.normal(0, 1.2, n))))
    y = (rng.random(n) < p).astype(np.int64)
    return y, p, segments


def test_per_segment_thresholds_equalise_recall_within_the_contact_capacity() -> None:
    y, p, segments = scored_segments(20_000, seed=1)
    one = fairness(y, p, segments, 0.35, 0.25)
    assert one["recall_gap"] > 0.5  # one threshold misses nearly every low-base-rate churner
    choice = choose_segment_thresholds(y, p, segments, 0.35, max_contact_share=0.5)
    assert choice.thresholds["biennial"] < choice.thresholds["annual"] < choice.thresholds["monthly"]
    assert choice.target_recall == pytest.approx(float(((p >= 0.35) & (y == 1)).sum() / y.sum()))
    on_training = holdout_report(choice, y, p, segments, 0.25)["holdout"]
    assert on_training["recall_gap"] < 0.01  # exact up to one churner per segment on the rows they were chosen on
    # judged on fresh rows: equal up to sampling (about 220 churners in the smallest segment, a standard error of 0.03)
    y2, p2, seg2 = scored_segments(20_000, seed=2)
    report = holdout_report(choice, y2, p2, seg2, 0.25)
    assert report["holdout"]["recall_gap"] < 0.1
    assert report["served"].startswith("evaluated and reported only: serving applies the one model threshold")
    # the team's capacity binds: a lower recall is aimed at, and said
    tight = choose_segment_thresholds(y, p, segments, 0.35, max_contact_share=0.15)
    assert tight.contact_share <= 0.15 and tight.target_recall < choice.target_recall
    assert "lowered from" in tight.note


def test_per_segment_thresholds_are_reported_in_the_card(table: Path, tmp_path: Path) -> None:
    frame = pd.read_csv(table)
    assert len(frame) == 3_000
    own = OwnData(table, "customer", "as_of", "churned", segment_column="contract")
    cfg = FAST.__class__(seed=FAST.seed, budget=FAST.budget, gates=FAST.gates.__class__(per_segment_thresholds=True))
    train_own_data(own, tmp_path / "out", cfg, registry.RegistryConfig.embedded(tmp_path / "data"))
    report = json.loads((tmp_path / "out" / "evaluation.json").read_text())["fairness"]["segment_thresholds"]
    assert set(report["thresholds"]) == {"month-to-month", "one-year", "two-year"}
    assert report["thresholds"]["two-year"] < report["thresholds"]["month-to-month"]
    card = (tmp_path / "out" / "model_card.md").read_text()
    assert "## Equal opportunity at per-segment thresholds across contract (holdout)" in card
    assert "**Not served: evaluated and reported only" in card


def test_small_segments_are_shown_but_not_judged_and_one_value_is_noted() -> None:
    """Monitoring's sizes: a segment under 30 rows or 10 churners is listed, not part of the gap (a recall from 2 churners is noise)."""
    y, p, segments = scored_segments(4_000, seed=3)
    small = np.arange(40)  # 40 rows, a handful of churners, none flagged: recall 0 from a few churners
    segments[small], y[small], p[small] = "tiny", np.r_[np.ones(4), np.zeros(36)].astype(np.int64), 0.0
    report = fairness(y, p, segments, 0.35, 0.25)
    assert report["segments"]["tiny"]["churners"] == 4 and report["segments"]["tiny"]["recall"] == 0.0
    assert not report["segments"]["tiny"]["in_recall_gap"] and report["segments"]["tiny"]["in_positive_rate_gap"]
    judged = [v["recall"] for s, v in report["segments"].items() if s != "tiny"]
    assert report["recall_gap"] == pytest.approx(max(judged) - min(judged))
    assert "segments with fewer than 10 churners are left out of the recall gap: ['tiny']" in report["notes"]
    one = fairness(y, p, np.full(len(y), "north"), 0.35, 0.25)
    assert one["recall_gap"] is None and one["notes"][0].startswith("one value only ('north')")
    gate = fairness_gate(one, GateConfig())
    assert gate.passed and gate.reason.startswith("not judged: one value only ('north')")
    ev_gate = fairness_gate(report, GateConfig())
    assert "tiny 0.00 (4 churners, 40 rows: too small, not judged)" in ev_gate.reason


def test_fairness_hints_never_invite_un_gating_a_protected_attribute() -> None:
    failed = [GateResult("fairness_gap", False, 0.4, 0.25, "largest segment recall gap 0.4000 > 0.2500")]
    protected = " ".join(hints(failed, "gender", "protected"))
    assert "'gender' is a protected attribute: the gap is the model's to close" in protected
    assert "--segment-column" not in protected and "--gate-segment" not in protected
    assert "--per-segment-thresholds" not in protected  # never a threshold per protected value
    segment = " ".join(hints(failed, "contract", "segment"))
    assert "gated as a business segment because --gate-segment was given; without it the segment is reported" in segment
    platform = " ".join(hints(failed, "segment", "platform"))
    assert "--segment-column" not in platform and "--gate-segment" not in platform  # options of --data only


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--segment-column", "contract"], "--segment-column: applies to your own table: give --data too"),
        (["--revenue-column", "mrr"], "--revenue-column: applies to your own table"),
        (["--separator", ";"], "--separator: applies to your own table"),
        (["--max-fairness-gap", "-1"], "--max-fairness-gap: must be between 0 and 1, got -1"),
        (["--min-auc", "2"], "--min-auc: must be between 0 and 1, got 2"),
        (["--horizon-days", "-5"], "--horizon-days: must be 0 or more days, got -5"),
    ],
)
def test_options_are_refused_where_they_would_be_ignored_or_meaningless(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    assert main(["--data-dir", str(tmp_path), "train", *args]) == 2
    assert message in capsys.readouterr().err


def test_own_data_columns_are_checked_before_the_search(table: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(train_args(tmp_path / "d", table, "--protected-column", "contract", "--segment-column", "contract")) == 2
    assert "--segment-column: 'contract' is given as the protected attribute too" in capsys.readouterr().err
    assert main(train_args(tmp_path / "d", table, "--revenue-column", "contract")) == 2
    assert "--revenue-column: 'contract' is a text column; the revenue column must be numeric" in capsys.readouterr().err
    assert main(train_args(tmp_path / "d", table, "--protected-column", "gender", "--per-segment-thresholds")) == 2
    assert "--per-segment-thresholds: chooses a threshold per business segment: give --segment-column" in capsys.readouterr().err
    assert main(train_args(tmp_path / "d", table, "--encoding", "rot13")) == 2
    assert "--encoding: 'rot13' is not a text encoding" in capsys.readouterr().err
    assert not (tmp_path / "d" / "reports" / "training" / "evaluation.json").exists()  # stopped before any training
