"""Exact reasons precomputed per (model version, feature snapshot), kept next to the online features.

Explaining a row (exact TreeSHAP) costs most of an explained prediction, yet a customer's reasons change only
when the model version or the customer's features change: when a snapshot is materialized, or a version is
loaded. So they are computed then, in batches, and kept in Redis beside Feast's hash of the customer
(``derived_key``: erasing the customer deletes both), one hash field per model version. The field names the
registered model, the version and the artifact's sha256; each entry starts with a digest of the exact stored
bytes of the features it was computed from. Serving reads the entry in the same round trip as the features and
uses it only when that digest equals the digest of the bytes it has just read: an entry of an older snapshot,
of changed features or of another model is never served. It is a miss, computed as before and stored again.

An entry holds what explaining the row alone gives: probability, margin, base value and every feature's
contribution, so a hit replaces the request's whole computation. Batches are computed with
``CompiledModel.explain_alone``, whose rows are those of explaining each alone to the bit (the tests check
it); a request that computed a miss alone stores its result, a batched one stores nothing (its sums round
with the batch's shape).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import redis

from churnops.serving.explain import CompiledModel, Scored
from churnops.training import registry
from churnops_feast.online import DERIVED_PREFIX, RedisFeatureReader, derived_key

log = logging.getLogger(__name__)

DIGEST_BYTES = 16
CHUNK = 500  # customers per read, explain and write while precomputing
STORE_BACKLOG = 1_000  # entries queued for writing past which a miss is not stored (the store is slow: it stays a miss)
SERVED_ALIASES = (registry.CHAMPION, registry.CHALLENGER)  # the versions a snapshot's reasons are computed for
LOCK_S = 600  # a precomputing process holds the version's lock this long past its last chunk
_ABSENT = b"\xff\xff\xff\xff"  # length prefix of a missing value: no stored value has it
# HSET only while the customer's features exist: an erasure deletes both hashes at once, so a write that was already
# under way cannot bring back reasons of an erased customer.
_GUARDED_HSET = "if redis.call('EXISTS', KEYS[1]) == 1 then return redis.call('HSET', KEYS[2], ARGV[1], ARGV[2]) end return -1"

Explainer = Callable[[list[dict[str, Any]]], Scored]


def model_key(registered_model: str, version: str, fingerprint: str) -> str:
    """What an entry belongs to: a version number alone could name another artifact in another registry."""
    return f"{registered_model}:{version}:{fingerprint}"


def raw_digest(raw: Sequence[bytes | None]) -> bytes:
    """Digest of a customer's stored feature bytes in the model's feature order (length-prefixed: one encoding per row)."""
    h = hashlib.blake2b(digest_size=DIGEST_BYTES)
    for value in raw:
        if value is None:
            h.update(_ABSENT)
        else:
            h.update(len(value).to_bytes(4, "little"))
            h.update(value)
    return h.digest()


def encode(digest: bytes, scored: Scored, r: int) -> bytes:
    """Row ``r`` of an explanation: probability, margin, base value, then the contributions (float64)."""
    assert scored.margin is not None and scored.base_value is not None and scored.contributions is not None
    head = np.array([scored.probability[r], scored.margin[r], scored.base_value], dtype="<f8")
    return digest + head.tobytes() + np.ascontiguousarray(scored.contributions[r], dtype="<f8").tobytes()


def decode(entry: bytes | None, digest: bytes, n_features: int) -> Scored | None:
    """The one-row explanation in ``entry`` if it was computed from the features whose digest is ``digest``, else None."""
    if entry is None or len(entry) != DIGEST_BYTES + 8 * (3 + n_features) or entry[:DIGEST_BYTES] != digest:
        return None
    values = np.frombuffer(entry, dtype="<f8", offset=DIGEST_BYTES)
    return Scored(values[0:1], values[1:2], float(values[2]), values[3:].reshape(1, n_features))


def joined(entries: Sequence[Scored]) -> Scored:
    """One explanation of the rows of one-row explanations (one model's base value is the same for every row)."""
    if len(entries) == 1:
        return entries[0]
    margins = [e.margin for e in entries if e.margin is not None]
    contributions = [e.contributions for e in entries if e.contributions is not None]
    return Scored(
        np.concatenate([e.probability for e in entries]), np.concatenate(margins), entries[0].base_value, np.vstack(contributions)
    )


def feature_rows(features: Sequence[str], records: Sequence[dict[str, Any] | None]) -> np.ndarray:
    """Object rows in the model's feature order, as ``CompiledModel`` scores them."""
    out = np.empty((len(records), len(features)), dtype=object)
    for r, rec in enumerate(records):
        assert rec is not None
        out[r, :] = [rec.get(f) for f in features]
    return out


def explainer(compiled: CompiledModel) -> Explainer:
    return lambda records: compiled.explain_alone(feature_rows(compiled.features, records))


@dataclass(frozen=True)
class Lookup:
    record: dict[str, Any] | None  # the customer's features; None when the store holds none
    digest: bytes
    entry: Scored | None  # explained from exactly these features by this version; None on a miss


class ReasonsStore:
    """One model version's precomputed explanations in Redis, read in the round trip of the features."""

    def __init__(self, reader: RedisFeatureReader, key: str, n_features: int) -> None:
        self.reader = reader
        self.client = reader.client
        self.key = key
        self.field = key.encode()
        self.n_features = n_features
        self._hset = self.client.register_script(_GUARDED_HSET)
        self._writer: ThreadPoolExecutor | None = None
        self._backlog = 0
        self._lock = threading.Lock()

    def _read(self, customer_ids: Sequence[int]) -> list[tuple[list[bytes | None], bytes | None]]:
        pipe = self.client.pipeline(transaction=False)
        for cid in customer_ids:
            key = self.reader.key(cid)
            pipe.hmget(key, self.reader.fields)  # type: ignore[arg-type]  # binary keys, as Feast writes them
            pipe.hget(derived_key(key), self.field)  # type: ignore[arg-type]
        replies = pipe.execute()
        return [(replies[i], replies[i + 1]) for i in range(0, len(replies), 2)]

    def read_many(self, customer_ids: Sequence[int]) -> list[Lookup]:
        """Each customer's features and, when it holds for exactly them, the precomputed entry."""
        out = []
        for raw, entry in self._read(customer_ids):
            digest = raw_digest(raw)
            record = self.reader.row(raw)
            out.append(Lookup(record, digest, decode(entry, digest, self.n_features) if record is not None else None))
        return out

    def store(self, items: Sequence[tuple[int, bytes, bytes]]) -> int:
        """Write (customer, digest of the features, encoded entry) items; returns how many landed (not those of
        customers whose features are gone)."""
        pipe = self.client.pipeline(transaction=False)
        for cid, digest, entry in items:
            key = self.reader.key(cid)
            assert entry[:DIGEST_BYTES] == digest
            self._hset(keys=[key, derived_key(key)], args=[self.field, entry], client=pipe)
        return sum(1 for r in pipe.execute() if r != -1)

    def store_later(self, items: list[tuple[int, bytes, bytes]]) -> None:
        """``store`` on a thread of its own: a request never waits for (or on) a write."""
        with self._lock:
            if self._backlog + len(items) > STORE_BACKLOG:
                return
            self._backlog += len(items)
            if self._writer is None:
                self._writer = ThreadPoolExecutor(1, thread_name_prefix="reasons")
            writer = self._writer
        writer.submit(self._store_quietly, items)

    def _store_quietly(self, items: list[tuple[int, bytes, bytes]]) -> None:
        try:
            self.store(items)
        except (redis.RedisError, OSError) as e:  # a lost write is a later miss, never a wrong answer
            log.info("precomputed reasons of %d customer(s) not stored (%s: %s)", len(items), type(e).__name__, e)
        finally:
            with self._lock:
                self._backlog -= len(items)

    def precompute(
        self, explain: Explainer, customer_ids: Sequence[int], chunk: int = CHUNK, after_chunk: Callable[[], object] | None = None
    ) -> int:
        """Compute and store the entries missing or stale among ``customer_ids``; returns how many were computed.
        Holding entries are only read (nothing is decoded for them)."""
        computed = 0
        for start in range(0, len(customer_ids), chunk):
            part = customer_ids[start : start + chunk]
            todo: list[tuple[int, bytes, dict[str, Any]]] = []
            for cid, (raw, entry) in zip(part, self._read(part), strict=True):
                digest = raw_digest(raw)
                record = self.reader.row(raw)
                if record is not None and decode(entry, digest, self.n_features) is None:
                    todo.append((cid, digest, record))
            if todo:
                scored = explain([record for _, _, record in todo])
                self.store([(cid, digest, encode(digest, scored, i)) for i, (cid, digest, _) in enumerate(todo)])
                computed += len(todo)
            if after_chunk is not None:
                after_chunk()
        return computed

    def close(self) -> None:
        """Waits for the writes under way (a later ``store_later`` starts a new writer)."""
        with self._lock:
            writer, self._writer = self._writer, None
        if writer is not None:
            writer.shutdown(wait=True)


def warm(store: ReasonsStore, explain: Explainer) -> None:
    """Precompute every customer's entry for a version just loaded, unless another process of this version is at it.

    Runs on a background thread at a lower priority than requests: until it reaches a customer, that customer's
    requests compute as before (and store what they computed).
    """
    with contextlib.suppress(OSError):  # a platform without per-thread priorities: it runs at the normal one
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
    lock = DERIVED_PREFIX + b"lock:" + store.field
    token = uuid.uuid4().hex
    try:
        if not store.client.set(lock, token, nx=True, ex=LOCK_S):
            log.info("model %s: reasons are being precomputed by another process", store.key)
            return
        began = time.perf_counter()
        ids = store.reader.customers()
        computed = store.precompute(explain, ids, after_chunk=lambda: store.client.expire(lock, LOCK_S))
        log.info(
            "model %s: reasons of %d customers held, %d computed, in %.1f s", store.key, len(ids), computed, time.perf_counter() - began
        )
    except (redis.RedisError, OSError) as e:
        log.warning("model %s: reasons not precomputed (%s: %s); requests compute them", store.key, type(e).__name__, e)
    finally:
        with contextlib.suppress(redis.RedisError, OSError):  # else the lock expires by itself
            if store.client.get(lock) == token.encode():
                store.client.delete(lock)


def start_warming(store: ReasonsStore, explain: Explainer) -> threading.Thread:
    thread = threading.Thread(target=warm, args=(store, explain), name=f"reasons-{store.key}", daemon=True)
    thread.start()
    return thread


def registered_keys(reg: registry.RegistryConfig, aliases: Sequence[str] = SERVED_ALIASES) -> dict[str, str]:
    """Model key by version, of the versions holding one of ``aliases`` (those whose artifact has a recorded sha256)."""
    keys: dict[str, str] = {}
    for alias in aliases:
        version = registry.alias_version(reg, alias)
        if version is None or version in keys:
            continue
        fingerprint = registry.recorded_sha256(registry.version_info(reg, version))
        if fingerprint is not None:
            keys[version] = model_key(reg.model_name, version, fingerprint)
    return keys


def precompute_registered(
    reg: registry.RegistryConfig,
    reader_for: Callable[[list[str]], RedisFeatureReader],
    keys: Mapping[str, str] | None = None,
    threads: int | None = None,
    customer_ids: Sequence[int] | None = None,
) -> dict[str, int]:
    """After a snapshot is materialized: the entries of the versions in ``keys`` (``registered_keys``: by default those
    holding a served alias), for ``customer_ids`` (default: every customer in the store).

    Returns entries computed per version. Uses every core: a snapshot is published while nothing else runs.
    """
    done: dict[str, int] = {}
    for version, key in (registered_keys(reg) if keys is None else keys).items():
        model = registry.load_model(reg, version)
        compiled = CompiledModel(model, threads=threads or os.cpu_count() or 1)
        if not compiled.explainable:
            continue
        reader = reader_for(list(model.feature_names))
        store = ReasonsStore(reader, key, len(compiled.features))
        done[version] = store.precompute(explainer(compiled), customer_ids if customer_ids is not None else reader.customers())
    return done


def prune(client: redis.Redis, keep: Collection[str], batch: int = 1_000) -> int:
    """Delete the entries of every model key but ``keep`` (the versions still registered under a served alias);
    returns how many were deleted. Without it, each version ever served would keep about 0.5 KB per customer.

    A version still served under no alias (a canary being rolled back, say) only loses speed: its requests compute
    their reasons again, and store them.
    """
    wanted = {k.encode() for k in keep}
    lock = DERIVED_PREFIX + b"lock:"
    deleted = 0
    # Page by page: at millions of customers the whole key list would not fit the publishing process. SCAN returns
    # every key present for the whole scan at least once, whatever is deleted meanwhile.
    keys = (k for k in client.scan_iter(match=DERIVED_PREFIX + b"*", count=batch) if not k.startswith(lock))
    while part := list(itertools.islice(keys, batch)):
        pipe = client.pipeline(transaction=False)
        for key in part:
            pipe.hkeys(key)
        stale = [(key, [f for f in fields if f not in wanted]) for key, fields in zip(part, pipe.execute(), strict=True)]
        pipe = client.pipeline(transaction=False)
        for key, fields in stale:
            if fields:
                pipe.hdel(key, *fields)
        deleted += sum(pipe.execute())
    return deleted
