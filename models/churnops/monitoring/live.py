"""Live drift in the predictor: counts on the reference bins over a sliding window, gauges on scrape.

Prometheus and the operator should see drift without another service, so
the predictor keeps, per model version, the counts of its recent inputs on
the reference profile's bins and computes the drift statistics (the same
code as the window job, ``churnops.monitoring.drift``) only when ``/metrics``
is scraped.

The request path stays cheap: ``observe`` checks and converts a batch of
rows (O(features) per row) and queues it; queued rows are binned together
once ``batch`` rows are waiting, or on the next snapshot. The window is a
ring of sub-windows: a sub-window closes after ``slot_size`` predictions (and,
with ``slot_seconds``, when it is that old), the oldest drops out, and the
running totals are updated by one subtraction, so a snapshot never re-reads
the window. Memory is bounded by ``slots`` count arrays and one batch.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from churnops.errors import InvalidInputError
from churnops.monitoring.drift import (
    Converted,
    DriftPolicy,
    DriftResult,
    InputColumns,
    Layout,
    WindowCounts,
    check_features,
    concat_converted,
    convert_rows,
    count_converted,
    evaluate,
)
from churnops.monitoring.profile import ReferenceProfile
from churnops_contract import metric_names as m


@dataclass(frozen=True)
class LiveWindow:
    """The sliding window: ``slots`` sub-windows of ``slot_size`` predictions each.

    The window holds the ``slots - 1`` latest full sub-windows and the one
    filling, so between (slots - 1) x slot_size and slots x slot_size predictions.
    """

    slot_size: int = 1_000
    slots: int = 10
    slot_seconds: float | None = None  # also close a sub-window when it is this old (a time window of slots x slot_seconds)
    batch: int = 256  # rows binned together; a snapshot bins whatever is queued

    def __post_init__(self) -> None:
        for name in ("slot_size", "slots", "batch"):
            if getattr(self, name) < 1:
                raise InvalidInputError(f"must be at least 1, got {getattr(self, name)}", field=f"window.{name}")
        if self.slot_seconds is not None and not self.slot_seconds > 0:
            raise InvalidInputError(f"must be positive, got {self.slot_seconds}", field="window.slot_seconds")


class LiveDriftMonitor:
    """Drift of one model version's live inputs against its reference profile.

    ``feature_order`` is the column order of the rows the predictor passes to
    ``observe`` (its model's feature list); it must hold exactly the profile's
    features. Safe to call from many threads.
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        feature_order: Sequence[str],
        *,
        model: str,
        version: str,
        window: LiveWindow | None = None,
        policy: DriftPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        order = list(feature_order)
        check_features(profile.names, order, "feature_order")
        self.layout = Layout.of(profile)
        self.model, self.version = model, version
        self.window = window or LiveWindow()
        self.policy = policy or DriftPolicy()
        self._clock = clock
        position = {name: j for j, name in enumerate(order)}
        self._columns = InputColumns.of(self.layout, [position[name] for name in profile.names])
        self._lock = threading.Lock()
        self._ring = [WindowCounts.empty(self.layout) for _ in range(self.window.slots)]
        self._current = 0
        self._total = WindowCounts.empty(self.layout)
        self._slot_started = clock()
        self._queue: list[Converted] = []
        self._queued = 0

    def observe(self, rows: np.ndarray, scores: np.ndarray | Sequence[float]) -> None:
        """Record predictions: ``rows`` is the (n, features) object array the model scored, ``scores`` its n probabilities."""
        batch = convert_rows(self.layout, rows, scores, self._columns)
        full: list[Converted] | None = None
        with self._lock:
            if self._slot_expired():
                self._rotate_by_time()
            self._queue.append(batch)
            self._queued += batch.rows
            if self._queued >= self.window.batch:
                full, self._queue, self._queued = self._queue, [], 0
        if full:
            self._add(count_converted(self.layout, concat_converted(full)))  # binning outside the lock

    def counts(self) -> WindowCounts:
        """The window's counts now (queued rows included)."""
        with self._lock:
            if self._slot_expired():
                self._rotate_by_time()
            queued, self._queue, self._queued = self._queue, [], 0
        if queued:
            self._add(count_converted(self.layout, concat_converted(queued)))
        with self._lock:
            return self._total.copy()

    @property
    def size(self) -> int:
        """Predictions in the window (queued rows included)."""
        with self._lock:
            return self._total.rows + self._queued

    def snapshot(self) -> DriftResult:
        """Drift statistics and verdict of the current window; an empty window is an error."""
        return evaluate(self.layout, self.counts(), self.policy)

    # --- the ring -------------------------------------------------------------------------------

    def _add(self, counts: WindowCounts) -> None:
        with self._lock:
            self._ring[self._current].add(counts)
            self._total.add(counts)
            if self._ring[self._current].rows >= self.window.slot_size:
                self._advance()

    def _advance(self) -> None:
        """Open the next sub-window; the oldest one leaves the window."""
        self._current = (self._current + 1) % len(self._ring)
        self._total.subtract(self._ring[self._current])
        self._ring[self._current] = WindowCounts.empty(self.layout)
        self._slot_started = self._clock()

    def _slot_expired(self) -> bool:
        return self.window.slot_seconds is not None and self._clock() - self._slot_started >= self.window.slot_seconds

    def _rotate_by_time(self) -> None:
        """Close expired sub-windows; queued rows belong to the one that was open when they came."""
        if self._queue:
            counts = count_converted(self.layout, concat_converted(self._queue))
            self._queue, self._queued = [], 0
            self._ring[self._current].add(counts)
            self._total.add(counts)
        assert self.window.slot_seconds is not None
        elapsed = self._clock() - self._slot_started
        for _ in range(min(int(elapsed // self.window.slot_seconds), len(self._ring))):
            self._advance()


# --- Prometheus ---------------------------------------------------------------------------------------


def drift_families(monitor: LiveDriftMonitor) -> list[Metric]:
    """The drift gauges of one monitor, computed now (nothing but the window size while it is empty)."""
    counts = monitor.counts()
    result = evaluate(monitor.layout, counts, monitor.policy) if counts.rows else None
    return result_families(result, counts.rows, monitor.model, monitor.version)


def result_families(result: DriftResult | None, window_size: int, model: str, version: str) -> list[Metric]:
    """The drift gauges of a judged window (live or from the window job); None: an empty window, only its size."""
    labels = [model, version]
    base = [m.LABEL_MODEL, m.LABEL_VERSION]
    size = GaugeMetricFamily(m.DRIFT_WINDOW_SIZE, "Predictions in the drift window", labels=base)
    size.add_metric(labels, window_size)
    if result is None:
        return [size]
    score = GaugeMetricFamily(m.DRIFT_SCORE, "Drift of a feature in the window, by method", labels=[*base, m.LABEL_FEATURE, m.LABEL_METHOD])
    pvalue = GaugeMetricFamily(
        m.DRIFT_PVALUE, "p-value of a feature's drift test in the window", labels=[*base, m.LABEL_FEATURE, m.LABEL_METHOD]
    )
    quality = GaugeMetricFamily(
        m.FEATURE_QUALITY, "Share of a feature's values failing a quality check", labels=[*base, m.LABEL_FEATURE, m.LABEL_CHECK]
    )
    for f in result.features:
        for method, value in (("psi", f.psi), ("js", f.js), ("ks", f.ks), ("chi2", f.chi2)):
            if value is not None:
                score.add_metric([*labels, f.feature, method], value)
        if f.p_value is not None:
            pvalue.add_metric([*labels, f.feature, f.test], f.p_value)
        for check, rate in (("missing", f.missing_rate), ("out_of_range", f.out_of_range_rate), ("unseen", f.unseen_rate)):
            if rate is not None:
                quality.add_metric([*labels, f.feature, check], rate)
    pvalue.add_metric([*labels, m.SCORE_FEATURE, "ks"], result.score.p_value)
    score_drift = GaugeMetricFamily(m.SCORE_DRIFT, "Drift of the model's score in the window", labels=[*base, m.LABEL_METHOD])
    for method, value in (("psi", result.score.psi), ("js", result.score.js), ("ks", result.score.ks)):
        score_drift.add_metric([*labels, method], value)
    families: list[Metric] = [size, score, pvalue, quality, score_drift]
    if result.drifted_share is not None:
        share = GaugeMetricFamily(m.DRIFTED_FEATURES_SHARE, "Share of tested features drifted after multiple-testing control", labels=base)
        share.add_metric(labels, result.drifted_share)
        families.append(share)
    if result.drift_detected is not None:
        detected = GaugeMetricFamily(m.DRIFT_DETECTED, "1 when the window is judged drifted", labels=base)
        detected.add_metric(labels, 1.0 if result.drift_detected else 0.0)
        families.append(detected)
    return families


class DriftCollector(Collector):
    """Computes the drift gauges of every live monitor when Prometheus scrapes.

    ``monitors`` returns the monitors to report (the predictor's loaded
    versions), so loading and unloading a version needs no re-registration.
    Families of several monitors are merged by name.
    """

    def __init__(self, monitors: Callable[[], Iterable[LiveDriftMonitor]]) -> None:
        self._monitors = monitors

    def describe(self) -> Iterator[Metric]:
        """Names only, so registering does not compute anything."""
        return iter([])

    def collect(self) -> Iterator[Metric]:
        merged: dict[str, Metric] = {}
        for monitor in self._monitors():
            for family in drift_families(monitor):
                if family.name in merged:
                    merged[family.name].samples.extend(family.samples)
                else:
                    merged[family.name] = family
        return iter(merged.values())
