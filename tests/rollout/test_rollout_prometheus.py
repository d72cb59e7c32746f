"""The runner reading a real Prometheus that scrapes the predictor (``--prometheus-url``): the operator's queries, one machine."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from churnops.serving.routing_table import RoutingTable, read_table
from churnops.training import registry
from churnops_contract import registry as names
from tests.monitoring.alerting_fixtures import prometheus
from tests.rollout.conftest import BAD, HEALTHY, OPTIONS, STABLE, Setup, Traffic, cli, start_runner, status, wait_for
from tests.support import groups

pytestmark = [
    groups.ROLLOUT_MODELS,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs prometheus (Debian: apt-get install prometheus)"),
]


def run_to_the_end(setup: Setup, url: str, log: Path) -> None:
    runner = start_runner(setup, log, "--until-settled", source=["--prometheus-url", url])
    try:
        with Traffic(setup) as traffic:
            assert runner.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if runner.poll() is None:
            runner.kill()
    assert traffic.errors == []


def test_rollouts_judged_from_prometheus(setup: Setup, tmp_path: Path) -> None:
    rules = tmp_path / "rules.yml"
    rules.write_text("groups: []\n")
    host = setup.server.url.removeprefix("http://")
    with prometheus(tmp_path / "prometheus", rules, {"churnops-predictor": [host]}) as url:
        cli(setup, "start", "--version", STABLE, "--interval", "3s", *OPTIONS)
        wait_for(lambda: setup.serves(STABLE), "the route serves version 1")
        cli(setup, "start", "--version", HEALTHY)
        run_to_the_end(setup, url, tmp_path / "runner.log")
        st = status(setup)
        assert (st["phase"], st["stableVersion"], st["canaryVersion"]) == ("Promoted", HEALTHY, None)
        assert registry.alias_version(setup.registry, names.CHAMPION) == HEALTHY
        checks = [e for e in setup.store.timeline() if e["kind"] == "check" and e["canary"] == HEALTHY]
        assert {c["weight"] for c in checks if c["outcome"] == "pass" and c["stepSamples"] >= 20} == {5, 25, 50, 100}

        cli(setup, "start", "--version", BAD)
        run_to_the_end(setup, url, tmp_path / "runner.log")
        st = status(setup)
        assert (st["phase"], st["stableVersion"], st["rejectedVersions"]) == ("RolledBack", HEALTHY, [BAD])
        judged = [e for e in setup.store.timeline() if e["kind"] == "check" and e["canary"] == BAD and e["outcome"] != "wait"]
        assert [c["failedChecks"] for c in judged] == [1, 2] and all(c["figures"]["score_psi"]["outcome"] == "fail" for c in judged)
        assert read_table(setup.store.routing_path).same_routes(RoutingTable(HEALTHY))
