"""The order in which ``make test`` hands work to its pytest-xdist workers."""

from __future__ import annotations

import json
from pathlib import Path

from tests.support import groups

REPO = Path(__file__).resolve().parents[2]


def test_a_group_is_one_unit_and_units_go_longest_first() -> None:
    modules = ["a.py", "a.py", "b.py", "c.py", "d.py"]
    marked = [None, None, "shared", "shared", None]
    units = groups.units(modules, marked)
    assert units == ["a.py", "a.py", "shared", "shared", "d.py"]
    rank = groups.unit_order(units, modules, {"a.py": 30.0, "b.py": 20.0, "c.py": 15.0, "d.py": 1.0})
    # the group's modules add up (35 s) and put it before the longest single module
    assert sorted(rank, key=rank.__getitem__) == ["shared", "a.py", "d.py"]


def test_an_unmeasured_module_counts_as_a_typical_one() -> None:
    rank = groups.unit_order(["new.py", "old.py"], ["new.py", "old.py"], {"old.py": groups.UNMEASURED_S / 2})
    assert rank == {"new.py": 0, "old.py": 1}


def test_durations_are_read_from_a_junit_report(tmp_path: Path) -> None:
    report = tmp_path / "report.xml"
    report.write_text(
        '<testsuites><testsuite name="pytest">'
        '<testcase classname="tests.support.test_groups" name="t1" time="1.25"/>'
        '<testcase classname="tests.support.test_groups" name="t2" time="0.5"/>'
        '<testcase classname="tests.nowhere.test_gone" name="t" time="9"/>'
        "</testsuite></testsuites>"
    )
    assert groups.from_junit(report, REPO) == {"tests/support/test_groups.py": 1.8}


def test_a_missing_or_damaged_durations_file_orders_by_collection(tmp_path: Path) -> None:
    assert groups.load_durations(tmp_path / "absent.json") == {}
    damaged = tmp_path / "durations.json"
    damaged.write_text("{not json")
    assert groups.load_durations(damaged) == {}
    damaged.write_text(json.dumps({"tests/x.py": "slow", "tests/y.py": 2}))
    assert groups.load_durations(damaged) == {"tests/y.py": 2.0}


def test_the_measured_durations_name_only_modules_that_exist() -> None:
    """A moved or deleted module leaves a stale entry: refresh with ``make test-durations``."""
    measured = groups.load_durations()
    assert measured, f"{groups.DURATIONS} is missing or empty"
    stale = sorted(m for m in measured if not (REPO / m).is_file())
    assert not stale, f"{groups.DURATIONS.name} names modules that no longer exist: {stale}"
