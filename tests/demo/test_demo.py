"""``churnops demo --fast``: the main job end to end, as a user runs it.

The demo runs as a real ``churnops`` process with its own predictor and
monitoring page processes. It is first interrupted with SIGINT (Ctrl-C) once
its servers are up, then run again in the same directory to completion; while
that run is under way, headless Chromium opens the monitoring page whose URL
it printed. What the tests assert comes from what the run leaves: the
rollout's recorded status and timeline, the audit trail, the reports.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import pytest

from churnops.cli import main
from churnops.demo.story import COMPLETE, INCOMPLETE, MARKER, calibration_breached, first_calibration
from churnops_contract.policy import RetrainingPolicy
from tests.support.browser import chromium

CHURNOPS = str(Path(sys.executable).parent / "churnops")
DEMO_TIMEOUT_S = 1_200  # the fast demo takes about 5 minutes on 2 cores; a stuck stage fails long before this
# The module's runs (an interrupted one, then a whole one) are set up inside the first test's time limit.
pytestmark = pytest.mark.timeout(DEMO_TIMEOUT_S + 600)
PAGE_FIGURES = "return Object.fromEntries([...document.querySelectorAll('[data-path]')].map(e => [e.dataset.path, e.textContent]))"


@dataclass
class Interrupted:
    code: int
    stderr: str
    ports_open_after: list[str]
    marker: str = ""


@dataclass
class Finished:
    code: int
    stdout: str
    data_dir: Path
    page_figures: dict[str, str] = field(default_factory=dict)

    def timeline(self) -> list[dict[str, Any]]:
        lines = (self.data_dir / "rollout" / "churn" / "timeline.jsonl").read_text().splitlines()
        return [json.loads(line) for line in lines]

    def events(self, reason: str) -> list[dict[str, Any]]:
        return [e for e in self.timeline() if e.get("kind") == "event" and e.get("reason") == reason]

    def deployment(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads((self.data_dir / "rollout" / "churn" / "deployment.json").read_text())
        return doc


def demo(data_dir: Path, log: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("w") as out:
        return subprocess.Popen(
            [CHURNOPS, "--data-dir", str(data_dir), "demo", "--fast"], stdout=out, stderr=subprocess.PIPE, text=True, env=env
        )


def until(what: str, check: Callable[[], Any], proc: subprocess.Popen[str], timeout_s: float) -> Any:
    """Poll ``check`` until it returns something truthy; fail early if the demo has exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = check()
        if found:
            return found
        if proc.poll() is not None:
            pytest.fail(f"the demo exited ({proc.returncode}) before {what}: {proc.stderr.read() if proc.stderr else ''}")
        time.sleep(1)
    pytest.fail(f"timed out waiting for {what}")


def urls(data_dir: Path, since: float = 0.0) -> dict[str, str] | None:
    """The servers' URLs the demo wrote, once a run started after ``since`` has written them."""
    path = data_dir / "reports" / "urls.json"
    try:
        if path.stat().st_mtime < since:  # the previous run's
            return None
        found: dict[str, str] = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return found


def listening(url: str) -> bool:
    where = urlparse(url)
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((where.hostname or "127.0.0.1", where.port or 80)) == 0


def interrupt_once_serving(data_dir: Path, log: Path) -> Interrupted:
    proc = demo(data_dir, log)
    try:
        servers = until("the predictor and the page to be up", lambda: urls(data_dir), proc, 600)
        assert all(listening(u) for u in servers.values())  # urls.json is written once both answer their health checks
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Interrupted(proc.returncode, stderr, [u for u in servers.values() if listening(u)])


