"""Reasons precomputed per (model version, feature snapshot) and served by lookup are the reasons computed afresh.

The cluster's stores (Redis online store, PostgreSQL offline store) are published the way `churnops features
publish --mode cluster` does, an older snapshot first, then the latest. Served entries are compared byte for byte
with the contributions of the same row explained alone, as a request without the store computes them; entries
of an older snapshot, of another version or of another artifact must never be served, and erasing a customer
deletes theirs.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import redis
from feast import FeatureStore
from prometheus_client import CollectorRegistry

from churnops.data.generator import load_manifest
from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.serving.explain import Scored
from churnops.serving.inputs import Instance, ParsedRequest
from churnops.serving.instruments import ServingMetrics
from churnops.serving.reasons import ReasonsStore, encode, explainer, model_key, precompute_registered, prune, registered_keys
from churnops.serving.scoring import Scorer, ServedModel, ServingPolicy
from churnops.serving.server import STORE_ERRORS, feature_schema, reasons_store, redis_options
from churnops.training import registry
from churnops_feast import store as feast_store
from churnops_feast.definitions import TRAINING_SERVICE
from churnops_feast.erase import erase_online_redis
from churnops_feast.online import DERIVED_PREFIX, RedisFeatureReader, derived_key, redis_reader
from tests.conftest import PG_ADMIN_DSN
from tests.support.services import temporary_database
from tests.support.serving import Registered

ReaderFor = Callable[[list[str]], RedisFeatureReader]


@dataclass(frozen=True)
class Cluster:
    layout: Layout
    env: dict[str, str]
    client: redis.Redis
    store: FeatureStore

    def reader_for(self) -> ReaderFor:
        return lambda only: redis_reader(self.store, TRAINING_SERVICE, self.client, only)

    def publish(self, serve_day: int | None = None) -> None:
        foundation.publish(self.layout, "cluster", self.env, serve_day)


@pytest.fixture(scope="module")
def cluster(small_layout: Layout, redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """The small data set's older labelled snapshot published to Redis (a database of its own) and PostgreSQL."""
    layout = Layout(tmp_path_factory.mktemp("reasons") / "data")
    shutil.copytree(small_layout.data_dir, layout.data_dir)
    with temporary_database(PG_ADMIN_DSN, prefix="churnops_test") as db:
        env = {**os.environ, "CHURNOPS_REDIS": f"{redis_url},db=5", "CHURNOPS_PG_DATABASE": db, "CHURNOPS_PG_HOST": "127.0.0.1"}
        client = redis.Redis(**redis_options(env["CHURNOPS_REDIS"]), socket_timeout=5)
        client.flushdb()
        cluster = Cluster(layout, env, client, feast_store.open_store("cluster", env, layout.data_dir))
        cluster.publish(load_manifest(layout.raw).calendar.labelled_snapshot_days()[-1])
        yield cluster


def scorer(cluster: Cluster, reg: registry.RegistryConfig, version: str, with_store: bool = True) -> Scorer:
    model = registry.load_model(reg, version)
    info = registry.version_info(reg, version)
    fingerprint = info["tags"][f"sha256.{registry.MODEL_FILE}"]
    served = ServedModel(reg.model_name, version, None, model, info["threshold"], info["run_id"], fingerprint)
    reader = cluster.reader_for()(list(model.feature_names))
    metrics = ServingMetrics(CollectorRegistry())
    schema = feature_schema(model.feature_names, model.categorical)
    reasons = reasons_store(reader, served) if with_store else None
    return Scorer(served, schema, reader, STORE_ERRORS, None, metrics, ServingPolicy(), reasons=reasons)


def as_bytes(scored: Scored) -> bytes:
    assert scored.margin is not None and scored.contributions is not None
    parts = (scored.probability, scored.margin, np.array([scored.base_value]), scored.contributions)
    return b"".join(bytes(np.ascontiguousarray(p, dtype=float).tobytes()) for p in parts)


def fresh(s: Scorer, record: dict[str, Any]) -> bytes:
    """The row explained alone, as a request computes it without the store: probability, margin, base, contributions."""
    return as_bytes(s.compiled.explain(s.rows([record])))


def same(s: Scorer, record: dict[str, Any], entry: Scored | None) -> bool:
    return entry is not None and as_bytes(entry) == fresh(s, record)


def served(s: Scorer, ids: list[int]) -> list[tuple[dict[str, Any], Scored | None]]:
    fetched = s.fetch([Instance(cid, None) for cid in ids])
    assert fetched.precomputed is not None
    return [(r, c) for r, c in zip(fetched.records, fetched.precomputed, strict=True) if r is not None]


