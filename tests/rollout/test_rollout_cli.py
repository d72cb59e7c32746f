"""`churnops rollout` as a person uses it, against a running predictor; and a runner killed mid-rollout."""

from __future__ import annotations

import json
import signal
from pathlib import Path

from mlflow.tracking import MlflowClient

from churnops.serving.routing_table import RoutingTable, read_table
from churnops.training import registry
from churnops_contract import registry as names
from tests.rollout.conftest import BAD, HEALTHY, OPTIONS, STABLE, Setup, Traffic, cli, start_runner, status, wait_for
from tests.support import groups

pytestmark = groups.ROLLOUT_MODELS


def test_start_status_promote_and_rollback_by_hand(setup: Setup) -> None:
    assert "Deployed: Serving version 1" in cli(setup, "start", "--version", STABLE, "--interval", "10s", *OPTIONS)
    wait_for(lambda: setup.serves(STABLE), "the route serves version 1")
    assert "canary v2 at 5%" in cli(setup, "start", "--version", HEALTHY)
    shown = cli(setup, "status")
    assert "Progressing" in shown and "canary 2 at 5% (step 1 of 4), failed checks 0/2" in shown
    doc = json.loads(cli(setup, "status", "--json"))
    assert (doc["status"]["canaryVersion"], doc["status"]["canaryWeight"], doc["metadata"]["generation"]) == (HEALTHY, 5, 2)

    assert "Promoted: Version 2 promoted over 1 at 5% by hand: checked the canary" in cli(
        setup, "promote", "--reason", "checked the canary"
    )
    assert registry.alias_version(setup.registry, names.CHAMPION) == HEALTHY
    assert read_table(setup.store.routing_path).same_routes(RoutingTable(HEALTHY))
    assert status(setup)["history"][-1]["reason"] == "manual: checked the canary"
    wait_for(lambda: setup.serves(HEALTHY), "the route serves the promoted version")

    assert "canary v3 at 5%" in cli(setup, "start", "--version", BAD)
    assert "RolledBack" in cli(setup, "rollback", "--reason", "not today")
    st = status(setup)
    assert (st["stableVersion"], st["canaryVersion"], st["rejectedVersions"], st["phase"]) == (HEALTHY, None, [BAD], "RolledBack")
    assert read_table(setup.store.routing_path).same_routes(RoutingTable(HEALTHY))
    tags = MlflowClient(setup.registry.tracking_uri).get_model_version(setup.registry.model_name, BAD).tags
    assert tags[names.TAG_ROLLBACK_REASON] == "manual: not today" and names.TAG_ROLLED_BACK_AT in tags
    assert registry.alias_version(setup.registry, names.CHAMPION) == HEALTHY

    assert "nothing to promote" in cli(setup, "promote", code=5)
    assert "rolled back before: no canary" in cli(setup, "start", "--version", BAD)  # rejected: not retried by itself
    assert "canary v3 at 5%" in cli(setup, "start", "--version", BAD, "--retry")
    assert "not-a-duration" in cli(setup, "start", "--version", BAD, "--interval", "not-a-duration", code=2)
    assert "no deployment 'other'" in cli(setup, "status", "--name", "other", code=3)
    timeline = cli(setup, "status", "--timeline")
    assert "RolledBack: Canary 3 rolled back to 2 at 5% by hand: not today" in timeline
    assert "RetryAllowed" in timeline


def test_a_runner_killed_mid_rollout_is_replaced_and_ends_the_same(setup: Setup, tmp_path: Path) -> None:
    cli(setup, "start", "--version", STABLE, "--interval", "1s", *OPTIONS)
    wait_for(lambda: setup.serves(STABLE), "the route serves version 1")
    cli(setup, "start", "--version", HEALTHY)
    log = tmp_path / "runner.log"
    first = start_runner(setup, log)
    try:
        with Traffic(setup) as traffic:
            wait_for(lambda: status(setup)["canaryWeight"] >= 25, "the canary reached 25 %")
        # without traffic no step gathers its samples: the rollout stays where it is, mid-way
        assert "already driven by a runner" in cli(setup, "run", "--predictor-url", setup.server.url, code=5)
    finally:
        first.send_signal(signal.SIGKILL)  # no chance to clean up: the next runner starts from the files alone
        first.wait()
    killed = status(setup)
    assert (killed["phase"], killed["canaryVersion"]) == ("Progressing", HEALTHY) and killed["canaryWeight"] >= 25
    second = start_runner(setup, log, "--until-settled")
    try:
        with Traffic(setup) as more:
            assert second.wait(timeout=600) == 0, log.read_text()[-3000:]
    finally:
        if second.poll() is None:
            second.kill()
    assert traffic.errors == [] and more.errors == []
    st = status(setup)
    assert (st["phase"], st["stableVersion"], st["canaryVersion"]) == ("Promoted", HEALTHY, None)
    assert registry.alias_version(setup.registry, names.CHAMPION) == HEALTHY
    assert read_table(setup.store.routing_path).same_routes(RoutingTable(HEALTHY))
    timeline = setup.store.timeline()
    events = [e["reason"] for e in timeline if e["kind"] == "event"]
    assert events.count("CanaryStarted") == 1 and events.count("Promoted") == 1 and "RolledBack" not in events
    weights = [e["weight"] for e in timeline if e["kind"] in ("routing", "check") and e.get("canary") == HEALTHY]
    assert weights == sorted(weights) and weights[0] == 5 and weights[-1] == 100  # never back down, across the restart
    passed = {c["weight"] for c in timeline if c["kind"] == "check" and c["outcome"] == "pass" and c["figures"]["samples"] >= 20}
    assert passed == {5, 25, 50, 100}
