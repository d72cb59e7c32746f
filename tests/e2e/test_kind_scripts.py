"""The kind end-to-end scripts (.github/workflows/e2e-kind.yml), run here as far as they can without a
cluster: against a fake kubectl that replays recorded ModelDeployment and InferenceService states, with
shellcheck over every shell script."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.kind.assert_rollout import Observation, check_promote, check_ready, check_rollback, parse, weights_seen
from tests.support.k8s_tools import ROOT

KIND = ROOT / "tests" / "e2e" / "kind"
SCRIPTS = sorted(KIND.glob("*.sh"))
STEPS = [5, 25, 50, 100]

# A fake kubectl: `get modeldeployment` moves to the next recorded state (the last one repeats),
# `get inferenceservices` answers from the current one. Other verbs replay fixed answers from $FAKE_DIR.
FAKE_KUBECTL = """\
import json, os, sys
d = os.environ["FAKE_DIR"]
args = sys.argv[1:]
with open(os.path.join(d, "calls"), "a") as f:
    f.write(" ".join(args) + "\\n")
if "create" in args:
    with open(os.path.join(d, "created.json"), "w") as f:
        f.write(sys.stdin.read())
    print("job.batch/created")
    sys.exit(0)
if "wait" in args or "logs" in args:
    sys.exit(0)
if "job" in args:
    print(open(os.path.join(d, "job.json")).read())
    sys.exit(0)
if "jsonpath={.spec.serving.hostnames[0]}" in args:
    print("churn.127.0.0.1.nip.io", end="")
    sys.exit(0)
states = json.load(open(os.path.join(d, "states.json")))
counter = os.path.join(d, "counter")
i = int(open(counter).read()) if os.path.exists(counter) else -1
if "modeldeployment" in args:
    i = min(i + 1, len(states) - 1)
    open(counter, "w").write(str(i))
    print(json.dumps(states[i]["md"]))
else:
    print(json.dumps(states[max(i, 0)]["isvcs"]))
