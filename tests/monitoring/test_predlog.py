"""The prediction log: exact round trips in both stores, bounded buffering, drops that are counted, drains, crashes, erasure."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import psycopg
import pyarrow.parquet as pq
import pytest
from prometheus_client import CollectorRegistry

from churnops.errors import InvalidInputError, UnavailableError
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.monitoring.predlog.postgres import PostgresStore
from churnops.monitoring.predlog.records import FIXED_COLUMNS, PAUSE_ROWS, FeatureLayout, LogStore, Pacer, PredictionBatch
from churnops.monitoring.predlog.writer import PredictionLog
from tests.monitoring.predlog_fixtures import (
    LAYOUT,
    SINKS,
    T0,
    FailingStore,
    GatedStore,
    epoch,
    frame_batch,
    make_store,
    pg_dsn_fixture,  # noqa: F401  (fixture "pg_dsn")
    rows_batch,
    store_fixture,  # noqa: F401  (fixture "store")
)

REPO = Path(__file__).resolve().parents[2]
DAY = dt.timedelta(days=1)


def sample(registry: CollectorRegistry, name: str, sink: str, reason: str | None = None) -> float:
    labels = {"sink": sink} | ({"reason": reason} if reason else {})
    value = registry.get_sample_value(name, labels)
    assert value is not None, f"{name}{labels} is not exported"
    return value


def written(registry: CollectorRegistry, sink: str) -> float:
    return sample(registry, "churnops_prediction_log_records_total", sink)


def dropped(registry: CollectorRegistry, sink: str, reason: str) -> float:
    return sample(registry, "churnops_prediction_log_dropped_total", sink, reason)


def whole_day(s: LogStore) -> pd.DataFrame:
    return s.read_window(T0 - DAY, T0 + DAY)


# --- records and their validation ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("names", "categorical", "message"),
    [
        (("Tenure",), frozenset(), "not a usable column name"),
        (("score",), frozenset(), "collides with a prediction log column"),
        (("a", "a"), frozenset(), "duplicate"),
        (("a",), frozenset({"b"}), "not in names"),
    ],
)
def test_layout_rejects_unusable_feature_names(names: tuple[str, ...], categorical: frozenset[str], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message) as e:
        FeatureLayout(names, categorical)
    assert e.value.field is not None and e.value.field.startswith("layout.")


def test_batch_validation_names_the_field() -> None:
    ok = rows_batch([1, 2], T0)
    with pytest.raises(InvalidInputError, match=r"prediction_log\.risk_band: has 1 values for 2 scores"):
        PredictionBatch("churn", "1", LAYOUT, [1, 2], [0.1, 0.2], ["low"], ["a", "b"], ok.features, epoch(T0))
    with pytest.raises(InvalidInputError, match=r"prediction_log\.features\[1\]: has 2 values for 5 features"):
        PredictionBatch("churn", "1", LAYOUT, [1, 2], [0.1, 0.2], ["low"] * 2, ["a", "b"], [ok.features[0], [1, 2]], epoch(T0))
    with pytest.raises(InvalidInputError, match=r"lacks feature column\(s\) \['segment'\]"):
        PredictionBatch("churn", "1", LAYOUT, [1], [0.1], ["low"], ["a"], pd.DataFrame({n: [1] for n in LAYOUT.names[:-1]}), epoch(T0))
    with pytest.raises(InvalidInputError, match=r"prediction_log\.source"):
        PredictionBatch("churn", "1", LAYOUT, [1], [0.1], ["low"], ["a"], [ok.features[0]], epoch(T0), source="shadow")
    with pytest.raises(InvalidInputError, match=r"prediction_log\.time"):
        PredictionBatch("churn", "1", LAYOUT, [1], [0.1], ["low"], ["a"], [ok.features[0]], float("nan"))


@pytest.mark.parametrize("sink", SINKS)
def test_read_window_rejects_naive_and_reversed_times(sink: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    s = make_store(sink, tmp_path, request)
    with pytest.raises(InvalidInputError, match="start: must carry a time zone"):
        s.read_window(dt.datetime(2025, 3, 1), T0)  # a naive time: the mistake under test
    with pytest.raises(InvalidInputError, match=r"end: end .* is before start"):
        s.read_window(T0, T0 - DAY)


# --- round trips ---------------------------------------------------------------------------------------


def test_round_trip_keeps_every_value_and_type(store: LogStore) -> None:
    registry = CollectorRegistry()
    with PredictionLog(store, registry, flush_interval_s=0.05) as plog:
        plog.record(
            model="churn",
            version="1",
            layout=LAYOUT,
            customer_id=None,  # features sent without an id
            score=0.25,
            risk_band="medium",
            request_id="single",
            values=np.array([3, np.nan, 1.5, "growth", None], dtype=object),
            time=epoch(T0),
        )
        assert plog.record_many(rows_batch([1, 2, 3], T0 + dt.timedelta(seconds=1))) == 3
        assert plog.record_many(frame_batch([10, 11, 12, 13], T0 + dt.timedelta(seconds=2))) == 4
        plog.flush()
        got = whole_day(store)
    assert written(registry, store.sink) == 8
    assert list(got.columns) == [*FIXED_COLUMNS, *LAYOUT.names]
    assert got["request_id"].tolist() == ["single", "r0", "r1", "r2", "b0", "b1", "b2", "b3"]  # time order, then request id
    assert str(got["time"].dtype) == "datetime64[us, UTC]" and got["time"].iloc[0] == pd.Timestamp(T0)
    assert got["customer_id"].dtype == pd.Int64Dtype() and got["customer_id"].isna().tolist() == [True] + [False] * 7
    assert got["customer_id"].iloc[1:].tolist() == [1, 2, 3, 10, 11, 12, 13]
    assert got["score"].tolist() == pytest.approx([0.25, 0.01, 0.02, 0.03, *np.linspace(0.01, 0.99, 4)])
    assert got["source"].tolist() == ["online"] * 4 + ["batch"] * 4
    assert got["degraded"].tolist() == [False] * 4 + [True] * 4
    # numeric features: float64, None and NaN both become missing; integers survive exactly
    assert got["tenure_days"].tolist() == [3.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0]
    assert got["mrr"].isna().tolist() == [True, False, False, True, True, False, False, False]
    assert got["mrr"].iloc[[1, 2, 5]].tolist() == [10.5, 21.0, 2.5]
    assert got["logins_mean_7d"].iloc[0] == 1.5 and got["logins_mean_7d"].iloc[1:4].isna().all()
    # categorical features: strings, with null, empty and CSV-hostile text kept apart
    assert got["plan"].tolist() == ["growth"] * 4 + ["starter", None, "", 'quo"te,\nlïne ✓']
    assert got["segment"].tolist() == [None, "smb", "smb", "smb"] + ["enterprise"] * 4


def test_both_stores_return_the_same_frame(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    frames = []
    for sink in SINKS:
        s = make_store(sink, tmp_path / sink, request)
        with PredictionLog(s, CollectorRegistry(), flush_interval_s=0.05) as plog:
            plog.record_many(rows_batch(list(range(50)), T0))
            plog.record_many(frame_batch(list(range(100, 120)), T0 + dt.timedelta(minutes=5)))
            plog.record_many(rows_batch(list(range(7)), T0, version="2", prefix="v2-"))
            plog.flush()
            frames.append(whole_day(s))
    pd.testing.assert_frame_equal(frames[0], frames[1])
    assert len(frames[0]) == 77


@dataclass
class CountingPacer(Pacer):
    """A pacer that rests at every pause point and counts the rests."""

    every_s: float = 0.0
    rest_s: float = 0.0
    rests: int = 0

    def __call__(self) -> None:
        self.rests += 1
        super().__call__()


def test_a_paced_flush_writes_exactly_what_a_flat_out_one_writes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    """The predictor's flusher lets go of the interpreter between columns and row blocks; the records are the same.

    300 one-row batches, as the predictor records them, cross several of the binary encoder's row blocks (``PAUSE_ROWS``),
    with NULLs and strings of several lengths in each."""
    pacer = CountingPacer()
    frames = []
    dsn = request.getfixturevalue("pg_dsn")
    stores: list[tuple[LogStore, Pacer | None]] = [(PostgresStore(dsn), pacer), (PostgresStore(dsn, "flat_out"), None)]
    for s, paced in [*stores, (ParquetStore(tmp_path / "predictions"), pacer)]:
        with PredictionLog(s, CollectorRegistry(), flush_interval_s=60, pacer=paced) as plog:
            for i in range(300):
                plog.record_many(rows_batch([i], T0 + dt.timedelta(milliseconds=i), prefix=f"r{i}-"))
            plog.flush()
            frames.append(whole_day(s))
    assert len(frames[0]) == 300 and frames[0]["mrr"].isna().sum() == 100
    pd.testing.assert_frame_equal(frames[0], frames[1])
    pd.testing.assert_frame_equal(frames[0], frames[2])
    # at least once per fixed column, per feature column and per block of rows, on each of the two paced flushes
    assert pacer.rests >= 2 * (len(FIXED_COLUMNS) + len(LAYOUT.names) + 300 // PAUSE_ROWS)


def test_windows_are_half_open_and_filter_by_model_version_and_features(store: LogStore) -> None:
    other = FeatureLayout(("tenure_days", "nps_score"))
    with PredictionLog(store, CollectorRegistry(), flush_interval_s=0.05) as plog:
        plog.record_many(rows_batch([1, 2], T0))
        plog.record_many(rows_batch([3], T0 + dt.timedelta(hours=1)))
        plog.record_many(
            PredictionBatch("churn", "2", other, [4], [0.9], ["high"], ["n"], [[7, 8.5]], epoch(T0 + dt.timedelta(minutes=30)))
        )
        plog.record_many(rows_batch([5], T0 - dt.timedelta(hours=13), model="upsell"))  # the previous UTC day
        plog.flush()
    hour = store.read_window(T0, T0 + dt.timedelta(hours=1))
    assert hour["customer_id"].tolist() == [1, 2, 4]  # the record at exactly T0 + 1h belongs to the next window
    assert store.read_window(T0 - DAY, T0 + DAY, model="upsell")["customer_id"].tolist() == [5]
    v2 = store.read_window(T0 - DAY, T0 + DAY, model="churn", version="2")
    assert list(v2.columns) == [*FIXED_COLUMNS, "tenure_days", "nps_score"]  # only version 2's features
    assert v2["nps_score"].tolist() == [8.5]
    both = store.read_window(T0 - DAY, T0 + DAY, model="churn", features=["nps_score", "plan", "unknown"])
    assert list(both.columns) == [*FIXED_COLUMNS, "plan", "nps_score"]  # version 1's features first, then version 2's
    assert both["nps_score"].isna().sum() == 3 and both["plan"].isna().sum() == 1  # absent from the other version's rows
    empty = store.read_window(T0 + DAY, T0 + 2 * DAY)
    assert empty.empty and list(empty.columns) == list(FIXED_COLUMNS)
    assert store.read_window(T0, T0).empty


# --- buffering, drops, retries, draining ---------------------------------------------------------------


def test_full_buffer_drops_are_counted_and_everything_accepted_is_written(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    gated = GatedStore(ParquetStore(tmp_path))
    gated.open.clear()  # the disk stalls
    plog = PredictionLog(gated, registry, flush_interval_s=0.01, capacity=100, max_block_s=0.0)
    outcomes = [plog.record_many(rows_batch([i], T0, prefix=f"q{i}-")) for i in range(150)]
    assert sum(outcomes) == 100 and outcomes[100:] == [0] * 50  # the first 100 fit, then drops
    assert sample(registry, "churnops_prediction_log_queue", "parquet") == 100
    assert dropped(registry, "parquet", "queue_full") == 50
    gated.open.set()
    plog.close()
    got = whole_day(gated)
    assert sorted(got["customer_id"].tolist()) == list(range(100))
    assert written(registry, "parquet") == 100
    assert sample(registry, "churnops_prediction_log_queue", "parquet") == 0


def test_a_producer_blocks_briefly_and_gets_in_when_room_appears(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    gated = GatedStore(ParquetStore(tmp_path))
    gated.open.clear()
    with PredictionLog(gated, registry, flush_interval_s=0.01, capacity=10, max_block_s=60.0) as plog:
        assert plog.record_many(rows_batch(list(range(10)), T0)) == 10
        opener = threading.Timer(0.2, gated.open.set)
        opener.start()
        assert plog.record_many(rows_batch([99], T0, prefix="late")) == 1  # waited for the flush instead of dropping
        opener.join()
    assert dropped(registry, "parquet", "queue_full") == 0
    assert len(whole_day(gated)) == 11


def test_batch_larger_than_the_buffer_goes_in_pieces(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with PredictionLog(ParquetStore(tmp_path), registry, flush_interval_s=0.01, capacity=64, max_block_s=30.0) as plog:
        assert plog.record_many(frame_batch(list(range(1000)), T0)) == 1000
    assert sorted(whole_day(ParquetStore(tmp_path))["customer_id"].tolist()) == list(range(1000))
    assert written(registry, "parquet") == 1000


@pytest.mark.parametrize("paced", [False, True], ids=["flat-out", "paced"])  # the predictor's log is paced
@pytest.mark.parametrize("sink", SINKS)
def test_failing_store_is_retried_without_loss_or_duplicates(
    sink: str, paced: bool, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    registry = CollectorRegistry()
    failing = FailingStore(make_store(sink, tmp_path, request), failures=3)
    pacer = Pacer() if paced else None
    with PredictionLog(failing, registry, flush_interval_s=0.01, max_backoff_s=0.05, pacer=pacer) as plog:
        for i in range(20):
            plog.record_many(rows_batch([i], T0, prefix=f"f{i}-"))
        plog.flush(timeout_s=30)
        assert failing.attempts > 3
    got = whole_day(failing)
    assert sorted(got["customer_id"].tolist()) == list(range(20))
    assert written(registry, sink) == 20


def test_last_flush_does_not_advance_while_the_store_fails(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    failing = FailingStore(ParquetStore(tmp_path), failures=10**6)
    plog = PredictionLog(failing, registry, flush_interval_s=0.01, max_backoff_s=0.02, close_timeout_s=0.2)
    plog.record_many(rows_batch([1, 2, 3], T0))
    deadline = time.monotonic() + 30
    while failing.attempts < 5 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert failing.attempts >= 5
    assert sample(registry, "churnops_prediction_log_last_flush_timestamp_seconds", "parquet") == 0
    with pytest.raises(UnavailableError, match=r"3 records not written within 0\.1 s .*No space left on device"):
        plog.flush(timeout_s=0.1)
    plog.close()  # gives up after close_timeout_s, and says so
    assert dropped(registry, "parquet", "unwritten_at_close") == 3
    assert written(registry, "parquet") == 0


def test_values_that_do_not_fit_are_dropped_as_invalid_and_the_rest_written(tmp_path: Path) -> None:
    registry = CollectorRegistry()
    with PredictionLog(ParquetStore(tmp_path), registry, flush_interval_s=60) as plog:
        plog.record_many(rows_batch([1], T0))
        bad = PredictionBatch("churn", "1", LAYOUT, [2], [0.5], ["low"], ["bad"], [["many", 1.0, 2.0, "growth", "smb"]], epoch(T0))
        plog.record_many(bad)  # text in a numeric feature
        plog.record_many(PredictionBatch("churn", "1", LAYOUT, [3], [0.5], [None], ["nb"], [[1, 1, 1, "a", "b"]], epoch(T0)))  # type: ignore[list-item]
        plog.record_many(rows_batch([4], T0, prefix="ok"))
    assert sorted(whole_day(ParquetStore(tmp_path))["customer_id"].tolist()) == [1, 4]
    assert dropped(registry, "parquet", "invalid") == 2
    assert written(registry, "parquet") == 2


def test_type_conflict_in_postgres_is_rejected_not_retried(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    registry = CollectorRegistry()
    s = make_store("postgres", tmp_path, request)
    as_text = FeatureLayout(("tenure_days",), frozenset({"tenure_days"}))
    with PredictionLog(s, registry, flush_interval_s=0.01) as plog:
        plog.record_many(rows_batch([1], T0))
        plog.flush()
        plog.record_many(PredictionBatch("churn", "9", as_text, [2], [0.5], ["low"], ["x"], [["long"]], epoch(T0)))
        plog.flush()
    assert dropped(registry, "postgres", "rejected") == 1
    assert whole_day(s)["customer_id"].tolist() == [1]


def test_close_drains_and_later_records_are_counted_as_closed(store: LogStore) -> None:
    registry = CollectorRegistry()
    plog = PredictionLog(store, registry, flush_interval_s=3600, flush_records=10**6)  # only close() will flush
    for i in range(500):
        plog.record(
            model="churn",
            version="1",
            layout=LAYOUT,
            customer_id=i,
            score=0.5,
            risk_band="low",
            request_id=f"c{i:03d}",
            values=(1.0, 2.0, 3.0, "a", "b"),
            time=epoch(T0),
        )
    plog.close()
    plog.close()  # idempotent
    assert not plog.record(
        model="churn", version="1", layout=LAYOUT, customer_id=1, score=0.5, risk_band="low", request_id="late", values=(1, 2, 3, "a", "b")
    )
    assert dropped(registry, store.sink, "closed") == 1
    assert whole_day(store)["customer_id"].tolist() == list(range(500))
    assert written(registry, store.sink) == 500


@pytest.mark.parametrize("sink", SINKS)
def test_sigkill_loses_only_records_since_the_last_completed_flush(sink: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    target = str(tmp_path / "predictions") if sink == "parquet" else request.getfixturevalue("pg_dsn")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    writer = subprocess.Popen(
        [sys.executable, str(Path(__file__).with_name("predlog_writer.py")), sink, target],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    flushed = 0
    progress: list[tuple[int, int]] = []
    try:
        assert writer.stdout is not None
        deadline = time.monotonic() + 120
        while flushed < 3000 and time.monotonic() < deadline:  # several flushes completed, more records in flight
            line = writer.stdout.readline()
            if not line:
                break
            progress.append((int(line.split()[0]), flushed := int(line.split()[1])))
    finally:
        writer.send_signal(signal.SIGKILL)
        rest, err = writer.communicate(timeout=30)
    assert writer.returncode == -signal.SIGKILL
    assert flushed >= 3000, f"the writer did not get going: {err[-2000:]}"
    progress += [(int(a), int(b)) for a, b in (ln.split() for ln in rest.splitlines() if len(ln.split()) == 2)]
    last_accepted, last_flushed = progress[-1]
    s = make_store(sink, tmp_path, request)
    now = dt.datetime.now(dt.UTC)
    ids = s.read_window(now - DAY, now + DAY)["customer_id"].tolist()
    # Every record of a completed flush survives; what is lost is a tail (the records after the last flush began).
    assert len(ids) >= last_flushed
    assert sorted(ids) == list(range(len(ids))), "records were lost from the middle or duplicated"
    assert len(ids) < last_accepted + 200  # the writer reports every 200 records: it accepted no more than that
    if sink == "parquet":
        for seg in Path(target).rglob("*.parquet"):
            if not seg.name.startswith("."):
                pq.read_metadata(seg)  # every visible segment is whole


# --- erasure and compaction -------------------------------------------------------------------------------


def test_erasure_removes_a_customer_everywhere_and_nothing_else(store: LogStore) -> None:
    with PredictionLog(store, CollectorRegistry(), flush_interval_s=0.05) as plog:
        plog.record_many(rows_batch([1, 7, 2], T0))
        plog.record_many(rows_batch([7], T0 + DAY, version="2"))  # another day and version
        plog.record_many(frame_batch([7, 8], T0 + dt.timedelta(hours=2)))
        plog.record_many(rows_batch([3], T0 + dt.timedelta(hours=3)))
        plog.flush()
        before = store.read_window(T0 - DAY, T0 + 2 * DAY)
        assert plog.erase_customer(7) == 3  # erase_customer flushes what is buffered first
        assert plog.erase_customer(7) == 0
        assert plog.erase_customer(12345) == 0
    after = store.read_window(T0 - DAY, T0 + 2 * DAY)
    assert 7 not in after["customer_id"].tolist()
    expected = before[before["customer_id"] != 7].reset_index(drop=True)
    pd.testing.assert_frame_equal(after, expected)


def test_erasure_rewrites_only_affected_segments_atomically(tmp_path: Path) -> None:
    s = ParquetStore(tmp_path)
    with PredictionLog(s, CollectorRegistry(), flush_interval_s=60) as plog:
        plog.record_many(rows_batch([1, 2], T0))
        plog.flush()
        plog.record_many(rows_batch([100, 101], T0 + dt.timedelta(minutes=1)))  # statistics rule customer 1 out
        plog.flush()
        plog.record_many(rows_batch([1], T0 + dt.timedelta(minutes=2)))  # only customer 1: the segment goes
        plog.flush()
    segments = sorted(tmp_path.rglob("*.parquet"))
    assert len(segments) == 3
    stat = {p: (p.stat().st_ino, p.stat().st_mtime_ns) for p in segments}
    assert s.erase_customer(1) == 2
    left = sorted(tmp_path.rglob("*.parquet"))
    assert left == segments[:2]
    assert (segments[1].stat().st_ino, segments[1].stat().st_mtime_ns) == stat[segments[1]]  # untouched
    assert segments[0].stat().st_ino != stat[segments[0]][0]  # replaced by rename, never edited in place
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert whole_day(s)["customer_id"].tolist() == [2, 100, 101]


def test_compaction_merges_segments_and_a_half_done_compaction_never_double_counts(tmp_path: Path) -> None:
    s = ParquetStore(tmp_path)
    with PredictionLog(s, CollectorRegistry(), flush_interval_s=60) as plog:
        for k in range(6):
            plog.record_many(rows_batch([k * 10, k * 10 + 1], T0 + dt.timedelta(minutes=k), prefix=f"s{k}-"))
            plog.flush()
    partition = next(tmp_path.glob("date=*/model=churn/version=1"))
    sources = sorted(partition.glob("*.parquet"))
    assert len(sources) == 6
    before = whole_day(s)
    kept = tmp_path / "kept"
    kept.mkdir()
    for p in sources:
        shutil.copy2(p, kept / p.name)
    assert s.compact() == 6
    assert len(list(partition.glob("*.parquet"))) == 1
    pd.testing.assert_frame_equal(whole_day(s), before)
    for p in kept.iterdir():  # as if compaction had stopped between its rename and its deletions
        shutil.copy2(p, partition / p.name)
    pd.testing.assert_frame_equal(whole_day(s), before)
    assert s.erase_customer(31) == 1  # erasure also clears the leftover copies
    assert s.compact() == 0 and len(list(partition.glob("*.parquet"))) == 1
    assert len(whole_day(s)) == 11


def test_compaction_leaves_recent_days_alone(tmp_path: Path) -> None:
    s = ParquetStore(tmp_path)
    with PredictionLog(s, CollectorRegistry(), flush_interval_s=60) as plog:
        for day in range(2):
            for k in range(2):
                plog.record_many(rows_batch([day * 10 + k], T0 + day * DAY + dt.timedelta(minutes=k), prefix=f"d{day}{k}-"))
                plog.flush()
    assert s.compact(before=(T0 + DAY).date()) == 2
    assert [len(list(p.glob("*.parquet"))) for p in sorted(tmp_path.glob("date=*/model=*/version=*"))] == [1, 2]


# --- the stores on their own -----------------------------------------------------------------------------------


def test_postgres_store_creates_its_table_and_indexes(tmp_path: Path, request: pytest.FixtureRequest) -> None:
    dsn = request.getfixturevalue("pg_dsn")
    s = PostgresStore(dsn, table="plog")
    assert s.read_window(T0, T0 + DAY).empty  # reading before any write is an empty window, not an error
    assert s.erase_customer(1) == 0
    with PredictionLog(s, CollectorRegistry(), flush_interval_s=0.01) as plog:
        plog.record_many(rows_batch([1], T0))
    with psycopg.connect(dsn) as conn:
        indexes = {r[0] for r in conn.execute("SELECT indexdef FROM pg_indexes WHERE tablename = 'plog'").fetchall()}
    assert any('(customer_id, "time")' in i or "(customer_id, time)" in i for i in indexes), indexes
    assert any("USING brin" in i for i in indexes), indexes
    with pytest.raises(InvalidInputError, match=r"prediction_log\.table"):
        PostgresStore(dsn, table="plog; DROP TABLE plog")
