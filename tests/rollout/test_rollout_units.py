"""The embedded rollout's parts without a predictor: routing table, weight selection, state, metrics deltas, manual decisions."""

from __future__ import annotations

import json
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from churnops.errors import ConflictError, InvalidInputError, NotFoundError
from churnops.rollout import scraped as rm
from churnops.rollout.outcomes import figures
from churnops.rollout.retraining import Retrainer, RunInfo, typed_parameters
from churnops.rollout.store import DeploymentStore, merge
from churnops.serving.instruments import ServingMetrics
from churnops.serving.routing_table import RoutingTable, TableWatcher, choose, read_table, write_table
from churnops_contract.metric_names import SCORE_BUCKETS
from churnops_contract.queries import latency_le
from churnops_contract.rollout import analysis, machine, manual, observe
from churnops_contract.rollout.machine import RolloutStatus
from churnops_contract.rollout.retraining import RetrainingStatus
from churnops_contract.rollout.spec import Analysis

MODEL = "churn-classifier"
BUCKETS = len(SCORE_BUCKETS) + 1

# --- routing table ----------------------------------------------------------------------------------------


def test_routing_table_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    assert read_table(path) == RoutingTable()  # no file yet: nothing to serve
    table = RoutingTable("1", "2", 25, "customer", 123.5)
    write_table(path, table)
    assert read_table(path) == table
    assert [p.name for p in tmp_path.iterdir()] == ["routing.json"]  # no temporary file left behind


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ({"stable": "v1"}, "routing.stable"),
        ({"stable": "1", "canary": "2", "weight": 101}, "routing.weight"),
        ({"stable": "1", "weight": 5}, "routing.weight"),
        ({"stable": "1", "canary": "1", "weight": 5}, "routing.canary"),
        ({"stable": "1", "split": "sticky"}, "routing.split"),
        ({"stable": "1", "extra": 1}, "routing"),
        ({"stable": "1", "format": "other"}, "routing.format"),
    ],
)
def test_invalid_routing_tables_name_the_field(doc: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        RoutingTable.from_doc({"format": "churnops.routing/v1", **doc})
    assert e.value.field == field


def test_a_reader_never_sees_a_partial_table(tmp_path: Path) -> None:
    """The writer replaces the file atomically: a reader polling as fast as it can only ever sees whole tables."""
    path = tmp_path / "routing.json"
    tables = [RoutingTable("1", "2", w, "request", float(w)) for w in (5, 25, 50, 100)]
    write_table(path, tables[0])
    seen: set[int] = set()
    errors: list[Exception] = []
    done = threading.Event()

    def read() -> None:
        while not done.is_set():
            try:
                seen.add(read_table(path).weight)
            except Exception as e:  # any partial read shows up here
                errors.append(e)

    reader = threading.Thread(target=read)
    reader.start()
    for i in range(400):
        write_table(path, tables[i % len(tables)])
    done.set()
    reader.join()
    assert errors == []
    assert seen <= {5, 25, 50, 100} and len(seen) > 1


def test_watcher_rereads_on_change_and_keeps_the_last_good_table(tmp_path: Path) -> None:
    path = tmp_path / "routing.json"
    now = [0.0]
    watcher = TableWatcher(path, recheck_s=0.5, clock=lambda: now[0])
    assert watcher.current() == RoutingTable()
    write_table(path, RoutingTable("1"))
    assert watcher.current().stable is None  # within the recheck interval the file is not looked at
    now[0] = 0.6
    assert watcher.current().stable == "1"
    path.write_text("{not json")
    now[0] = 1.2
    assert watcher.current().stable == "1" and watcher.error is not None
    write_table(path, RoutingTable("1", "2", 5))
    now[0] = 1.8
    assert watcher.current().canary == "2" and watcher.error is None


# --- weight selection ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("weight", [5, 25, 50, 100])
def test_draws_split_requests_by_weight(weight: int) -> None:
    table = RoutingTable("1", "2", weight)
    picks = [choose(table, {"1", "2"}, None, i / 10) for i in range(1000)]  # draws evenly over [0, 100)
    assert picks.count("2") == weight * 10
    assert picks.count("1") == 1000 - weight * 10


def test_a_canary_that_is_not_ready_gets_nothing() -> None:
    table = RoutingTable("1", "2", 50)
    assert {choose(table, {"1"}, None, d) for d in (0.0, 49.9, 99.9)} == {"1"}
    assert choose(table, {"2"}, None, 10.0) == "2"
    assert choose(table, {"2"}, None, 60.0) is None  # the stable version is not ready: its share has nowhere to go
    assert choose(RoutingTable("1", "2", 100), {"2"}, None, 60.0) == "2"
    assert choose(RoutingTable(), {"1"}, None, 0.0) is None


def test_customer_split_keeps_each_customer_and_only_grows_the_canary() -> None:
    customers = range(100_000, 102_000)
    previous: set[int] = set()
    for weight in (5, 25, 50, 100):
        table = RoutingTable("1", "2", weight, "customer")
        canary = {c for c in customers if choose(table, {"1", "2"}, c, 0.0) == "2"}
        assert canary == {c for c in customers if choose(table, {"1", "2"}, c, 99.9) == "2"}  # the draw does not matter
        assert previous <= canary  # nobody leaves the canary as its weight grows
        assert abs(len(canary) / len(customers) - weight / 100) < 0.05
        previous = canary
    assert choose(RoutingTable("1", "2", 50, "customer"), {"1", "2"}, None, 10.0) == "2"  # no customer id: the draw decides


# --- state -----------------------------------------------------------------------------------------------------


def test_deployment_round_trip_and_generation(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, "churn")
    with pytest.raises(NotFoundError):
        store.load()
    with store.locked():
        dep = store.create_or_update({"model": {"version": "1"}}, defaults={"featureService": "churn_v1"}, now=10.0)
    assert dep.generation == 1 and store.load() == dep
    same = store.create_or_update({"model": {"version": "1"}})
    assert same.generation == 1
    moved = store.create_or_update({"model": {"version": None, "alias": "challenger"}, "rollout": {"steps": [10, 100]}})
    assert moved.generation == 2
    assert moved.spec["model"] == {"alias": "challenger"} and moved.parsed().rollout.steps == (10, 100)
    assert store.load().to_doc()["kind"] == "ModelDeployment"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"model": {"version": "1", "alias": "challenger"}}, "spec.model"),
        ({"model": {"version": "1"}, "rollout": {"steps": [5, 50]}}, "spec.rollout.steps"),
        ({"model": {"version": "1"}, "rollout": {"interval": "soon"}}, "spec.rollout.interval"),
    ],
)
def test_invalid_specs_are_refused_with_their_field(tmp_path: Path, changes: dict[str, Any], field: str) -> None:
    store = DeploymentStore(tmp_path, "churn")
    with pytest.raises(InvalidInputError) as e:
        store.create_or_update(changes, defaults={"featureService": "churn_v1"})
    assert e.value.field == field
    assert not store.exists()