def sample(cluster: Cluster, n: int = 25) -> list[int]:
    ids = sorted(cluster.reader_for()(["mrr"]).customers())
    return ids[:: max(1, len(ids) // n)][:n]


def wipe_reasons(client: redis.Redis) -> None:
    for key in client.scan_iter(match=DERIVED_PREFIX + b"*"):
        client.delete(key)


def answers(s: Scorer, ids: list[int], full: bool = False) -> list[dict[str, object]]:
    out = s.score(ParsedRequest([Instance(cid, None) for cid in ids], 5), "tester", None, full=full).predictions
    return [{k: v for k, v in p.items() if k != "request_id"} for p in out]


def test_served_reasons_are_the_fresh_ones_bit_for_bit_across_snapshots(cluster: Cluster, registered: Registered) -> None:
    wipe_reasons(cluster.client)
    done = precompute_registered(registered.cfg, cluster.reader_for(), threads=2)  # as `features publish` does
    assert set(done) == {registered.champion, registered.challenger} and all(n > 0 for n in done.values())
    ids = sample(cluster)
    for version in (registered.champion, registered.challenger):  # xgboost alone; lightgbm + xgboost + logistic stack
        s = scorer(cluster, registered.cfg, version)
        hits = served(s, ids)
        assert all(c is not None for _, c in hits)
        for record, c in hits:
            assert same(s, record, c)
        # whole answers too, as a server without the store gives them
        plain = scorer(cluster, registered.cfg, version, with_store=False)
        for full in (False, True):  # predict, and the explain verb (every feature, margin and base value)
            assert [answers(s, [cid], full) for cid in ids[:5]] == [answers(plain, [cid], full) for cid in ids[:5]]

    before = {cid: record for cid, (record, _) in zip(ids, served(scorer(cluster, registered.cfg, registered.champion), ids), strict=True)}
    cluster.publish()  # the latest snapshot: most customers' features change, their entries are now stale
    s = scorer(cluster, registered.cfg, registered.champion)
    now = served(s, ids)
    changed = [cid for cid, (record, _) in zip(ids, now, strict=True) if record != before[cid]]
    assert len(changed) > len(ids) // 2
    for cid, (record, c) in zip(ids, now, strict=True):
        assert c is None if cid in changed else same(s, record, c)

    for cid in changed:  # requests compute the misses and store them (on the store's writer thread)
        answers(s, [cid])
    assert s.reasons is not None
    s.reasons.close()
    for record, c in served(s, ids):
        assert same(s, record, c)


def champion_precomputed(cluster: Cluster, registered: Registered) -> tuple[list[int], Scorer, RedisFeatureReader]:
    """Only the champion's entries in the store: ten sampled customers, the champion's scorer and its reader."""
    wipe_reasons(cluster.client)
    precompute_registered(registered.cfg, cluster.reader_for(), registered_keys(registered.cfg, [registry.CHAMPION]))
    ids = sample(cluster, 10)
    champion = scorer(cluster, registered.cfg, registered.champion)
    reader = champion.source
    assert isinstance(reader, RedisFeatureReader)
    return ids, champion, reader


def test_a_version_never_serves_entries_of_another(cluster: Cluster, registered: Registered) -> None:
    ids, champion, reader = champion_precomputed(cluster, registered)
    assert all(c is not None for _, c in served(champion, ids))
    # a newly loaded version, and the same version number naming another artifact (another registry): misses
    challenger = scorer(cluster, registered.cfg, registered.challenger)
    assert all(c is None for _, c in served(challenger, ids))
    other = ReasonsStore(reader, model_key(registered.cfg.model_name, registered.champion, "0" * 64), len(champion.compiled.features))
    assert all(f.entry is None for f in other.read_many(ids))

    warming = challenger.start_warming()  # what loading a version starts
    assert warming is not None
    warming.join(timeout=120)
    for record, c in served(challenger, ids):
        assert same(challenger, record, c)


def test_publishing_prunes_the_entries_of_versions_no_longer_served(cluster: Cluster, registered: Registered) -> None:
    ids, champion, reader = champion_precomputed(cluster, registered)
    retired = ReasonsStore(reader, model_key(registered.cfg.model_name, "1", "0" * 64), len(champion.compiled.features))
    found = champion.reasons.read_many(ids) if champion.reasons is not None else []
    retired.store([(cid, f.digest, encode(f.digest, f.entry, 0)) for cid, f in zip(ids, found, strict=True) if f.entry is not None])
    lock = DERIVED_PREFIX + b"lock:" + retired.field
    cluster.client.set(lock, b"someone")  # a precomputing process's lock is not an entry
    assert all(f.entry is not None for f in retired.read_many(ids))

    keep = registered_keys(registered.cfg)
    assert set(keep) == {registered.champion, registered.challenger}
    assert prune(cluster.client, keep.values(), batch=3) == len(ids)  # small batches: every page of the scan is seen
    assert all(f.entry is None for f in retired.read_many(ids))
    assert all(c is not None for _, c in served(champion, ids))  # the served version's entries stay
    assert cluster.client.get(lock) == b"someone"
    assert prune(cluster.client, keep.values()) == 0
    cluster.client.delete(lock)


def test_erasing_a_customer_deletes_their_reasons_and_a_late_write_does_not_bring_them_back(
    cluster: Cluster, registered: Registered
) -> None:
    s = scorer(cluster, registered.cfg, registered.champion)
    assert s.reasons is not None
    cid = sample(cluster)[-1]
    s.reasons.precompute(explainer(s.compiled), [cid])
    (found,) = s.reasons.read_many([cid])
    assert found.entry is not None
    reader = s.source
    assert isinstance(reader, RedisFeatureReader)
    derived = derived_key(reader.key(cid))
    assert cluster.client.exists(derived)

    assert erase_online_redis(cluster.store, cluster.client, cid) == 1
    assert not cluster.client.exists(derived)
    assert (
        s.reasons.store([(cid, found.digest, encode(found.digest, found.entry, 0))]) == 0
    )  # computed before the erasure, written after it
    assert not cluster.client.exists(derived)
