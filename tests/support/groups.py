"""How ``make test`` spreads the suite over pytest-xdist workers (``--dist loadgroup``).

Tests live beside the code they test (``tests/<package>/`` mirrors ``models/churnops/<package>/``,
``operators/``, ``pipelines/``, ``charts/``). What decides a test's worker is the expensive fixture it
shares: a session fixture is built once per worker, so the modules that share one carry the same group
mark below and run on one worker. Every other module is a unit of its own. Units are handed out
longest first, by the time each module took in the last measured run (``tests/durations.json``,
refreshed by ``make test-durations``), so that no worker is left alone with a long unit at the end.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

# Models trained and registered in MLflow, and the served layout (tests/serving/conftest.py).
SERVING_MODELS = pytest.mark.xdist_group("serving-models")
# A champion and challengers, and a data dir the rollout runner drives (tests/rollout/conftest.py).
ROLLOUT_MODELS = pytest.mark.xdist_group("rollout-models")
# A monitored model, its traffic and a running predictor (tests/monitoring/monitor_fixtures.py).
MONITORED = pytest.mark.xdist_group("monitored")
# A small demo story: models, rollouts, an audit trail (tests/reports/conftest.py).
REPORT_STORY = pytest.mark.xdist_group("report-story")

DURATIONS = Path(__file__).resolve().parents[1] / "durations.json"
UNMEASURED_S = 5.0  # a module missing from the measurements (new since): about a typical module


def group_of(item: pytest.Item) -> str | None:
    marks = list(item.iter_markers("xdist_group"))
    return str(marks[0].args[0] if marks[0].args else marks[0].kwargs.get("name", "default")) if marks else None


def module_of(item: pytest.Item, root: Path) -> str:
    return item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else item.path.as_posix()


def load_durations(path: Path = DURATIONS) -> dict[str, float]:
    """Seconds per test module from the last measured run; empty when the file is missing or unreadable."""
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in raw.items() if isinstance(v, int | float)} if isinstance(raw, dict) else {}


def units(modules: Sequence[str], groups: Sequence[str | None]) -> list[str]:
    """The work unit of each test: its group when it has one, else its module."""
    return [group or module for module, group in zip(modules, groups, strict=True)]


def unit_order(units_of_tests: Sequence[str], modules: Sequence[str], measured: Mapping[str, float]) -> dict[str, int]:
    """Rank of each unit, longest first (a unit's time is the sum of its modules' measured times)."""
    seconds: dict[str, float] = {}
    seen: set[tuple[str, str]] = set()
    for unit, module in zip(units_of_tests, modules, strict=True):
        if (unit, module) not in seen:
            seen.add((unit, module))
            seconds[unit] = seconds.get(unit, 0.0) + measured.get(module, UNMEASURED_S)
    ranked = sorted(seconds, key=lambda u: -seconds[u])  # stable for ties: collection order
    return {unit: rank for rank, unit in enumerate(ranked)}


def from_junit(xml: Path, root: Path) -> dict[str, float]:
    """Seconds per test module (setup, call and teardown) from a pytest ``--junitxml`` report."""
    import xml.etree.ElementTree as ET  # noqa: PLC0415 - only `make test-durations` reads reports

    totals: dict[str, float] = {}
    for case in ET.parse(xml).getroot().iter("testcase"):
        parts = (case.get("classname") or "").split(".")
        ends = [i for i, p in enumerate(parts) if p.startswith("test_")]
        if not ends:
            continue
        module = "/".join(parts[: ends[0] + 1]) + ".py"
        if (root / module).exists():
            totals[module] = totals.get(module, 0.0) + float(case.get("time") or 0.0)
    return {m: round(s, 1) for m, s in sorted(totals.items())}


if __name__ == "__main__":
    import sys

    report, root = Path(sys.argv[1]), Path(__file__).resolve().parents[2]
    measured = from_junit(report, root)
    if not measured:
        sys.exit(f"{report}: no test cases of this repository; not writing {DURATIONS}")
    DURATIONS.write_text(json.dumps(measured, indent=1) + "\n")
    print(f"{DURATIONS.relative_to(root)}: {len(measured)} modules, {sum(measured.values()) / 60:.1f} min of tests")
