"""The chart's copies of manifests/ (CRDs, rules, Alertmanager, dashboards, the ModelDeployment schema) are current."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from charts.sync import differences, spec_definition, sync

from tests.charts.render import CHART, CRD_CHART
from tests.support.k8s_tools import ROOT


def test_chart_copies_equal_the_canonical_files() -> None:
    assert differences() == [], "run `make chart-sync`"


def test_chart_crds_are_the_canonical_ones() -> None:
    """One copy of each CRD in manifests/crds (kopf ships no CRD file for its peering: ours is there too), in the
    CRD chart only: the platform chart creates objects of these kinds, so it cannot define them as well."""
    canonical = {p.name for p in (ROOT / "manifests" / "crds").glob("*.yaml")}
    assert {"churnops.io_modeldeployments.yaml", "kopf.dev_clusterkopfpeerings.yaml"} <= canonical
    assert {p.name for p in (CRD_CHART / "files" / "crds").glob("*.yaml")} == canonical
    for chart in (CHART, CRD_CHART):
        assert not (chart / "crds").exists(), f"{chart.name}/crds/ is never upgraded by Helm"
    assert not (CHART / "files" / "crds").exists()


def test_a_stale_copy_is_reported_and_repaired(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "manifests", root / "manifests")
    chart = root / "charts" / "churnops"
    shutil.copytree(CHART, chart)
    shutil.copytree(CRD_CHART, root / "charts" / "churnops-crds")
    rules = root / "manifests" / "monitoring" / "rules" / "churnops.rules.yaml"
    rules.write_text(rules.read_text() + "\n# edited\n")
    crd = root / "manifests" / "crds" / "churnops.io_modeldeployments.yaml"
    crd.write_text(crd.read_text().replace("maximum: 100", "maximum: 99", 1))
    found = differences(root, chart)
    assert any("churnops.rules.yaml" in f for f in found) and any("values.schema.json" in f for f in found), found
    assert any(f.startswith("charts/churnops-crds/files/crds/churnops.io_modeldeployments.yaml") for f in found), found
    sync(root, chart)
    assert differences(root, chart) == []
    assert json.loads((chart / "values.schema.json").read_text())["definitions"]["modelDeploymentSpec"] == spec_definition(crd)