def page_figures(url: str, profile: Path, proc: subprocess.Popen[str]) -> dict[str, str]:
    """The monitoring page as a browser shows it, once it summarises logged predictions."""
    with chromium(profile) as browser:
        browser.get(url)

        def rows() -> dict[str, str] | None:
            shown: dict[str, str] = browser.execute_script(PAGE_FIGURES)
            count = shown.get("versions.0.rows", "")
            return shown if count.isdigit() and int(count) > 0 else None

        found: dict[str, str] = until("the monitoring page to show predictions", rows, proc, 300)
        return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Interrupted, Finished]]:
    root = tmp_path_factory.mktemp("demo")
    data_dir = root / "data"
    interrupted = interrupt_once_serving(data_dir, root / "interrupted.log")
    interrupted.marker = (data_dir / MARKER).read_text()
    (data_dir / "left-by-the-interrupted-run.txt").write_text("the next demo replaces this directory\n")

    started = time.time()
    proc = demo(data_dir, root / "demo.log")
    try:
        servers = until("the demo to print its URLs", lambda: urls(data_dir, started), proc, 600)
        figures = page_figures(servers["page"], root / "chromium-profile", proc)
        proc.wait(timeout=DEMO_TIMEOUT_S)
        stderr = proc.stderr.read() if proc.stderr else ""
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            proc.wait(timeout=120)
    stdout = (root / "demo.log").read_text()
    assert proc.returncode == 0, f"the demo failed ({proc.returncode}):\n{stdout[-4000:]}\n{stderr[-4000:]}"
    yield interrupted, Finished(proc.returncode, stdout, data_dir, figures)


def test_ctrl_c_stops_the_demo_and_every_server_it_started(runs: tuple[Interrupted, Finished]) -> None:
    interrupted, _ = runs
    assert interrupted.code == 130, interrupted.stderr
    assert "churnops: interrupted" in interrupted.stderr
    assert "Traceback" not in interrupted.stderr
    assert interrupted.ports_open_after == []  # the predictor and the monitoring page are gone
    assert interrupted.marker == INCOMPLETE  # the directory says its outputs are not a whole run


def test_a_second_run_replaces_the_previous_outputs(runs: tuple[Interrupted, Finished]) -> None:
    _, done = runs
    assert not (done.data_dir / "left-by-the-interrupted-run.txt").exists()
    assert (done.data_dir / MARKER).read_text() == COMPLETE


def test_the_timeline_shows_promotion_drift_retraining_and_automatic_rollback(runs: tuple[Interrupted, Finished]) -> None:
    _, done = runs
    promoted = done.events("Promoted")
    assert len(promoted) >= 2, "the challenger and the retrained model are promoted"
    assert done.events("DriftDetected"), "the shifted population raises a drift alert"
    (triggered,) = done.events("RetrainingTriggered")
    # the shift triggers it: through the live drift verdict or the estimated AUC it pulls down, whichever comes first
    assert "drift" in triggered["message"] or "estimated AUC" in triggered["message"], triggered["message"]
    (finished,) = done.events("RetrainingFinished")
    (rolled_back,) = done.events("RolledBack")
    checks = [e for e in done.timeline() if e.get("kind") == "check"]
    assert all("figures" in c for c in checks)  # every check the analysis made is recorded with its figures
    worse = rolled_back["message"].split()[1]  # "Canary <version> rolled back to <stable>: ..."
    status = done.deployment()["status"]
    assert status["rolloutPhase"] == "RolledBack"
    assert status["canaryVersion"] is None
    assert status["stableVersion"] == rolled_back["stable"] != worse
    # the retrained challenger came from the retraining run and was promoted before the worse model arrived
    assert finished["time"] < rolled_back["time"]
    assert f"challenger version {status['stableVersion']}" in finished["message"]
    assert f"{len(promoted)} promotion(s), 1 rollback(s)" in done.stdout
    # the retraining fixed what the alert said: the first calibration the policy measured against the retrained
    # champion (on the post-shift outcomes) is no breach of its rule, where the old champion's was
    rule = RetrainingPolicy()
    retrained = str(status["stableVersion"])
    since = max(float(e["time"]) for e in promoted if str(e.get("stable")) == retrained)
    measured = first_calibration(done.timeline(), retrained, since)
    assert measured is not None, "no calibration measured against the retrained champion"
    ratio, z, labelled = (measured["signals"][k] for k in ("calibrationRatio", "calibrationZ", "labelled"))
    assert z is not None and not calibration_breached(rule, ratio, labelled, z), measured
    assert f"calibration against v{retrained} after its promotion: observed/expected churners {ratio:.2f}" in done.stdout
    assert "no calibration breach" in done.stdout
    old = [e for e in done.timeline() if e.get("kind") == "evaluation" and e.get("version") == triggered["stable"]]
    old = [e for e in old if e["signals"].get("calibrationRatio") is not None]
    assert old, "no calibration measured against the champion the shift degraded"
    s = old[-1]["signals"]
    assert calibration_breached(rule, s["calibrationRatio"], s["labelled"], s["calibrationZ"]), s


