"""The operator as a process against kmock's Kubernetes API, a Prometheus fake, a KFP fake and a real MLflow server.

Every test ends with the RBAC check (``conftest.k8s``): a call the operator's
ClusterRole would refuse fails the test.
"""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from tests.operators.fakes import Outage, Traffic
from tests.operators.harness import ISVC_PATH, MD_PATH, NS, Cluster, OperatorProcess

FAST = {"interval": "0.4s", "minSamples": 100, "failureThreshold": 2}


def spec(model: str, version: str = "1", **rollout: Any) -> dict[str, Any]:
    return {"model": {"registeredModel": model, "version": version}, "featureService": "churn_v1", "rollout": {**FAST, **rollout}}


def start_stable(k8s: Cluster, model: str, versions: int = 2, **rollout: Any) -> None:
    k8s.register(model, versions)
    for v in range(1, versions + 1):
        k8s.prom.set(str(v), Traffic())
    k8s.operator.start()
    k8s.apply_md("churn", spec(model, **rollout))
    k8s.wait(
        "version 1 serving", lambda: (k8s.isvc("churn") or {}).get("metadata", {}).get("labels", {}).get("churnops.io/model-version") == "1"
    )


def canary_percent(k8s: Cluster) -> int | None:
    predictor = ((k8s.isvc("churn") or {}).get("spec") or {}).get("predictor") or {}
    value = predictor.get("canaryTrafficPercent")
    return int(value) if value is not None else None


def conditions(k8s: Cluster, name: str = "churn") -> dict[str, str]:
    return {c["type"]: c["status"] for c in k8s.status(name).get("conditions") or []}


class Recorder:
    """Samples the status and serving objects in a thread; checks the invariants on every sample."""

    def __init__(self, k8s: Cluster, name: str = "churn") -> None:
        self.k8s, self.name = k8s, name
        self.samples: list[dict[str, Any]] = []
        self.violations: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            status = self.k8s.status(self.name)
            isvcs = self.k8s.api.get(ISVC_PATH.format(ns=NS)).json().get("items") or []
            route = self.k8s.route(self.name)
            weights = [ref.get("weight") for rule in ((route or {}).get("spec") or {}).get("rules") or [] for ref in rule["backendRefs"]]
            canaries = [i for i in isvcs if i["metadata"]["labels"].get("churnops.io/role") == "canary"]
            if len(canaries) > 1:
                self.violations.append(f"{len(canaries)} canary InferenceServices")
            if weights and sum(weights) != 100:
                self.violations.append(f"route weights {weights} do not sum to 100")
            self.samples.append({"rollout": status.get("rolloutId"), "weight": status.get("canaryWeight"), "route": weights})
            time.sleep(0.1)

    def __enter__(self) -> Recorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)

    def assert_monotone(self) -> None:
        last: dict[Any, int] = {}
        for s in self.samples:
            if s["rollout"] is None or not s["weight"]:
                continue
            assert s["weight"] >= last.get(s["rollout"], 0), f"weight went down within rollout {s['rollout']}: {self.samples}"
            last[s["rollout"]] = s["weight"]
        assert not self.violations, self.violations