def test_names_are_checked() -> None:
    with pytest.raises(InvalidInputError):
        DeploymentStore(Path("/nonexistent"), "../etc")


def test_only_one_runner_drives_a_deployment(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, "churn")
    first = store.claim()
    with pytest.raises(ConflictError) as e:
        store.claim()
    assert "already driven" in str(e.value)
    first.close()
    store.claim().close()  # released with its file (a killed process releases it too)


def test_timeline_skips_a_torn_last_line(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path, "churn")
    store.record([{"time": 1.0, "kind": "event"}, {"time": 2.0, "kind": "check"}])
    with store.timeline_path.open("a") as f:
        f.write('{"time": 3.0, "ki')
    assert [e["time"] for e in store.timeline()] == [1.0, 2.0]


def test_merge_is_a_merge_patch() -> None:
    assert merge({"a": {"b": 1, "c": 2}, "d": 1}, {"a": {"b": None, "e": 3}, "d": 2}) == {"a": {"c": 2, "e": 3}, "d": 2}
    assert merge({}, {"model": {"version": "1", "alias": None}}) == {"model": {"version": "1"}}


# --- metrics: scrapes, deltas, observations ---------------------------------------------------------------------


def exposition(metrics: ServingMetrics, registry: CollectorRegistry) -> str:
    return generate_latest(registry).decode()


