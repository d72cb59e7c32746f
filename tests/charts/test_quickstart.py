"""The README's cluster quickstart: every command that can run without Docker or a cluster runs here and
passes; every other one is a Makefile target that exists or a command that needs the cluster."""

from __future__ import annotations

import re
import shlex

import kubernetes_validate  # type: ignore[import-untyped]

from tests.charts.render import documents
from tests.support.k8s_tools import ROOT, binary, run

SECTION = "## Cluster quickstart"
NEEDS_A_CLUSTER = ("kubectl ", "helm upgrade ", "cp ", "kind ", "docker ")
MAKE_NEEDS_DOCKER = {"kind-up", "images", "deploy", "demo-cluster", "kind-down", "push", "cluster-addons"}


def quickstart_commands(readme: str) -> list[str]:
    """The commands of the quickstart's bash blocks (comments dropped, continuation lines joined)."""
    if SECTION not in readme:
        raise AssertionError(f"README.md has no '{SECTION}' section")
    section = readme.split(SECTION, 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, re.DOTALL):
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            command = line.split("  #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(re.sub(r"\s+", " ", command))
    return commands


def make_targets(makefile: str) -> set[str]:
    return set(re.findall(r"^([a-zA-Z0-9_-]+):", makefile, re.MULTILINE))


def classify(command: str) -> str:
    """runnable (run here), make (targets checked), or cluster (needs Docker or a cluster)."""
    if command.startswith(("tests/tools/bin/helm lint", "tests/tools/bin/helm template", ".venv/bin/hadolint")):
        return "runnable"
    if command.startswith("make "):
        return "make"
    if command.startswith(NEEDS_A_CLUSTER):
        return "cluster"
    raise AssertionError(f"the quickstart command {command!r} is neither runnable here nor known to need a cluster")


def readme_commands() -> list[str]:
    return quickstart_commands((ROOT / "README.md").read_text())


def test_quickstart_has_kind_eks_and_offline_commands() -> None:
    commands = readme_commands()
    kinds = {classify(c) for c in commands}
    assert kinds == {"runnable", "make", "cluster"}
    assert any(c.startswith("make kind-up") for c in commands) and any("eks-values.yaml" in c for c in commands)


def test_every_make_target_of_the_quickstart_exists() -> None:
    targets = make_targets((ROOT / "Makefile").read_text())
    for command in readme_commands():
        if classify(command) == "make":
            words = [w for w in shlex.split(command)[1:] if "=" not in w]
            missing = set(words) - targets
            assert not missing, f"{command}: no Makefile target {missing}"
            assert set(words) <= MAKE_NEEDS_DOCKER | {"chart-check"}, command


def test_chart_check_runs_this_suite() -> None:
    """`make chart-check` is these tests (so the README's offline check is what CI runs)."""
    makefile = (ROOT / "Makefile").read_text()
    recipe = makefile.split("\nchart-check:", 1)[1].split("\n\n", 1)[0]
    assert "pytest tests/charts" in recipe


def run_quickstart_command(command: str) -> None:
    args = shlex.split(command)
    if args[0] == "tests/tools/bin/helm":
        args[0] = str(binary("helm"))
    result = run(args, cwd=ROOT)
    assert result.returncode == 0, f"{command}\n{result.stdout}{result.stderr}"
    if "template" in args:
        version = kubernetes_validate.latest_version()
        for obj in documents(result.stdout):
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.SchemaNotFoundError:
                continue  # custom resources: validated by test_rendered_schemas.py


def test_runnable_quickstart_commands() -> None:
    runnable = [c for c in readme_commands() if classify(c) == "runnable"]
    assert runnable
    for command in runnable:
        run_quickstart_command(command)
