"""A rejected candidate (``train --register-rejected``) is registered for inspection only: no rollout starts from it,
whether asked on the command line or written into the deployment's spec by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from churnops.cli import main
from churnops.rollout.runner import Runner, RunnerConfig
from churnops.rollout.store import DeploymentStore
from churnops.training import registry
from churnops.training.runs import OwnData, train_own_data
from tests.training.byod import FAST, contract_table


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """v1 passed its gates (champion); v2 failed the fairness gate and was registered as a rejected candidate."""
    root = tmp_path_factory.mktemp("rejected")
    table = root / "customers.csv"
    contract_table().to_csv(table, index=False)
    reg = registry.RegistryConfig.embedded(root / "data")
    first = train_own_data(OwnData(table, "customer", "as_of", "churned", segment_column="contract"), root / "v1", FAST, reg)
    assert first.registered is not None and first.registered.version == "1"
    registry.promote(reg, "1", "first model")
    gated = OwnData(table, "customer", "as_of", "churned", segment_column="contract", gate_segment=True)
    rejected = train_own_data(gated, root / "v2", FAST, reg, register_rejected=True)
    assert rejected.registered is not None and rejected.registered.version == "2"
    assert registry.rejected_gates(reg, "2") == "fairness_gap"
    return root / "data"


def test_rollout_start_refuses_a_rejected_candidate_naming_the_option(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--data-dir", str(data_dir), "rollout", "start", "--name", "cli", "--version", "2"]) != 0
    err = capsys.readouterr().err
    assert "--version" in err and "version 2 of churn-classifier is a rejected candidate (failed quality gates: fairness_gap)" in err
    assert not DeploymentStore(data_dir, "cli").routing_path.exists()  # nothing written, nothing routed


def test_a_spec_written_by_hand_never_routes_to_a_rejected_candidate(data_dir: Path) -> None:
    runner = Runner.build(RunnerConfig(data_dir, "by-hand"))
    first = runner.apply({"model": {"registeredModel": "churn-classifier", "version": "1"}})
    assert first.stable == "1" and first.canary is None
    store = DeploymentStore(data_dir, "by-hand")
    with store.locked():  # what an edit of the spec file (or an older CLI) would do
        store.create_or_update({"model": {"version": "2"}}, now=0.0)
    for _ in range(3):
        report = runner.step(analyse=False)
        assert report.canary is None and report.stable == "1"
    status = store.load().status
    assert "rejected candidate" in str(status.get("message")) and "fairness_gap" in str(status.get("message"))
    assert json.loads(store.routing_path.read_text())["stable"] == "1"
    assert registry.alias_version(registry.RegistryConfig.embedded(data_dir), registry.CHAMPION) == "1"
