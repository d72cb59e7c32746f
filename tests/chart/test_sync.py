"""The chart's copies of manifests/ (CRDs, rules, Alertmanager, dashboards, the ModelDeployment schema) are current."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from charts.sync import differences, spec_definition, sync

from tests.chart.render import CHART
from tests.support.k8s_tools import ROOT

KOPF_PEERING_CRD = "kopf.dev_clusterkopfpeerings.yaml"  # owned by the chart: kopf ships no CRD file


def test_chart_copies_equal_the_canonical_files() -> None:
    assert differences() == [], "run `make chart-sync`"


def test_chart_crds_are_the_canonical_ones_plus_kopf_peering() -> None:
    canonical = {p.name for p in (ROOT / "manifests" / "crds").glob("*.yaml")}
    assert {p.name for p in (CHART / "crds").glob("*.yaml")} == canonical | {KOPF_PEERING_CRD}


def test_a_stale_copy_is_reported_and_repaired(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(ROOT / "manifests", root / "manifests")
    chart = root / "charts" / "churnops"
    shutil.copytree(CHART, chart)
    rules = root / "manifests" / "monitoring" / "rules" / "churnops.rules.yaml"
    rules.write_text(rules.read_text() + "\n# edited\n")
    crd = root / "manifests" / "crds" / "churnops.io_modeldeployments.yaml"
    crd.write_text(crd.read_text().replace("maximum: 100", "maximum: 99", 1))
    found = differences(root, chart)
    assert any("churnops.rules.yaml" in f for f in found) and any("values.schema.json" in f for f in found), found
    sync(root, chart)
    assert differences(root, chart) == []
    assert json.loads((chart / "values.schema.json").read_text())["definitions"]["modelDeploymentSpec"] == spec_definition(crd)
