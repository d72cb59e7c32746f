"""Every alert's runbook link points at a section that exists in the README."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    heads = re.findall(r"^#+ (.+)$", markdown, re.M)
    return {re.sub(r"[^a-z0-9 -]", "", h.lower()).replace(" ", "-") for h in heads}


def test_every_runbook_url_resolves_to_a_readme_section() -> None:
    rules = yaml.safe_load((ROOT / "manifests" / "monitoring" / "rules" / "churnops.rules.yaml").read_text())
    alerts = [r for g in rules["groups"] for r in g["rules"] if "alert" in r]
    assert alerts
    anchors = _anchors((ROOT / "README.md").read_text())
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]
        assert url.split("#", 1)[1] in anchors, f"{alert['alert']}: {url} has no README section"