def serve_requests(metrics: ServingMetrics, version: str, n: int, score: float, seconds: float, errors: int = 0) -> None:
    """What the predictor's scorer and middleware record for ``n`` answered requests (and ``errors`` 500s)."""
    metrics.info.labels(MODEL, version, "").set(1)
    for _ in range(n):
        metrics.requests.labels(MODEL, version, "v1").inc()
        metrics.latency.labels(MODEL, version, "total").observe(seconds)
        metrics.score.labels(MODEL, version).observe(score)
    if errors:
        metrics.errors.labels(MODEL, version, "500").inc(errors)
        metrics.errors.labels(MODEL, version, "404").inc(errors)  # client errors are not the version's fault


def test_counts_over_a_window_come_from_two_scrapes() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    serve_requests(metrics, "1", 50, 0.15, 0.004)
    first = rm.parse(exposition(metrics, registry), MODEL, 100.0)
    assert first.served == {"1"}
    counters = rm.advance(rm.Counters(), first, [100.0], ["1", "2"])
    serve_requests(metrics, "1", 30, 0.15, 0.004)
    serve_requests(metrics, "2", 10, 0.35, 0.2, errors=2)
    second = rm.parse(exposition(metrics, registry), MODEL, 110.0)
    counters = rm.advance(counters, second, [100.0], ["1", "2"])
    answers = rm.answers(counters, second, "2", "1", 100.0, 100.0, 100.0)
    obs = observe.analysis_observation(answers, 1, BUCKETS)
    stable, canary = obs.stable, obs.canary
    assert stable.requests == 30 and stable.errors == 0 and stable.timed == 30 and stable.slow == 0
    assert canary.requests == 10 and canary.errors == 2 and canary.slow == 10  # 0.2 s is over the 100 ms limit's bucket
    assert canary.p95_ms is not None and 100 < canary.p95_ms <= 250
    assert stable.score_buckets is not None and canary.score_buckets is not None
    assert sum(stable.score_buckets) == 30 and stable.score_buckets[2] == 30  # buckets ..0.05, ..0.1, ..0.2: 0.15 is in the third
    assert canary.score_buckets[4] == 10 and len(canary.score_buckets) == 12  # 0.35 in (0.3, 0.4]; 11 bounds and +Inf


def test_a_restarted_predictor_counts_from_zero_again() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    serve_requests(metrics, "1", 40, 0.1, 0.001)
    counters = rm.advance(rm.Counters(), rm.parse(exposition(metrics, registry), MODEL, 0.0), [0.0], ["1"])
    serve_requests(metrics, "1", 10, 0.1, 0.001)
    counters = rm.advance(counters, rm.parse(exposition(metrics, registry), MODEL, 1.0), [0.0], ["1"])
    restarted = CollectorRegistry()  # a new process: its counters start at zero
    fresh = ServingMetrics(restarted)
    serve_requests(fresh, "1", 7, 0.1, 0.001)
    counters = rm.advance(counters, rm.parse(exposition(fresh, restarted), MODEL, 2.0), [0.0], ["1"])
    assert rm.increase(counters, "requests|1", 0.0) == 17
    restored = rm.Counters.from_doc(json.loads(json.dumps(counters.to_doc())))
    assert rm.increase(restored, "requests|1", 0.0) == 17  # persisted and read back by a restarted runner
    assert len(restored.snapshots) == 2  # only the window's start and the latest are kept


def test_observation_reads_missing_figures_as_missing() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    serve_requests(metrics, "1", 300, 0.15, 0.004)
    scrape = rm.parse(exposition(metrics, registry), MODEL, 5.0)
    counters = rm.advance(rm.Counters(), scrape, [0.0], ["1", "2"])
    obs = observe.analysis_observation(rm.answers(counters, scrape, "2", "1", 0.0, 0.0, 100.0), 1, BUCKETS)
    assert obs.canary.requests is None and "the canary version is not served" in obs.problems
    verdict = analysis.judge(Analysis(), obs, 10)
    assert verdict.outcome == "inconclusive"  # a canary without figures never passes
    assert observe.analysis_observation(rm.answers(counters, None, "2", "1", 0.0, 0.0, 100.0), 1, BUCKETS).canary.requests is None


