"""Feast with the embedded configuration: SQLite online store, Parquet offline store."""

from __future__ import annotations

import sqlite3

import pandas as pd
import pytest

from churnops.cli import main
from churnops.data.generator import load_manifest
from churnops.data.raw import read_raw
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.errors import NotFoundError
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS, FEATURES
from churnops.layout import Layout
from churnops_feast import store as fs
from churnops_feast.definitions import LIVE_SERVICE, TRAINING_SERVICE


@pytest.fixture
def published(layout_copy: Layout) -> Layout:
    foundation.publish(layout_copy, "embedded", {})
    return layout_copy


def _online_rows(layout: Layout) -> list[tuple[object, ...]]:
    db = layout.data_dir / "feast" / "online_store.db"
    with sqlite3.connect(db) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return [row for t in tables for row in conn.execute(f'SELECT * FROM "{t}" ORDER BY 1, 2')]


def test_training_service_has_100_plus_features(published: Layout) -> None:
    store = fs.open_store("embedded", {}, published.data_dir)
    service = store.get_feature_service(TRAINING_SERVICE)
    names = [f.name for proj in service.feature_view_projections for f in proj.features]
    assert len(names) >= 100
    assert sorted(names) == sorted(f.name for f in FEATURES)


def test_online_values_are_the_latest_snapshot(published: Layout) -> None:
    latest = pd.read_parquet(published.features / "usage.parquet")
    latest = latest[latest[TIMESTAMP] == latest[TIMESTAMP].max()].set_index(ENTITY)
    ids = [int(i) for i in latest.index[:5]]
    online = foundation.lookup(published, "embedded", {}, ids)
    assert online[ENTITY] == ids
    assert online["logins_mean_30d"] == pytest.approx(latest.loc[ids, "logins_mean_30d"].tolist())
    assert len(online) - 1 == len(FEATURES)


def test_unknown_customer_gets_nulls_not_an_error(published: Layout) -> None:
    online = foundation.lookup(published, "embedded", {}, [1])
    assert online["mrr"] == [None]


def test_on_demand_view_uses_the_request_value(published: Layout) -> None:
    store = fs.open_store("embedded", {}, published.data_dir)
    cid = foundation.active_customers(published, 1)[0]
    out = fs.online_features(store, [cid], LIVE_SERVICE, {"active_users_today": [12]})
    assert out["live_seat_utilization"][0] == pytest.approx(12 / out["seats_purchased"][0])


def test_materializing_the_same_window_twice_changes_nothing(published: Layout) -> None:
    first = _online_rows(published)
    served = foundation.served_customers(published, load_manifest(published.raw).calendar)
    assert len(first) == len(served) * len(FEATURES)  # one row per customer and feature
    foundation.publish(published, "embedded", {})
    assert _online_rows(published) == first


def test_incremental_materialization_after_backfill_is_a_no_op(published: Layout) -> None:
    cfg = load_manifest(published.raw)
    store = fs.open_store("embedded", {}, published.data_dir)
    before = _online_rows(published)
    fs.materialize_incremental(store, cfg.calendar.day_timestamp(cfg.history_days).to_pydatetime())
    assert _online_rows(published) == before


def test_historical_retrieval_is_point_in_time_correct(published: Layout) -> None:
    """A feature row stamped after the label time is never joined."""
    cfg = load_manifest(published.raw)
    store = fs.open_store("embedded", {}, published.data_dir)
    usage = pd.read_parquet(published.features / "usage.parquet")
    s1, s2 = cfg.calendar.day_timestamp(cfg.calendar.snapshot_days()[0]), cfg.calendar.day_timestamp(cfg.calendar.snapshot_days()[1])
    both = set(usage.loc[usage[TIMESTAMP] == s1, ENTITY]) & set(usage.loc[usage[TIMESTAMP] == s2, ENTITY])
    ids = sorted(both)[:20]
    entity_df = pd.DataFrame(
        {ENTITY: ids * 3, TIMESTAMP: [s2 - pd.Timedelta(seconds=1)] * 20 + [s2] * 20 + [s1 + pd.Timedelta(days=10)] * 20}
    )
    got = fs.historical_features(store, entity_df, TRAINING_SERVICE).set_index([ENTITY, TIMESTAMP])
    at = usage.set_index([ENTITY, TIMESTAMP])["logins_mean_30d"]
    for cid in ids:
        # one second before the s2 snapshot, the s2 row is in the future: the s1 row is joined
        assert got.loc[(cid, s2 - pd.Timedelta(seconds=1)), "logins_mean_30d"] == pytest.approx(at[(cid, s1)])
        assert got.loc[(cid, s1 + pd.Timedelta(days=10)), "logins_mean_30d"] == pytest.approx(at[(cid, s1)])
        assert got.loc[(cid, s2), "logins_mean_30d"] == pytest.approx(at[(cid, s2)])
    assert at[(ids[0], s1)] != at[(ids[0], s2)]


def test_training_set_from_labels(published: Layout) -> None:
    store = fs.open_store("embedded", {}, published.data_dir)
    labels = read_raw(published.raw, "labels")
    frame = fs.historical_features(store, labels[[ENTITY, TIMESTAMP, "churned_30d"]], TRAINING_SERVICE)
    assert len(frame) == len(labels)
    assert frame["churned_30d"].sum() == labels["churned_30d"].sum()
    assert frame["segment"].notna().all()
    assert set(DOMAINS) == {"demographic", "billing", "usage", "support", "engagement"}


def test_incremental_materialization_loads_only_newer_rows(layout_copy: Layout) -> None:
    cfg = load_manifest(layout_copy.raw)
    store = fs.open_store("embedded", {}, layout_copy.data_dir)
    fs.apply(store, fs.objects_for("embedded", layout_copy.features))
    previous = cfg.calendar.day_timestamp(cfg.calendar.snapshot_days()[-2])
    start, _ = foundation.serving_window(cfg.calendar)
    fs.materialize(store, start - pd.Timedelta(days=30), previous + pd.Timedelta(seconds=1))
    demo = pd.read_parquet(layout_copy.features / "demographic.parquet").set_index([ENTITY, TIMESTAMP])["tenure_days"]
    latest = cfg.calendar.day_timestamp(cfg.history_days)
    cid = next(c for c, ts in demo.index if ts == latest and (c, previous) in demo.index)
    assert foundation.lookup(layout_copy, "embedded", {}, [cid])["tenure_days"] == [demo[(cid, previous)]]
    foundation.publish_incremental(layout_copy, "embedded", {})
    assert foundation.lookup(layout_copy, "embedded", {}, [cid])["tenure_days"] == [demo[(cid, latest)]]


def test_training_before_publishing_says_what_to_run(layout_copy: Layout, capsys: pytest.CaptureFixture[str]) -> None:
    """Features built but never published: a clear error naming the step, not Feast's traceback."""
    assert main(["--data-dir", str(layout_copy.data_dir), "train", "--trials", "3"]) == NotFoundError.exit_code
    err = capsys.readouterr().err
    assert "feature service 'churn_v1' is not in the feature store" in err and "churnops features publish" in err