"""


def md(ready: bool, phase: str = "Progressing", stable: str = "1", canary: str = "", weight: int = 0, since: str = "") -> dict[str, Any]:
    status: dict[str, Any] = {"phase": phase, "stableVersion": stable, "canaryWeight": weight}
    if canary:
        status["canaryVersion"] = canary
    status["conditions"] = [{"type": "Ready", "status": "True" if ready else "False", "lastTransitionTime": since}]
    return {"metadata": {"name": "churn"}, "spec": {"rollout": {"steps": STEPS}}, "status": status}


def isvcs(*ready: bool, since: str = "") -> dict[str, Any]:
    owner = [{"kind": "ModelDeployment", "name": "churn"}]
    items = [
        {
            "metadata": {"name": f"churn-{i}", "ownerReferences": owner},
            "status": {"conditions": [{"type": "Ready", "status": "True" if r else "False", "lastTransitionTime": since}]},
        }
        for i, r in enumerate(ready)
    ]
    other = {"metadata": {"name": "unrelated", "ownerReferences": []}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    return {"items": [*items, other]}


def state(md_obj: dict[str, Any], isvc_list: dict[str, Any]) -> dict[str, Any]:
    return {"md": md_obj, "isvcs": isvc_list}


def rollout(version: str, weights: list[int], end: dict[str, Any]) -> list[dict[str, Any]]:
    start = [state(md(True, "Promoted", "1"), isvcs(True))]
    steps = [state(md(True, "Progressing", "1", version, w), isvcs(True, True)) for w in weights]
    return start + steps + [state(end, isvcs(True))]


@pytest.fixture
def fake_kubectl(tmp_path: Path) -> Path:
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.parent.mkdir()
    kubectl.write_text(f"#!{sys.executable}\n{FAKE_KUBECTL}")
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    return kubectl


def run_assert(fake_kubectl: Path, phase: str, states: list[dict[str, Any]]) -> subprocess.CompletedProcess[str]:
    fake_dir = fake_kubectl.parent.parent
    (fake_dir / "states.json").write_text(json.dumps(states))
    (fake_dir / "counter").unlink(missing_ok=True)
    env = {**os.environ, "KUBECTL": str(fake_kubectl), "FAKE_DIR": str(fake_dir)}
    args = [sys.executable, str(KIND / "assert_rollout.py"), phase, "--name", "churn", "--interval", "0", "--timeout", "2"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=60, check=False)


def test_ready_only_after_the_inference_service(fake_kubectl: Path) -> None:
    states = [
        state(md(False, "Pending"), isvcs()),
        state(md(False), isvcs(False)),
        state(md(False), isvcs(True)),
        state(md(True), isvcs(True)),
    ]
    result = run_assert(fake_kubectl, "ready", states)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK (ready)" in result.stdout


def test_ready_before_the_inference_service_fails(fake_kubectl: Path) -> None:
    states = [state(md(False, "Pending"), isvcs()), state(md(True), isvcs(False)), state(md(True), isvcs(True))]
    result = run_assert(fake_kubectl, "ready", states)
    assert result.returncode == 1
    assert "Ready before any of its InferenceServices" in result.stderr


def test_ready_order_from_the_conditions_when_the_run_starts_late(fake_kubectl: Path) -> None:
    """Both Ready at the first poll (after `make demo-cluster` waited): the transition times decide."""
    late = [state(md(True, since="2026-01-01T10:00:05Z"), isvcs(True, since="2026-01-01T10:00:00Z"))]
    assert run_assert(fake_kubectl, "ready", late).returncode == 0
    early = [state(md(True, since="2026-01-01T10:00:00Z"), isvcs(True, since="2026-01-01T10:00:05Z"))]
    result = run_assert(fake_kubectl, "ready", early)
    assert result.returncode == 1 and "became Ready at 2026-01-01T10:00:00Z, before its InferenceServices" in result.stderr


def test_ready_times_out_when_never_ready(fake_kubectl: Path) -> None:
    result = run_assert(fake_kubectl, "ready", [state(md(False), isvcs(False))])
    assert result.returncode == 1 and "timed out" in result.stderr


def test_promotion_through_every_step(fake_kubectl: Path) -> None:
    states = rollout("2", [5, 5, 25, 50, 100], md(True, "Promoted", "2"))
    result = run_assert(fake_kubectl, "promote", states)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "stable version at the start: 1" in result.stdout


@pytest.mark.parametrize(
    ("weights", "end", "message"),
    [
        ([5, 50, 100], md(True, "Promoted", "2"), "not every step"),
        ([5, 25, 50, 100], md(True, "RolledBack", "1"), "was rolled back"),
        ([5, 25, 5, 50, 100], md(True, "Promoted", "2"), "went down"),
    ],
)
def test_promotion_failures(fake_kubectl: Path, weights: list[int], end: dict[str, Any], message: str) -> None:
    result = run_assert(fake_kubectl, "promote", rollout("2", weights, end))
    assert result.returncode == 1 and message in result.stderr, result.stdout + result.stderr


def test_rollback_of_a_broken_version(fake_kubectl: Path) -> None:
    result = run_assert(fake_kubectl, "rollback", rollout("3", [5, 25], md(True, "RolledBack", "1")))
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_promoted_broken_version_fails_the_rollback_phase(fake_kubectl: Path) -> None:
    result = run_assert(fake_kubectl, "rollback", rollout("3", STEPS, md(True, "Promoted", "3")))
    assert result.returncode == 1 and "should have been rolled back" in result.stderr


def test_decisions_without_a_new_canary_wait() -> None:
    steady = [parse(md(True, "Promoted", "1"), isvcs(True))]
    assert not check_promote(steady, "1") and not check_rollback(steady, "1")
    assert check_ready(steady)
    history = [Observation(True, "Progressing", "1", "2", w, tuple(STEPS)) for w in (0, 5, 5, 25)]
    assert weights_seen(history, "2") == [5, 25]


def test_parse_counts_only_owned_inference_services() -> None:
    obs = parse(md(True), isvcs(False))
    assert obs.isvcs_ready == {"churn-0": False}  # "unrelated" is Ready but not the ModelDeployment's


# --- the shell scripts ------------------------------------------------------------------------------


def test_shellcheck_every_script() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (Debian: apt-get install shellcheck)")
    assert SCRIPTS
    result = subprocess.run([shellcheck, "--severity=style", *map(str, SCRIPTS)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def bootstrap_job() -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": "churnops-bootstrap-features",
            "namespace": "churnops-system",
            "uid": "u1",
            "labels": {"app.kubernetes.io/component": "bootstrap"},
        },
        "spec": {
            "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
            "template": {
                "metadata": {
                    "labels": {
                        "app.kubernetes.io/component": "bootstrap",
                        "controller-uid": "u1",
                        "batch.kubernetes.io/controller-uid": "u1",
                        "job-name": "x",
                        "batch.kubernetes.io/job-name": "x",
                    }
                },
                "spec": {"containers": [{"name": "features", "image": "kind.local/churnops/churnops:0.1.0", "args": ["old"]}]},
            },
        },
        "status": {"succeeded": 1},
    }


@pytest.mark.parametrize(("kind", "expect"), [("good", "--seed 2"), ("broken", "--drift both")])
def test_register_version_clones_the_bootstrap_job(fake_kubectl: Path, kind: str, expect: str) -> None:
    if shutil.which("jq") is None:
        pytest.skip("jq is not installed (Debian: apt-get install jq; GitHub's runners have it)")
    fake_dir = fake_kubectl.parent.parent
    (fake_dir / "job.json").write_text(json.dumps(bootstrap_job()))
    env = {**os.environ, "KUBECTL": str(fake_kubectl), "FAKE_DIR": str(fake_dir)}
    result = subprocess.run(
        ["bash", str(KIND / "register_version.sh"), kind], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    created = json.loads((fake_dir / "created.json").read_text())
    assert created["metadata"]["name"].startswith(f"churnops-e2e-version-{kind}-")
    assert "uid" not in created["metadata"] and "status" not in created and "selector" not in created["spec"]
    assert created["spec"]["template"]["metadata"]["labels"] == {"app.kubernetes.io/component": "bootstrap"}
    [container] = created["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "kind.local/churnops/churnops:0.1.0"
    [script] = container["args"]
    assert expect in script and "train --mode cluster" in script
    assert ("--min-auc 0" in script) == (kind == "broken")


def test_register_version_refuses_an_unknown_kind(fake_kubectl: Path) -> None:
    result = subprocess.run(["bash", str(KIND / "register_version.sh"), "worse"], capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 2 and "good or broken" in result.stderr


def test_traffic_sends_requests_through_the_gateway(fake_kubectl: Path) -> None:
    bin_dir = fake_kubectl.parent
    (bin_dir / "curl").write_text('#!/usr/bin/env bash\necho "$@" >> "$FAKE_DIR/curl"\n')
    (bin_dir / "churnops").write_text("#!/usr/bin/env bash\necho token-for-test\n")
    for tool in ("curl", "churnops"):
        (bin_dir / tool).chmod(0o755)
    fake_dir = bin_dir.parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "KUBECTL": str(fake_kubectl),
        "FAKE_DIR": str(fake_dir),
        "CHURNOPS": str(bin_dir / "churnops"),
        "REQUESTS": "3",
    }
    result = subprocess.run(["bash", str(KIND / "traffic.sh"), "churn"], capture_output=True, text=True, env=env, timeout=60, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "3 answered, 0 failed" in result.stdout
    calls = (fake_dir / "curl").read_text().splitlines()
    assert len(calls) == 3
    assert all("https://churn.127.0.0.1.nip.io:8443/v1/models/churn:predict" in c and "Bearer token-for-test" in c for c in calls)