def test_errors_without_a_version_make_the_error_rate_unavailable() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    serve_requests(metrics, "1", 100, 0.15, 0.004)
    serve_requests(metrics, "2", 100, 0.15, 0.004)
    first = rm.parse(exposition(metrics, registry), MODEL, 0.0)
    counters = rm.advance(rm.Counters(), first, [0.0], ["1", "2"])
    metrics.errors.labels(MODEL, "", "503").inc(3)
    serve_requests(metrics, "2", 50, 0.15, 0.004)
    scrape = rm.parse(exposition(metrics, registry), MODEL, 1.0)
    counters = rm.advance(counters, scrape, [0.0], ["1", "2"])
    obs = observe.analysis_observation(rm.answers(counters, scrape, "2", "1", 0.0, 0.0, 100.0), 1, BUCKETS)
    assert obs.canary.errors is None and obs.stable.errors is None
    assert obs.canary.requests == 50 and obs.step_requests == 50


def test_served_version_without_requests_counts_zero() -> None:
    registry = CollectorRegistry()
    metrics = ServingMetrics(registry)
    serve_requests(metrics, "1", 10, 0.15, 0.004)
    metrics.info.labels(MODEL, "2", "").set(1)  # loaded, nothing answered yet
    scrape = rm.parse(exposition(metrics, registry), MODEL, 0.0)
    counters = rm.advance(rm.Counters(), scrape, [0.0], ["1", "2"])
    obs = observe.analysis_observation(rm.answers(counters, scrape, "2", "1", 0.0, 0.0, 100.0), 1, BUCKETS)
    assert obs.canary.requests == 0
    assert analysis.judge(Analysis(), obs, 10).outcome == "wait"


def test_drift_signals_come_from_the_predictor_gauges() -> None:
    text = (
        "# TYPE churnops_drift_detected gauge\n"
        'churnops_drift_detected{model="churn-classifier",version="3"} 1.0\n'
        "# TYPE churnops_drifted_features_share gauge\n"
        'churnops_drifted_features_share{model="churn-classifier",version="3"} 0.25\n'
        'churnops_drifted_features_share{model="other",version="3"} 0.9\n'
    )
    scrape = rm.parse(text, MODEL, 0.0)

    def signals(found: dict[str, observe.Answer]) -> tuple[bool | None, float | None]:
        o = observe.retraining_observation(found, 0.2, None, 0.0)
        return o.drift_detected, o.drifted_share

    assert signals(rm.drift_answers(scrape, "3")) == (True, 0.25)
    assert signals(rm.drift_answers(scrape, "4")) == (None, None)
    assert signals(rm.drift_answers(None, "3")) == (None, None)


def test_bucket_bounds_have_one_spelling() -> None:
    assert rm.le_key("1.0") == "1" == rm.le_key(latency_le(1000.0))
    assert rm.le_key("+Inf") == "+Inf"
    assert rm.quantile(0.5, ["0.1", "0.2", "+Inf"], [0.0, 10.0, 10.0]) == pytest.approx(0.15)


# --- decisions taken by hand -------------------------------------------------------------------------------------


def test_manual_promotion_and_rollback_are_recorded_like_automatic_ones() -> None:
    st = RolloutStatus(phase="Progressing", stable="1", canary="2", weight=25, step=1, rollout_id=1)
    done = manual.promote(st, "looks good")
    promoted = done.status
    assert (promoted.stable, promoted.canary, promoted.weight, promoted.phase) == ("2", None, 0, "Promoted")
    event = done.events[-1]
    assert (event.reason, event.frm, event.to, event.note) == ("Promoted", "1", "2", "manual: looks good")
    back = manual.rollback(st, "too slow")
    assert (back.status.stable, back.status.canary, back.status.rejected) == ("1", None, ("2",))
    assert back.events[0].reason == "RolledBack" and "too slow" in back.events[0].message
    assert machine.allow(back.status, "2").status.rejected == ()
    with pytest.raises(manual.ManualError):
        manual.promote(RolloutStatus(stable="1"), "x")
    with pytest.raises(manual.ManualError):
        manual.rollback(RolloutStatus(stable="1"), "x")


def test_manual_retraining_starts_one_run_at_a_time() -> None:
    rs, events = manual.retrain(RetrainingStatus(), 10.0, "new data", "churn")
    assert rs.pending_key == "churn-retrain-1" and rs.active and rs.last_triggered == 10.0
    assert events[0].reason == "RetrainingTriggered"
    with pytest.raises(manual.ManualError):
        manual.retrain(rs, 11.0, "again", "churn")
    # a run asked for by hand after a policy run trains on the pipeline's defaults, not on the last breach's window
    after_policy = replace(rs, run_state="SUCCEEDED", window=(("recency_half_life_days", "30"), ("window_reason", "drift")))
    again, _ = manual.retrain(after_policy, 20.0, "new data", "churn")
    assert again.pending_key == "churn-retrain-2" and again.window == () and again.breaches == 0


