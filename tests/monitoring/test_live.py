"""The predictor's live drift: the sliding window, agreement with the window statistics, threads, and /metrics."""

from __future__ import annotations

import threading
import urllib.request
from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.parser import text_string_to_metric_families

from churnops.errors import InvalidInputError
from churnops.monitoring.drift import Layout, count_rows, evaluate
from churnops.monitoring.live import DriftCollector, LiveDriftMonitor, LiveWindow
from churnops.monitoring.profile import ReferenceProfile
from churnops_contract import metric_names as m
from tests.monitoring.drift_data import SmallFrame

ORDER = ["plan", "rating", "amount", "visits"]  # the predictor's column order differs from the profile's


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


def rows_of(frame: pd.DataFrame, order: list[str] = ORDER) -> np.ndarray:
    out = frame[order].astype(object).to_numpy()
    out[pd.isna(out)] = None  # the predictor holds None for a missing value
    return out


def feed(monitor: LiveDriftMonitor, frame: pd.DataFrame, scores: np.ndarray, batch: int = 1) -> None:
    rows = rows_of(frame)
    for i in range(0, len(rows), batch):
        monitor.observe(rows[i : i + batch], scores[i : i + batch])


def test_snapshot_equals_the_window_statistics(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(1_500, seed=21, shift=0.3)
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="3", window=LiveWindow(slot_size=500, slots=4, batch=64))
    feed(monitor, frame, scores, batch=7)
    live = monitor.snapshot()
    layout = Layout.of(small_profile)
    direct = evaluate(layout, count_rows(layout, rows_of(frame, list(small_profile.names)), scores))
    assert live == direct
    assert live.rows == 1_500 and monitor.size == 1_500
    assert all(f.ks_basis == "bins" for f in live.features if f.kind == "numeric")


def test_old_sub_windows_leave_the_window(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    drifted, drifted_scores = make_small(1_000, seed=22, shift=1.0)
    calm, calm_scores = make_small(750, seed=23)
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="3", window=LiveWindow(slot_size=250, slots=4, batch=50))
    feed(monitor, drifted, drifted_scores, batch=10)
    assert monitor.size == 750  # three full sub-windows; the fourth has just opened, empty
    assert monitor.snapshot().drift_detected is True
    feed(monitor, calm.iloc[:500], calm_scores[:500], batch=10)
    assert monitor.size == 750 and monitor.snapshot().drift_detected is True  # one drifted sub-window is still in
    feed(monitor, calm.iloc[500:], calm_scores[500:], batch=10)
    result = monitor.snapshot()
    layout = Layout.of(small_profile)
    assert result == evaluate(layout, count_rows(layout, rows_of(calm, list(small_profile.names)), calm_scores))
    assert result.drift_detected is False


def test_time_window_closes_sub_windows_without_traffic(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    clock = FakeClock()
    window = LiveWindow(slot_size=10_000, slots=3, slot_seconds=60.0, batch=1_000)
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="3", window=window, clock=clock)
    frame, scores = make_small(300, seed=24)
    feed(monitor, frame.iloc[:100], scores[:100], batch=20)
    clock.now += 61
    feed(monitor, frame.iloc[100:300], scores[100:300], batch=20)  # queued rows of the first minute stay in its sub-window
    assert monitor.counts().rows == 300
    clock.now += 120  # two more sub-windows close: the first minute drops out
    assert monitor.counts().rows == 200
    clock.now += 600  # long idle: every sub-window expired
    assert monitor.counts().rows == 0
    with pytest.raises(InvalidInputError, match="window: the window holds no predictions"):
        monitor.snapshot()


def test_concurrent_observers_lose_nothing(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    frame, scores = make_small(4_000, seed=25)
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="3", window=LiveWindow(slot_size=100_000, slots=2, batch=128))
    rows = rows_of(frame)
    parts = np.array_split(np.arange(4_000), 8)
    start = threading.Barrier(len(parts) + 1)

    def worker(idx: np.ndarray) -> None:
        start.wait()
        for i in idx:
            monitor.observe(rows[i : i + 1], scores[i : i + 1])

    threads = [threading.Thread(target=worker, args=(p,)) for p in parts]
    for t in threads:
        t.start()
    start.wait()
    scrapes = [monitor.counts().rows for _ in range(20)]  # scrapes while observers run
    for t in threads:
        t.join()
    assert scrapes == sorted(scrapes)
    layout = Layout.of(small_profile)
    expected = count_rows(layout, rows_of(frame, list(small_profile.names)), scores)
    got = monitor.counts()
    assert got.rows == 4_000
    np.testing.assert_array_equal(got.bins, expected.bins)
    np.testing.assert_array_equal(got.missing, expected.missing)
    np.testing.assert_array_equal(got.score_bins, expected.score_bins)