def test_a_subtly_worse_canary_is_rolled_back_by_the_auc_test(runs: tuple[Interrupted, Finished]) -> None:
    _, done = runs
    (rolled_back,) = done.events("RolledBack")
    (case,) = [e for e in done.timeline() if e.get("kind") == "outcomes"]  # the demo's record of the AUC case
    worse, stable = case["canary"], case["stable"]
    assert f"Canary {worse} rolled back to {stable}" in rolled_back["message"]
    assert "auc_delta fail" in rolled_back["message"]  # the reason names the AUC test, not a gross failure
    assert "without days_to_renewal" in case["made"]  # made by the training code, a renewal feature left out
    assert -0.15 < case["holdout"]["delta"] <= -0.025  # a little worse offline, on the population it will serve
    checks = [e for e in done.timeline() if e.get("kind") == "check" and e.get("canary") == worse]
    judged = [c["figures"]["auc_delta"] for c in checks if "auc_delta" in c["figures"]]
    # the test holds while labels are few or the evidence is short, then fails the canary
    assert judged[0]["outcome"] == "undecided" and judged[-1]["outcome"] == "fail", [j["outcome"] for j in judged]
    assert any("delayed labels" in c["reason"] for c in checks)  # held for labels at first (requireAUC, minLabelled)
    failing = [c for c in checks if c["outcome"] == "fail"]
    assert len(failing) == 2 and all("auc_delta fail" in c["reason"] for c in failing)
    for check in failing:  # the scores look normal: only the delayed outcomes show the difference
        psi = check["figures"]["score_psi"]
        assert psi["outcome"] == "pass" and psi["canary"] < psi["limit"] / 2, psi
    auc = case["auc"]
    assert auc["verdict"] == "fail" and auc["outcomes"][-1] == "fail"
    assert -0.15 < auc["delta"] <= -0.025, auc  # about 0.03 or more below the stable model, not a gross failure
    assert auc["delta"] == round(auc["canary"] - auc["stable"], 5)
    minimum = done.deployment()["spec"]["rollout"]["analysis"]["minLabelled"]
    assert auc["labelledCanary"] >= minimum and auc["labelledStable"] >= minimum, auc
    assert f"the AUC case of v{worse}" in done.stdout


def test_every_prediction_has_reasons_and_the_audit_trail_verifies(runs: tuple[Interrupted, Finished]) -> None:
    _, done = runs
    summary = json.loads((done.data_dir / "reports" / "demo_summary.json").read_text())
    assert summary["audited_predictions"] > 1_000  # the synthetic traffic, each answer audited with its reasons
    traffic = summary["traffic"]
    assert (traffic["errors"], traffic["no_answer"]) == ({}, 0)  # traffic starts once the endpoint is ready; switches lose nothing
    assert sum(traffic["by_version"].values()) == traffic["sent"]
    verify = subprocess.run([CHURNOPS, "--data-dir", str(done.data_dir), "audit", "verify"], capture_output=True, text=True, check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "because" in done.stdout  # the riskiest customers, online through the churn endpoint, with reasons


def test_the_reports_are_written(runs: tuple[Interrupted, Finished]) -> None:
    _, done = runs
    reports = done.data_dir / "reports"
    foundation = json.loads((reports / "foundation.json").read_text())
    assert foundation["validation_pass_rate"] == {"raw": 1.0, "features": 1.0}
    assert foundation["online_features_returned"] == foundation["features"] == 116
    html = (reports / "demo_report.html").read_text()
    assert html.count("<img") + html.count("<svg") >= 5  # plots, inlined
    assert "RolledBack" in html
    assert "The AUC test: canaries judged on delayed outcomes" in html  # the AUC case with its figures and checks
    champion = json.loads((done.data_dir / "reports" / "demo_summary.json").read_text())["champion"]
    compliance = json.loads((reports / "compliance" / f"compliance_{champion}.json").read_text())
    assert compliance["model_version"] == champion
    assert (reports / "scores.parquet").exists()


def test_the_monitoring_page_showed_live_predictions(runs: tuple[Interrupted, Finished]) -> None:
    _, done = runs
    assert int(done.page_figures["versions.0.rows"]) > 0
    assert len(done.page_figures) > 20  # scores, drift, performance, business and fairness figures


def test_a_directory_the_demo_did_not_make_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "mine.csv"
    mine.write_text("customer_id\n1\n")
    assert main(["--data-dir", str(tmp_path), "demo", "--fast"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert mine.exists()