# --- delayed labels ---------------------------------------------------------------------------------------------


def test_outcome_figures_leave_pending_predictions_out() -> None:
    times = pd.to_datetime(["2026-05-01T00:00Z"] * 4 + ["2026-07-01T00:00Z"], utc=True)
    frame = pd.DataFrame({"time": times, "customer_id": [1, 2, 3, 4, 5], "score": [0.9, 0.8, 0.2, 0.1, 0.5]})
    labels = pd.DataFrame(
        {"customer_id": [1, 2, 3, 4], "event_timestamp": pd.to_datetime(["2026-04-20T00:00Z"] * 4, utc=True), "churned_30d": [1, 0, 1, 0]}
    )
    out = figures(frame, labels, 30.0)
    assert out.predictions == 5 and out.labelled == 4  # customer 5 has no outcome yet: pending, not a negative
    assert out.auc == pytest.approx(0.75) and out.positive_rate == 0.5
    assert out.estimated_auc is not None
    assert figures(frame, None, 30.0).labelled == 0 and figures(frame, None, 30.0).auc is None
    assert figures(frame.iloc[:0], labels, 30.0).predictions == 0


# --- retraining runs -------------------------------------------------------------------------------------------


def test_a_recorded_run_is_found_not_started_again(tmp_path: Path) -> None:
    retrainer = Retrainer(tmp_path / "runs", tmp_path, "sqlite:///unused.db")
    run = tmp_path / "runs" / "churn-retrain-1"
    run.mkdir(parents=True)
    (run / "process.json").write_text(json.dumps({"pid": 2**22 + 12345}))  # no such process
    assert retrainer.ensure("churn-retrain-1", "churn-training", {}) == "churn-retrain-1"
    assert sorted(p.name for p in run.iterdir()) == ["process.json"]  # nothing was started
    info = retrainer.info("churn-retrain-1")
    assert info.state == "FAILED" and "ended without a result" in info.detail
    (run / "result.json").write_text(json.dumps({"state": "SUCCEEDED", "challenger": "4", "detail": ""}))
    assert retrainer.info("churn-retrain-1") == RunInfo("SUCCEEDED", "4", "")
    with pytest.raises(NotFoundError):
        retrainer.info("churn-retrain-2")
    with pytest.raises(InvalidInputError) as e:
        retrainer.ensure("churn-retrain-2", "another-pipeline", {})
    assert e.value.field == "spec.monitoring.retraining.pipeline"


def test_pipeline_parameters_are_typed_by_the_pipeline_signature() -> None:
    class Pipeline:
        @staticmethod
        def pipeline_func(data_dir: str, n_trials: int = 0, min_auc: float = 0.8) -> None: ...

    assert typed_parameters(Pipeline, ["n_trials=6", "min_auc=0.7", "data_dir=/d"]) == {"n_trials": 6, "min_auc": 0.7, "data_dir": "/d"}
    with pytest.raises(InvalidInputError) as e:
        typed_parameters(Pipeline, ["n_trials=six"])
    assert e.value.field == "parameters.n_trials"
    with pytest.raises(InvalidInputError):
        typed_parameters(Pipeline, ["budget=1"])


def test_one_deployment_owns_a_registered_model(tmp_path: Path) -> None:
    from churnops.rollout.runner import owner_of  # noqa: PLC0415

    spec = {"model": {"registeredModel": "m", "version": "1"}, "featureService": "churn_v1"}
    DeploymentStore(tmp_path, "first").create_or_update(spec, now=100.0)
    DeploymentStore(tmp_path, "second").create_or_update(spec, now=200.0)
    DeploymentStore(tmp_path, "other").create_or_update({**spec, "model": {"registeredModel": "n", "version": "1"}}, now=50.0)
    assert owner_of(tmp_path, "m") == "first" and owner_of(tmp_path, "n") == "other" and owner_of(tmp_path, "x") is None
    first, second = DeploymentStore(tmp_path, "first").load(), DeploymentStore(tmp_path, "second").load()
    assert first.uid and second.uid and first.uid != second.uid  # run names are unique per deployment object