def test_healthy_canary_is_promoted_through_every_step(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    assert k8s.status("churn")["phase"] == "Promoted"
    seen: list[int] = []
    with Recorder(k8s) as rec:
        k8s.patch_md_spec("churn", {"model": {"version": "2"}})

        def promoted() -> bool:
            percent = canary_percent(k8s)
            if percent is not None and (not seen or seen[-1] != percent):
                seen.append(percent)
            return k8s.status("churn").get("stableVersion") == "2" and percent is None

        k8s.wait("promotion of version 2", promoted, 60, every=0.02)
    rec.assert_monotone()
    assert seen == [5, 25, 50, 100], f"KServe canary percentages seen: {seen}"
    assert (k8s.isvc("churn") or {})["metadata"]["labels"]["churnops.io/model-version"] == "2"
    k8s.wait("champion alias moved", lambda: k8s.alias(model, "champion") == "2")
    # The operator writes the alias first and the tags after it; wait for the last write.
    k8s.wait("promotion recorded in MLflow", lambda: "replaced_by" in k8s.version_tags(model, "1"))
    assert "passed every step" in k8s.version_tags(model, "2")["promotion_reason"]
    # Every decision was considered by the registry and posted: nothing holds the bounded history back.
    k8s.wait("history applied", lambda: k8s.status("churn").get("registrySynced") == k8s.status("churn").get("eventSeq"))
    k8s.wait("history posted", lambda: k8s.status("churn").get("eventsPosted") == k8s.status("churn").get("eventSeq"))
    assert k8s.version_tags(model, "1")["replaced_by"] == "2"
    status = k8s.status("churn")
    assert status["history"][-1]["event"] == "Promoted"
    assert status["observedGeneration"] == k8s.md("churn")["metadata"]["generation"]  # type: ignore[index]
    # Ready follows the InferenceService's own Ready condition for the generation the promotion applied.
    k8s.wait("Ready after promotion", lambda: conditions(k8s)["Ready"] == "True")
    assert conditions(k8s)["CanaryHealthy"] == "Unknown" and conditions(k8s)["Progressing"] == "False"
    reasons = k8s.reasons()
    assert reasons.count("StepAdvanced") == 3 and "CanaryStarted" in reasons and "Promoted" in reasons
    assert "Logging" not in reasons  # one Event per decision, not one per log line


def test_bad_canary_is_rolled_back_exactly_at_the_threshold(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model, failureThreshold=3)
    k8s.prom.set("2", Traffic(error_rate=0.2))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("rollback", lambda: k8s.status("churn").get("phase") == "RolledBack", 60)
    reasons = k8s.reasons()
    assert reasons.count("CheckFailed") == 2 and reasons.count("RolledBack") == 1  # the third failed check rolls back
    status = k8s.status("churn")
    assert status["stableVersion"] == "1" and status.get("canaryVersion") is None and status["rejectedVersions"] == ["2"]
    assert "3 failed checks" in status["history"][-1]["reason"] and "error_rate fail" in status["history"][-1]["reason"]
    k8s.wait("canary pinned to 0 %", lambda: canary_percent(k8s) == 0)  # KServe: the previous (stable) revision takes all traffic
    k8s.wait("rollback recorded in MLflow", lambda: "rollback_reason" in k8s.version_tags(model, "2"))
    assert k8s.alias(model, "champion") == "1"
    time.sleep(1.5)  # a rejected version is not tried again
    assert k8s.status("churn")["phase"] == "RolledBack" and k8s.reasons().count("CanaryStarted") == 1


@pytest.mark.parametrize("mode", ["empty", "nan", "error", "http500", "timeout"])
def test_unavailable_metrics_never_count_as_success_nor_as_failure(k8s: Cluster, model: str, mode: str) -> None:
    start_stable(k8s, model)
    k8s.prom.set("2", Traffic(mode=mode))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("withdrawal", lambda: k8s.status("churn").get("phase") == "RolledBack", 60)
    assert "StepAdvanced" not in k8s.reasons() and "CheckInconclusive" in k8s.reasons()
    status = k8s.status("churn")
    # Missing evidence holds and then withdraws the canary; it is not evidence against it: no rejection, a retry later.
    assert status["stableVersion"] == "1" and status.get("rejectedVersions") in (None, []) and status["deferred"]["version"] == "2"


def test_errors_without_a_version_label_are_not_read_as_zero(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    k8s.prom.state.unattributed_errors = 40.0  # a predictor that labels errors by model and code only
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("rollback", lambda: k8s.status("churn").get("phase") == "RolledBack", 60)
    assert "carry no version label" in k8s.status("churn")["history"][-1]["reason"]


def test_operator_killed_at_any_moment_reaches_the_same_end_state(k8s: Cluster, model: str) -> None:
    k8s.register(model, 2)
    k8s.prom.set("1", Traffic())
    k8s.prom.set("2", Traffic())
    k8s.operator.start()
    std = spec(model, interval="0.3s")
    std["serving"] = {"mode": "Standard", "gateway": {"name": "churnops"}}
    k8s.apply_md("churn", std)
    k8s.wait("stable route", lambda: k8s.route("churn"))
    rng = random.Random(7)
    kills = 0

    def progress() -> tuple[Any, ...]:
        st, route = k8s.status("churn"), k8s.route("churn")
        return (st.get("rolloutPhase"), st.get("canaryWeight"), st.get("stableSlot"), json.dumps((route or {}).get("spec")))

    def done() -> bool:
        st = k8s.status("churn")
        return st.get("stableVersion") == "2" and k8s.isvc("churn-blue") is None

    with Recorder(k8s) as rec:
        k8s.patch_md_spec("churn", {"model": {"version": "2"}})
        while not done():
            # Kill shortly after each observed transition: in the middle of the pass that follows it.
            before = progress()

            def moved(before: tuple[Any, ...] = before) -> bool:
                return progress() != before or done()

            k8s.wait("progress", moved, 60, every=0.02)
            time.sleep(rng.uniform(0.0, 0.2))  # within the pass that follows (interval 0.3 s), however fast passes are
            k8s.operator.kill()
            kills += 1
            k8s.operator.start()
    rec.assert_monotone()
    assert kills >= 3  # one kill per observed transition; a fast pass may make several changes the poll sees as one
    status = k8s.status("churn")
    assert status["phase"] == "Promoted" and status["stableSlot"] == "green"
    route = k8s.route("churn")
    assert [(r["name"], r["weight"]) for r in route["spec"]["rules"][0]["backendRefs"]] == [("churn-green-predictor", 100)]  # type: ignore[index]
    k8s.wait("champion alias moved", lambda: k8s.alias(model, "champion") == "2")


def test_serving_objects_edited_or_deleted_out_of_band_are_repaired(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    path = f"{ISVC_PATH.format(ns=NS)}/churn"
    # storageUri: an object an older operator created, or an edit: it must go (KServe would inject its initializer)
    patch = {"spec": {"predictor": {"minReplicas": 9, "canaryTrafficPercent": 50, "model": {"storageUri": "s3://elsewhere"}}}}
    k8s.api.patch(path, json=patch, headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()

    def repaired() -> bool:
        predictor = (k8s.isvc("churn") or {}).get("spec", {}).get("predictor", {})
        return (
            predictor.get("minReplicas") == 2  # the CRD's default
            and "canaryTrafficPercent" not in predictor
            and "storageUri" not in predictor["model"]
            and predictor["model"]["env"][1] == {"name": "CHURNOPS_MODEL_VERSION", "value": "1"}
        )

    k8s.wait("edit repaired", repaired)
    k8s.delete(path)
    k8s.wait("recreated", lambda: k8s.isvc("churn") is not None)

    def created() -> list[str]:
        return [e["message"] for e in k8s.events() if e.get("reason") == "Created" and "InferenceService" in e["message"]]

    # the operator posts its Event after the create call returns: wait for it rather than race it
    k8s.wait("recreation recorded", lambda: len(created()) == 2)
    assert "Updated" in k8s.reasons() and len(created()) == 2, created()


def test_deletion_while_the_operator_is_down_is_finished_on_restart(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    assert "churnops.io/finalizer" in k8s.md("churn")["metadata"]["finalizers"]  # type: ignore[index]
    k8s.operator.stop()
    k8s.delete(f"{MD_PATH.format(ns=NS)}/churn")
    time.sleep(0.5)
    assert k8s.md("churn") is not None and k8s.isvc("churn") is not None  # held by the finalizer
    k8s.operator.start()
    k8s.wait("resource and children gone", lambda: k8s.md("churn") is None and k8s.isvc("churn") is None)


def test_conflicts_are_retried(k8s: Cluster, model: str) -> None:
    k8s.kube.call(lambda: k8s.kube.k.inject("POST", "inferenceservices", 409, times=1))
    start_stable(k8s, model)
    k8s.kube.call(lambda: k8s.kube.k.inject("PATCH", "inferenceservices", 409, times=3))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("promotion despite conflicts", lambda: k8s.status("churn").get("stableVersion") == "2", 60)
    injected = k8s.kube.call(lambda: list(k8s.kube.k.injected))
    assert len(injected) == 4, injected


def test_spec_change_mid_analysis_restarts_the_analysis(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model, interval="1s", minSamples=5000)  # the fake's 2000 requests never complete a step
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("canary", lambda: k8s.status("churn").get("canaryVersion") == "2")
    first = k8s.status("churn")["rolloutId"]
    k8s.patch_md_spec("churn", {"rollout": {"analysis": {"maxScorePSI": 0.3}}})
    k8s.wait("restart", lambda: k8s.status("churn").get("rolloutId") == first + 1)
    status = k8s.status("churn")
    assert status["canaryWeight"] == 5 and status["checks"] == 0 and "AnalysisRestarted" in k8s.reasons()


def test_drift_starts_exactly_one_retraining_per_cooldown_and_rolls_out_its_challenger(k8s: Cluster, model: str) -> None:
    k8s.register(model, 1)
    k8s.prom.set("1", Traffic(drift=0.6))
    k8s.prom.set("2", Traffic())

    def trained(run: dict[str, Any]) -> None:  # what the training pipeline does: register, alias challenger
        threading.Thread(target=finish_training, args=(run["run_id"],), daemon=True).start()

    def finish_training(run_id: str) -> None:
        k8s.register(model, 0)
        k8s.mlflow.post("/api/2.0/mlflow/model-versions/create", json={"name": model, "source": f"s3://churnops-models/{model}/2"})
        k8s.set_alias(model, "challenger", "2")
        time.sleep(0.5)
        k8s.kfp.finish(run_id)

    k8s.kfp.state.on_create = trained
    k8s.operator.start()
    md = spec(model)
    md["monitoring"] = {
        "evaluationInterval": "0.2s",
        "drift": {"consecutive": 2},
        "retraining": {"cooldown": "1h", "parameters": {"seed": "7"}},
    }
    k8s.apply_md("churn", md)
    k8s.wait("retrained challenger promoted", lambda: k8s.status("churn").get("stableVersion") == "2", 60)
    time.sleep(1.5)  # drift persists: still in cooldown, no second run
    assert len(k8s.kfp.state.created) == 1
    run = k8s.kfp.state.created[0]
    uid = k8s.md("churn")["metadata"]["uid"].replace("-", "")[:8]  # type: ignore[index]
    assert run["display_name"] == f"{NS}-churn-{uid}-retrain-1"
    # the run is told the window the drift calls for, and why (the policy's first rung)
    assert run["runtime_config"]["parameters"] == {
        "seed": "7",
        "recency_half_life_days": "30",
        "calibration_days": "30",
        "window_reason": "the population moved (drift): recent outcomes weigh more and set the calibration",
    }
    reasons = k8s.reasons()
    assert reasons.count("RetrainingTriggered") == 1 and "RetrainingFinished" in reasons and "Promoted" in reasons
    assert k8s.status("churn")["retraining"]["runState"] == "SUCCEEDED"


def test_invalid_spec_degrades_with_the_field_named(k8s: Cluster, model: str) -> None:
    k8s.register(model, 1)
    k8s.operator.start()
    k8s.apply_md("churn", spec(model, steps=[50, 25, 100]))  # the emulator skips the CRD's CEL rules
    k8s.wait("degraded", lambda: k8s.status("churn").get("phase") == "Degraded")
    status = k8s.status("churn")
    assert "spec.rollout.steps[1]" in status["message"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert k8s.reasons().count("Degraded") == 1  # not repeated on every pass


def test_a_rejected_version_runs_again_only_when_a_person_annotates_it(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    k8s.prom.set("2", Traffic(error_rate=0.2))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("rollback", lambda: k8s.status("churn").get("rejectedVersions") == ["2"], 60)
    k8s.prom.set("2", Traffic())  # fixed in place (the same version number)
    path = f"{MD_PATH.format(ns=NS)}/churn"
    annotate = {"metadata": {"annotations": {"churnops.io/retry": "2"}}}
    k8s.api.patch(path, json=annotate, headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
    k8s.wait("promotion after the retry", lambda: k8s.status("churn").get("stableVersion") == "2", 60)
    assert "churnops.io/retry" not in (k8s.md("churn") or {})["metadata"].get("annotations", {})  # taken once
    assert k8s.reasons().count("CanaryStarted") == 2 and "RetryAllowed" in k8s.reasons()


def test_a_rejected_candidate_is_never_rolled_out_and_the_status_says_why(k8s: Cluster, model: str) -> None:
    """A version registered for inspection only (`churnops train --register-rejected`) is refused as a target."""
    start_stable(k8s, model)
    for key, value in (("rejected", "true"), ("failed_gates", "calibration")):
        tag = {"name": model, "version": "2", "key": key, "value": value}
        k8s.mlflow.post("/api/2.0/mlflow/model-versions/set-tag", json=tag).raise_for_status()
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("the refusal in the status", lambda: "rejected candidate" in str(k8s.status("churn").get("message")), 30)
    assert "failed quality gates: calibration" in str(k8s.status("churn")["message"])
    time.sleep(1.5)  # more passes: still no canary
    assert canary_percent(k8s) is None and "CanaryStarted" not in k8s.reasons()
    assert k8s.status("churn")["stableVersion"] == "1" and k8s.status("churn").get("canaryVersion") is None


def test_legacy_mode_names_written_by_kserve_do_not_make_the_operator_patch_again(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    isvc = k8s.isvc("churn") or {}
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "Knative"  # KServe >= 0.16's name
    # What an older KServe (or an older operator) leaves: the legacy name for the same mode.
    patch = {"metadata": {"annotations": {"serving.kserve.io/deploymentMode": "Serverless"}}}
    k8s.api.patch(
        f"{ISVC_PATH.format(ns=NS)}/churn", json=patch, headers={"Content-Type": "application/merge-patch+json"}
    ).raise_for_status()
    time.sleep(1.5)  # several passes
    assert "Updated" not in k8s.reasons()


def test_a_second_deployment_of_the_same_model_is_refused(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    k8s.apply_md("rival", spec(model))
    k8s.wait("refused", lambda: k8s.status("rival").get("phase") == "Degraded")
    degraded = next(c for c in k8s.status("rival")["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ModelOwnedElsewhere" and f"{NS}/churn" in degraded["message"]
    assert k8s.isvc("rival") is None and k8s.status("churn")["phase"] == "Promoted"
    assert k8s.kfp.state.created == []


def test_a_canary_that_never_becomes_ready_is_withdrawn_at_the_deadline_and_not_rejected(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model, progressDeadline="2s")
    k8s.wait("stable ready", lambda: conditions(k8s).get("Ready") == "True")
    k8s.kserve.ready = False  # the canary's revision never reports ready
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("withdrawn", lambda: (k8s.status("churn").get("deferred") or {}).get("version") == "2", 60)
    status = k8s.status("churn")
    assert status["stableVersion"] == "1" and status.get("rejectedVersions") in (None, []) and "never became ready" in status["message"]
    assert "StepAdvanced" not in k8s.reasons()


def test_an_expired_token_is_renewed_without_a_restart(k8s: Cluster, model: str, tmp_path: Path) -> None:
    start_stable(k8s, model)
    pid = k8s.operator.proc.pid  # type: ignore[union-attr]
    # The kubelet rotates a projected service-account token: the file has a new one, the old one answers 401.
    k8s.kube.kubeconfig(tmp_path / "kubeconfig", token="operator-token-2")
    k8s.kube.call(lambda: k8s.kube.k.rotate("operator-token-2"))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("promotion with the new token", lambda: k8s.status("churn").get("stableVersion") == "2", 60)
    assert k8s.kube.call(lambda: list(k8s.kube.k.unauthorized)), "the old token was never refused: the test proved nothing"
    assert k8s.operator.proc is not None and k8s.operator.proc.pid == pid  # renewed in place, not by a restart


def test_a_decision_written_before_a_crash_is_posted_once(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model)
    k8s.wait("first events posted", lambda: k8s.status("churn").get("eventsPosted") == k8s.status("churn").get("eventSeq"))
    k8s.operator.kill()
    status = k8s.status("churn")
    seq = int(status["eventSeq"]) + 1
    entry = {"seq": seq, "time": time.time(), "type": "Warning", "event": "CheckFailed", "message": "written before a crash"}
    entry |= {"from": None, "to": None, "reason": "written before a crash"}
    path = f"{MD_PATH.format(ns=NS)}/churn/status"
    # A pass wrote this decision and died before posting its Event.
    body = {"status": {"history": [*status["history"], entry], "eventSeq": seq}}
    k8s.api.patch(path, json=body, headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
    k8s.operator.start()
    k8s.wait("posted after the restart", lambda: k8s.status("churn").get("eventsPosted") == seq)
    # Killed again between posting and recording it: the next operator posts under the same name, which is refused.
    k8s.operator.kill()
    back = {"status": {"eventsPosted": seq - 1}}
    k8s.api.patch(path, json=back, headers={"Content-Type": "application/merge-patch+json"}).raise_for_status()
    k8s.operator.start()
    k8s.wait("recorded again", lambda: k8s.status("churn").get("eventsPosted") == seq)
    assert [e.get("message") for e in k8s.events()].count("written before a crash") == 1


def test_a_step_waits_for_enough_samples_in_a_windowed_prometheus(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model, minSamples=150, interval="1s")
    # Counters grow at 40 requests/s: a step needs about 4 s of canary traffic before a passing check may advance it.
    k8s.prom.set("1", Traffic(rate=800.0))
    k8s.prom.set("2", Traffic(rate=40.0))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    messages: list[str] = []

    def promoted() -> bool:
        status = k8s.status("churn")
        messages.append(str(status.get("message")))
        return status.get("stableVersion") == "2"

    k8s.wait("promotion through the windows", promoted, 90, every=0.2)
    assert any(m.startswith("waiting:") and "of 150 canary requests" in m for m in messages)
    step_windows = [q for q in k8s.prom.state.queries if 'version="2"' in q and "churnops_requests_total" in q]
    assert len({q.split("[", 1)[1].split("]", 1)[0] for q in step_windows}) > 3  # windows of growing length were asked


def test_drift_on_the_current_stable_starts_a_second_run_only_after_the_cooldown(k8s: Cluster, model: str) -> None:
    k8s.register(model, 1)
    k8s.prom.set("1", Traffic(drift=0.6))
    started: list[float] = []

    def trained(run: dict[str, Any]) -> None:
        started.append(time.time())
        threading.Thread(target=finish_training, args=(run["run_id"],), daemon=True).start()

    def finish_training(run_id: str) -> None:
        versions = k8s.mlflow.get("/api/2.0/mlflow/registered-models/get", params={"name": model}).json()
        newest = max(int(v["version"]) for v in versions["registered_model"].get("latest_versions") or [{"version": "1"}])
        created = k8s.mlflow.post("/api/2.0/mlflow/model-versions/create", json={"name": model, "source": f"s3://m/{newest + 1}"})
        version = str(created.json()["model_version"]["version"])
        k8s.prom.set(version, Traffic(drift=0.6))  # the retrained version drifts too: the policy goes on breaching
        k8s.set_alias(model, "challenger", version)
        k8s.kfp.finish(run_id)

    k8s.kfp.state.on_create = trained
    k8s.operator.start()
    md = spec(model)
    md["monitoring"] = {"evaluationInterval": "0.2s", "drift": {"consecutive": 1}, "retraining": {"cooldown": "6s"}}
    k8s.apply_md("churn", md)
    k8s.wait("the first retrained version promoted", lambda: k8s.status("churn").get("stableVersion") == "2", 60)
    k8s.wait("a second run", lambda: len(started) >= 2, 60)
    triggered = [h["time"] for h in k8s.status("churn")["history"] if h["event"] == "RetrainingTriggered"]
    assert len(triggered) >= 2 and triggered[1] - triggered[0] >= 6.0  # the cooldown held the second run back, drift never stopped
    assert started[1] - started[0] > 5.0  # and KFP saw the runs that far apart (each created on the pass after its trigger)
    runs = [r["display_name"] for r in k8s.kfp.state.created]
    assert runs[0].endswith("-retrain-1") and runs[1].endswith("-retrain-2")
    assert k8s.reasons().count("DriftDetected") <= 2  # announced when breaches start, not at every evaluation


def test_standard_mode_route_follows_every_step_and_a_rollback(k8s: Cluster, model: str) -> None:
    k8s.register(model, 3)
    for v in ("1", "2"):
        k8s.prom.set(v, Traffic())
    k8s.prom.set("3", Traffic(error_rate=0.2))
    k8s.operator.start()
    std = spec(model)
    std["serving"] = {"mode": "Standard", "gateway": {"name": "churnops"}}
    k8s.apply_md("churn", std)
    k8s.wait("stable route", lambda: k8s.route("churn"))
    with Recorder(k8s) as rec:
        k8s.patch_md_spec("churn", {"model": {"version": "2"}})
        k8s.wait("promotion", lambda: k8s.status("churn").get("stableVersion") == "2" and k8s.isvc("churn-blue") is None, 60)
        k8s.patch_md_spec("churn", {"model": {"version": "3"}})
        k8s.wait("rollback", lambda: k8s.status("churn").get("rejectedVersions") == ["3"], 60)
        k8s.wait("route back on the stable", lambda: serving_weights(k8s) == [("churn-green-predictor", 100)], 30)
    rec.assert_monotone()
    canary_weights = [s["route"][1] for s in rec.samples if len(s["route"]) == 2 and s["rollout"] == 1]
    assert sorted(set(canary_weights)) == [5, 25, 50, 100]  # the route carried every step's weight, and only those
    statuses = [s["weight"] for s in rec.samples if s["rollout"] == 1 and s["weight"]]
    assert set(canary_weights) == set(statuses)
    assert k8s.isvc("churn-blue") is None  # the rolled-back canary's InferenceService is gone


def serving_weights(k8s: Cluster) -> list[tuple[str, int]]:
    route = k8s.route("churn") or {}
    return [(r["name"], r["weight"]) for rule in (route.get("spec") or {}).get("rules") or [] for r in rule["backendRefs"]]


def test_a_failing_rollout_survives_a_restart_and_rolls_back_at_exactly_the_threshold(k8s: Cluster, model: str) -> None:
    start_stable(k8s, model, failureThreshold=3)
    k8s.prom.set("2", Traffic(error_rate=0.2))
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("first failed check", lambda: (k8s.status("churn").get("failedChecks") or 0) >= 1, 60, every=0.02)
    k8s.operator.kill()
    assert k8s.status("churn")["failedChecks"] == 1 and k8s.status("churn")["canaryVersion"] == "2"
    k8s.operator.start()
    k8s.wait("rollback", lambda: k8s.status("churn").get("phase") == "RolledBack", 60)
    assert k8s.reasons().count("CheckFailed") == 2 and k8s.reasons().count("RolledBack") == 1
    assert "3 failed checks" in k8s.status("churn")["history"][-1]["reason"]


def test_a_canary_worse_only_in_auc_is_rolled_back(k8s: Cluster, model: str) -> None:
    k8s.register(model, 2)
    # 20,000 labelled predictions each; same errors, latency and scores: only the ranking is worse.
    k8s.prom.set("1", Traffic(requests=20000, auc=0.85, coverage=1.0, churn_rate=0.2))
    k8s.prom.set("2", Traffic(requests=20000, auc=0.80, coverage=1.0, churn_rate=0.2))
    k8s.operator.start()
    k8s.apply_md("churn", spec(model))
    k8s.wait("stable", lambda: k8s.status("churn").get("stableVersion") == "1")
    k8s.patch_md_spec("churn", {"model": {"version": "2"}})
    k8s.wait("rollback", lambda: k8s.status("churn").get("phase") == "RolledBack", 60)
    reason = k8s.status("churn")["history"][-1]["reason"]
    assert "auc_delta fail" in reason and "error_rate" not in reason and "score_psi" not in reason
    assert k8s.status("churn")["rejectedVersions"] == ["2"]


def test_an_mlflow_outage_holds_no_rollback_back_and_is_reported(k8s: Cluster, model: str, tmp_path: Path) -> None:
    with Outage(k8s.mlflow_url) as outage:
        k8s.operator = OperatorProcess(
            k8s.kube.kubeconfig(tmp_path / "kubeconfig"), k8s.prom.url, outage.url, k8s.kfp.url, tmp_path / "op.log"
        )
        start_stable(k8s, model, failureThreshold=2)
        k8s.prom.set("2", Traffic(error_rate=0.2))
        k8s.patch_md_spec("churn", {"model": {"version": "2"}})
        k8s.wait("canary", lambda: k8s.status("churn").get("canaryVersion") == "2")
        outage.down = True  # MLflow goes away while the bad canary runs
        k8s.wait("rollback during the outage", lambda: k8s.status("churn").get("phase") == "RolledBack", 60)
        k8s.wait("outage reported", lambda: conditions(k8s).get("Degraded") == "True")
        degraded = next(c for c in k8s.status("churn")["conditions"] if c["type"] == "Degraded")
        assert degraded["reason"] == "RegistryUnavailable" and canary_percent(k8s) == 0  # traffic is back on stable
        assert "rollback_reason" not in k8s.version_tags(model, "2")  # nothing reached MLflow yet
        outage.down = False
        k8s.wait("rollback recorded once MLflow is back", lambda: "rollback_reason" in k8s.version_tags(model, "2"), 30)
        k8s.wait("recovered", lambda: conditions(k8s).get("Degraded") == "False")
        assert k8s.reasons().count("Degraded") == 1 and "Recovered" in k8s.reasons()