def test_bad_input_to_the_monitor(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    with pytest.raises(InvalidInputError, match=r"feature_order: features of the reference profile missing from the window: \['visits'\]"):
        LiveDriftMonitor(small_profile, ["plan", "rating", "amount"], model="churn", version="3")
    with pytest.raises(
        InvalidInputError, match=r"feature_order: features not in the reference profile of this model version: \['tenure'\]"
    ):
        LiveDriftMonitor(small_profile, [*ORDER, "tenure"], model="churn", version="3")
    with pytest.raises(InvalidInputError, match=r"window\.slots"):
        LiveWindow(slots=0)
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="3")
    frame, scores = make_small(3, seed=26)
    with pytest.raises(InvalidInputError, match=r"scores\[1\]: 1 score\(s\) are NaN"):
        monitor.observe(rows_of(frame), np.array([0.1, np.nan, 0.2]))
    with pytest.raises(InvalidInputError, match=r"rows: expected an \(n, 4\) array"):
        monitor.observe(rows_of(frame)[:, :3], scores)
    assert monitor.size == 0  # refused batches leave no trace


def scrape(registry: CollectorRegistry) -> dict[str, list[tuple[dict[str, str], float]]]:
    text = generate_latest(registry).decode()
    return {f.name: [(s.labels, s.value) for s in f.samples] for f in text_string_to_metric_families(text)}


def test_collector_exports_the_contract_gauges(small_profile: ReferenceProfile, make_small: SmallFrame) -> None:
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="3")
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: [monitor]))
    assert scrape(registry) == {m.DRIFT_WINDOW_SIZE: [({"model": "churn", "version": "3"}, 0.0)]}  # empty: nothing else, no zeros
    frame, scores = make_small(600, seed=27, shift=1.0)
    feed(monitor, frame, scores, batch=50)
    got = scrape(registry)
    result = monitor.snapshot()
    assert got[m.DRIFT_DETECTED] == [({"model": "churn", "version": "3"}, 1.0)]
    assert got[m.DRIFTED_FEATURES_SHARE][0][1] == pytest.approx(result.drifted_share)
    psi = {s[0]["feature"]: s[1] for s in got[m.DRIFT_SCORE] if s[0]["method"] == "psi"}
    assert psi == pytest.approx({f.feature: f.psi for f in result.features})
    methods = {(s[0]["feature"], s[0]["method"]) for s in got[m.DRIFT_PVALUE]}
    assert methods == {("amount", "ks"), ("visits", "ks"), ("rating", "ks"), ("plan", "chi2"), (m.SCORE_FEATURE, "ks")}
    checks = {(s[0]["feature"], s[0]["check"]) for s in got[m.FEATURE_QUALITY]}
    assert ("plan", "unseen") in checks and ("amount", "out_of_range") in checks and ("plan", "out_of_range") not in checks
    assert {s[0]["method"] for s in got[m.SCORE_DRIFT]} == {"psi", "js", "ks"}
    assert got[m.DRIFT_WINDOW_SIZE] == [({"model": "churn", "version": "3"}, 600.0)]


@pytest.fixture
def metrics_server(small_profile: ReferenceProfile, make_small: SmallFrame) -> Iterator[tuple[str, LiveDriftMonitor]]:
    monitor = LiveDriftMonitor(small_profile, ORDER, model="churn", version="4", window=LiveWindow(batch=32))
    registry = CollectorRegistry()
    registry.register(DriftCollector(lambda: [monitor]))
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    try:
        yield f"http://127.0.0.1:{server.server_port}/metrics", monitor
    finally:
        server.shutdown()
        thread.join(5)


def test_gauges_are_computed_on_each_scrape_over_http(metrics_server: tuple[str, LiveDriftMonitor], make_small: SmallFrame) -> None:
    url, monitor = metrics_server
    frame, scores = make_small(400, seed=28)
    feed(monitor, frame.iloc[:100], scores[:100])
    with urllib.request.urlopen(url, timeout=10) as response:
        first = response.read().decode()
    assert 'churnops_drift_window_size{model="churn",version="4"} 100.0' in first
    assert m.DRIFT_DETECTED not in first  # 100 predictions: below the verdict's minimum
    feed(monitor, frame.iloc[100:], scores[100:])
    with urllib.request.urlopen(url, timeout=10) as response:
        second = response.read().decode()
    assert 'churnops_drift_window_size{model="churn",version="4"} 400.0' in second
    assert 'churnops_drift_detected{model="churn",version="4"} 0.0' in second
