"""The compliance report of a version, checked against the records it is generated from; tampering shows as a failed check."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest

from churnops.cli import main
from churnops.errors import NotFoundError
from churnops.layout import Layout
from churnops.reports.compliance import build, write_compliance_report
from churnops.rollout.store import DeploymentStore
from churnops.training import registry
from tests.reports.story import MODEL, ROUTE, Story
from tests.support import groups

pytestmark = groups.REPORT_STORY


@pytest.fixture(scope="module")
def champion(story: Story) -> dict[str, Any]:
    doc, _ = build(story.layout, "champion")
    return doc


def sec(doc: dict[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = doc["sections"][key]
    return out


def test_lineage_and_digests_of_the_champion(champion: dict[str, Any], story: Story) -> None:
    trained = story.trained["2"]
    assert (champion["model_version"], champion["requested"]) == ("2", "champion")
    lineage = sec(champion, "lineage")
    assert lineage["run_id"] == trained.run_id
    assert lineage["lineage"]["dataset_sha256"] == trained.dataset_sha256 and lineage["lineage"]["feature_service"] == "churn_v1"
    assert lineage["aliases"] == ["champion"]
    assert lineage["registry_tags"]["promotion_reason"].startswith("passed every step")  # written by the rollout's promotion
    assert lineage["holdout_metrics"]["roc_auc"] == pytest.approx(trained.evaluation.roc_auc)  # type: ignore[union-attr]
    digests = sec(champion, "digests")
    recorded = registry.version_info(story.cfg, "2")["tags"]["sha256.model.joblib"]
    assert digests["artifact"]["recorded"] == recorded == digests["artifact"]["actual"] and digests["artifact"]["ok"]
    assert digests["dataset_sha256"] == trained.dataset_sha256


def test_gates_as_applied_and_the_model_card(champion: dict[str, Any], story: Story) -> None:
    trained = story.trained["2"]
    gates = sec(champion, "gates")
    assert gates["gates"] == [asdict(g) for g in trained.gates]
    assert gates["passed"] == all(g.passed for g in trained.gates)
    assert trained.card is not None
    assert sec(champion, "card")["markdown"] == trained.card.read_text()
    assert sec(champion, "card")["source"].endswith("evaluation/training/model_card.md")


def test_fairness_at_training_and_live(champion: dict[str, Any], story: Story) -> None:
    fair = sec(champion, "fairness")
    ev = story.trained["2"].evaluation
    assert ev is not None
    assert fair["training"] == json.loads(json.dumps(ev.fairness))
    live = {r["population"]: r for r in fair["live"]}
    rows = story.logged[story.logged["model_version"] == "2"]
    flagged = rows["score"] >= ev.threshold
    rates = rows.assign(flagged=flagged).groupby("segment")["flagged"].mean()
    assert live["predictions"]["positive_rate_gap"] == pytest.approx(rates.max() - rates.min())
    outcome = rows["customer_id"].map(dict(zip(story.labels["customer_id"], story.labels["churned_30d"], strict=True)))
    labelled = rows.assign(y=outcome, flagged=flagged)[outcome.notna()]
    assert sum(seg["rows"] for seg in live["labelled"]["segments"]) == len(labelled)
    recalls = [g.loc[g["y"] == 1, "flagged"].mean() for _, g in labelled.groupby("segment") if len(g) >= 30 and (g["y"] == 1).sum() >= 10]
    assert live["labelled"]["recall_gap"] == pytest.approx(max(recalls) - min(recalls))
    assert sec(champion, "summary")["checks"]["live recall gap within the gate"] is (live["labelled"]["recall_gap"] <= 0.25)


def test_every_rollout_decision_about_the_version_with_its_figures(champion: dict[str, Any], story: Story) -> None:
    (dep,) = sec(champion, "rollout")["deployments"]
    assert dep["name"] == ROUTE
    timeline = DeploymentStore(story.data_dir, ROUTE).timeline()
    as_canary = [e for e in timeline if e["kind"] == "check" and e["canary"] == "2"]
    judged_against = [e for e in timeline if e["kind"] == "check" and e["stable"] == "2"]
    checks = [e for e in dep["entries"] if e["kind"] == "check"]
    assert [c["figures"] for c in checks] == [c["figures"] for c in as_canary + judged_against]
    reasons = [e.get("reason") for e in dep["entries"] if e["kind"] == "event"]
    assert "Promoted" in reasons and "RolledBack" in reasons  # promoted itself; the stable version a canary was rolled back to
    assert "Deployed" not in reasons  # version 1 was the first deployment, not this one


def test_audit_chains_are_verified_now(champion: dict[str, Any], story: Story) -> None:
    logs = {Path(x["path"]).name: x for x in sec(champion, "audit")["logs"]}
    assert set(logs) == {"predictions.jsonl", "batch.jsonl"}
    online = logs["predictions.jsonl"]
    assert online["ok"] and online["problems"] == [] and online["head_file"]
    assert online["records"] == len(story.audit_log.read_text().splitlines()) == len(story.logged)
    assert online["predictions_of_version"] == int((story.logged["model_version"] == "2").sum())
    assert logs["batch.jsonl"]["predictions_of_version"] == 400  # one batch record of 400 rows
    assert sec(champion, "summary")["checks"]["audit chains verify"] is True


def test_a_version_registered_without_evaluation_names_what_is_missing(story: Story) -> None:
    doc, page = build(story.layout, "3")
    gates = sec(doc, "gates")
    assert gates["status"] == "partial" and gates["recorded_outcome"] == "passed"
    assert "logged no evaluation.json" in gates["missing"][0]
    assert sec(doc, "card")["status"] == "missing" and sec(doc, "card")["markdown"] is None
    assert sec(doc, "summary")["checks"]["training gates passed"] is None
    assert any("fairness at training" in m for m in sec(doc, "summary")["missing"])
    entries = sec(doc, "rollout")["deployments"][0]["entries"]
    events = [e["reason"] for e in entries if e["kind"] == "event"]
    assert {"CanaryStarted", "CheckFailed", "RolledBack"} <= set(events)
    run = next(e for e in entries if e["kind"] == "run")
    assert run["challenger"] == "3"
    assert "Missing: the evaluation of v3" in page


def test_unknown_versions_are_not_found(story: Story) -> None:
    with pytest.raises(NotFoundError):
        build(story.layout, "9")
    with pytest.raises(NotFoundError):
        build(story.layout, "no-such-alias")


@pytest.fixture
def copied(story: Story, tmp_path: Path) -> Layout:
    shutil.copytree(story.data_dir, tmp_path / "data")
    return Layout(tmp_path / "data")


def test_an_edited_audit_record_fails_the_verification(copied: Layout, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = copied.audit / "predictions.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[9])
    record["score"] = 0.01  # someone lowers a customer's score after the fact
    lines[9] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    path.write_text("\n".join(lines) + "\n")
    files = write_compliance_report(copied, "2", tmp_path / "out")
    assert files.html.name == "compliance_2.html" and files.json.name == "compliance_2.json"
    logs = {Path(x["path"]).name: x for x in files.doc["sections"]["audit"]["logs"]}
    assert not logs["predictions.jsonl"]["ok"] and logs["batch.jsonl"]["ok"]
    assert logs["predictions.jsonl"]["problems"] == ["seq 10: content does not match its hash (edited)"]
    assert files.doc["sections"]["summary"]["checks"]["audit chains verify"] is False
    assert "FAILED" in files.html.read_text()
    code = main(["--data-dir", str(copied.data_dir), "report", "compliance", "--model", "2", "--out", str(tmp_path / "cli")])
    assert code == 1  # a finding, as `churnops audit verify` reports it
    assert "audit chains verify: FAILED" in capsys.readouterr().out


def test_an_altered_model_file_fails_the_digest_check(copied: Layout, story: Story) -> None:
    cfg = registry.RegistryConfig.embedded(copied.data_dir)  # the copy's registry points at the copy's artifacts
    expected = registry.version_info(cfg, "2")["tags"]["sha256.model.joblib"]
    artifacts = [p for p in (copied.data_dir / "mlflow").rglob("model.joblib") if registry.sha256_file(p) == expected]
    assert artifacts
    for p in artifacts:
        with p.open("ab") as f:
            f.write(b"\0")
    doc, _ = build(copied, f"models:/{MODEL}/2")
    artifact = sec(doc, "digests")["artifact"]
    assert not artifact["ok"] and artifact["actual"] != artifact["recorded"] == expected
    assert "it was altered" in artifact["problem"]
    assert sec(doc, "summary")["checks"]["model artifact sha256 matches its registration"] is False


def test_without_labels_the_live_recall_gap_is_named_missing(copied: Layout) -> None:
    shutil.rmtree(copied.data_dir / "labels")
    doc, _ = build(copied, "2")
    fair = sec(doc, "fairness")
    assert [r["population"] for r in fair["live"]] == ["predictions"]
    assert any("has arrived yet" in m for m in fair["missing"])
    assert sec(doc, "summary")["checks"]["live recall gap within the gate"] is None
    assert any("delayed labels" in m for m in sec(doc, "summary")["missing"])


def test_a_copied_data_directory_verifies_its_own_artifacts(copied: Layout, champion: dict[str, Any]) -> None:
    doc, _ = build(copied, "champion")
    assert sec(doc, "lineage")["lineage"] == sec(champion, "lineage")["lineage"]
    assert sec(doc, "digests")["artifact"]["ok"]
    assert [Path(x["path"]).parent for x in sec(doc, "audit")["logs"]] == [copied.audit, copied.audit]
