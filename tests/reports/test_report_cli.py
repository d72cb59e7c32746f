"""``churnops report demo|compliance`` end to end in the CLI: files written where asked, statuses printed, error codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from churnops.cli import main
from tests.reports.story import Story
from tests.support import groups

pytestmark = groups.REPORT_STORY


def test_report_demo_writes_the_page_and_its_json(story: Story, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "story.html"
    assert main(["--data-dir", str(story.data_dir), "report", "demo", "--out", str(out), "--windows", "6"]) == 0
    doc = json.loads(out.with_suffix(".json").read_text())
    assert doc["format"] == "churnops.demo_report" and doc["champion"] == "2"
    assert doc["sections"]["drift"]["window_seconds"] >= doc["sections"]["performance"]["period_seconds"] > 0
    assert out.read_text().startswith("<!doctype html>")
    printed = capsys.readouterr().out
    assert f"demo report: {out}" in printed
    for key in doc["sections"]:
        assert f"  {key}: complete" in printed
    assert sorted(p.name for p in out.parent.iterdir()) == ["story.html", "story.json"]  # no temporary file left


def test_report_compliance_by_uri_and_errors(story: Story, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "compliance"
    assert (
        main(["--data-dir", str(story.data_dir), "report", "compliance", "--model", "models:/churn-classifier/1", "--out", str(out)]) == 0
    )
    doc = json.loads((out / "compliance_1.json").read_text())
    assert doc["model_version"] == "1" and (out / "compliance_1.html").exists()
    printed = capsys.readouterr().out
    assert "model artifact sha256 matches its registration: passed" in printed
    assert main(["--data-dir", str(story.data_dir), "report", "compliance", "--model", "9", "--out", str(out)]) == 3
    assert "has no version 9" in capsys.readouterr().err
    assert main(["--data-dir", str(story.data_dir), "report", "demo", "--windows", "1", "--out", str(out / "x.html")]) == 2
