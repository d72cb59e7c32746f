"""Every install step can create what it renders: no release creates objects of a kind that only its own
templates define.

helm/helm v4.1.4 ``pkg/action/install.go`` (``RunWithContext``): only the chart's ``crds/`` directory is
installed before anything else (``installCRDs``); then ``KubeClient.Build`` maps every object of the release
manifest to a REST resource before a single one is created, so a ModelDeployment or ClusterKopfPeering next
to its CRD template fails with "no matches for kind" on the first install. The steps modelled here are those
`make deploy` runs (kind and Knative values) and the README's EKS steps (EKS and operator-only values).
Kinds of the add-ons the chart documents as installed first (Chart.yaml ``churnops.io/optional-crds``) and
Kubernetes' own kinds need nothing earlier.
"""

from __future__ import annotations

import itertools
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.charts.render import CHART, SCENARIOS, documents, helm
from tests.charts.test_quickstart import SECTION
from tests.support.k8s_tools import ROOT, run

# Kubernetes' own API groups ("" is the core group).
BUILTIN_GROUPS = {
    "",
    "apps",
    "batch",
    "policy",
    "autoscaling",
    "rbac.authorization.k8s.io",
    "networking.k8s.io",
    "storage.k8s.io",
    "scheduling.k8s.io",
    "coordination.k8s.io",
    "discovery.k8s.io",
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "node.k8s.io",
    "certificates.k8s.io",
}
# Which install steps each scenario's values are used with.
MAKE_DEPLOY = {"kind": ["deploy"], "knative": ["deploy", "KSERVE_MODE=Knative"]}
README_EKS = {"eks", "minimal"}


@dataclass(frozen=True)
class Step:
    """One `helm upgrade --install` (or `kubectl apply -f`) of local files, with its arguments."""

    command: str
    objects: tuple[dict[str, Any], ...]


def api_group(obj: dict[str, Any]) -> str:
    api = str(obj["apiVersion"])
    return api.split("/", 1)[0] if "/" in api else ""


def addon_groups() -> set[str]:
    """The API groups of the add-ons the chart documents as prerequisites (Chart.yaml annotation)."""
    annotation = yaml.safe_load((CHART / "Chart.yaml").read_text())["annotations"]["churnops.io/optional-crds"]
    groups = re.sub(r"\([^)]*\)", ",", annotation)  # the switches in parentheses name no group
    return {g for g in re.split(r"[,\s]+|\band\b", groups) if "." in g}


def defined_kinds(objects: tuple[dict[str, Any], ...]) -> set[tuple[str, str]]:
    return {(o["spec"]["group"], o["spec"]["names"]["kind"]) for o in objects if o["kind"] == "CustomResourceDefinition"}


def install_problems(steps: list[Step], prerequisites: set[str]) -> list[str]:
    """Objects whose kind's CRD no earlier step installed (a CRD in the same step does not count)."""
    known: set[tuple[str, str]] = set()
    problems = []
    for step in steps:
        for obj in step.objects:
            key = (api_group(obj), obj["kind"])
            if key[0] in BUILTIN_GROUPS or key[0] in prerequisites or key in known:
                continue
            where = "defined only in the same step" if key in defined_kinds(step.objects) else "defined by no earlier step"
            problems.append(f"{step.command}: {obj['kind']}/{obj['metadata']['name']} ({key[0]}) {where}")
        known |= defined_kinds(step.objects)
    return problems


def render_step(command: str, values: dict[str, Path] | None = None) -> Step | None:
    """Render a `helm upgrade --install RELEASE CHART ...` or `kubectl apply -f FILE` of local files;
    None for any other command. ``values`` replaces a -f file named in the docs by a scenario's file."""
    words = shlex.split(command)
    if "helm" in Path(words[0]).name and words[1:3] == ["upgrade", "--install"]:
        release, chart = words[3], words[4]
        args: list[str | Path] = []
        for flag, value in itertools.pairwise(words):
            if flag in ("-f", "--values"):
                args += ["-f", (values or {}).get(value, ROOT / value)]
            elif flag in ("--set", "-n", "--namespace"):
                args += [flag, value]
        code, out, err = helm("template", release, ROOT / chart, *args)
        assert code == 0, f"{command}: {err}"
        return Step(command, tuple(documents(out)))
    if "kubectl" in Path(words[0]).name and "apply" in words and "-f" in words:
        path = ROOT / words[words.index("-f") + 1]
        return Step(command, tuple(documents(path.read_text()))) if path.is_file() else None
    return None


def make_steps(args: list[str]) -> list[Step]:
    result = run(["make", "--no-print-directory", "-n", *args], cwd=ROOT)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.replace("\\\n", " ").splitlines()
    return [s for line in lines if (s := render_step(line.strip())) is not None]


def readme_eks_steps(values: Path) -> list[Step]:
    """The helm and kubectl steps of the README's EKS block, with `my-eks.yaml` replaced by ``values``."""
    section = (ROOT / "README.md").read_text().split(SECTION, 1)[1].split("\n## ", 1)[0]
    block = section.split("**EKS**", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    steps = []
    for line in block.replace("\\\n", " ").splitlines():
        command = line.split("  #", 1)[0].strip()
        if command and (step := render_step(command, {"my-eks.yaml": values})) is not None:
            steps.append(step)
    return steps


def scenario_steps(scenario: str) -> list[Step]:
    if scenario in MAKE_DEPLOY:
        return make_steps(MAKE_DEPLOY[scenario])
    assert scenario in README_EKS, f"ci/{scenario}-values.yaml: say how it is installed (MAKE_DEPLOY or README_EKS)"
    return readme_eks_steps(CHART / "ci" / f"{scenario}-values.yaml")


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_every_custom_resource_has_its_crd_from_an_earlier_step(scenario: str) -> None:
    steps = scenario_steps(scenario)
    charts = [s for s in steps if "charts/churnops " in s.command + " "]
    assert charts and charts[0].objects, f"{scenario}: no step installs charts/churnops"
    assert any(o["kind"] == "ModelDeployment" or o["kind"] == "StatefulSet" for s in charts for o in s.objects)
    assert install_problems(steps, addon_groups()) == []


def test_make_deploy_uses_the_values_of_its_data_plane() -> None:
    for scenario, args in MAKE_DEPLOY.items():
        helm_lines = [line for line in make_steps(args) if "charts/churnops " in line.command + " "]
        assert [f"ci/{scenario}-values.yaml" in line.command for line in helm_lines] == [True], scenario


def test_the_rule_catches_crds_beside_their_objects() -> None:
    crd = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": "modeldeployments.churnops.io"},
        "spec": {"group": "churnops.io", "names": {"kind": "ModelDeployment"}},
    }
    md = {"apiVersion": "churnops.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "churn"}}
    route = {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "r"}}
    assert "gateway.networking.k8s.io" in addon_groups()
    together = install_problems([Step("one release", (crd, md, route))], addon_groups())
    assert len(together) == 1 and "same step" in together[0]
    assert install_problems([Step("crds", (crd,)), Step("chart", (md, route))], addon_groups()) == []
    assert "no earlier step" in install_problems([Step("chart", (md,))], set())[0]
