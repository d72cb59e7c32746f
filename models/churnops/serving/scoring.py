"""Scoring one request: features (online or sent), score, reasons, audit, metrics.

``Scorer`` holds one loaded model version and everything a request needs.
It knows nothing about HTTP or KServe: failures are ``churnops.errors``
classes, each carrying its status, which the server's one handler turns
into responses. With a ``ReasonsStore``, explanations precomputed from exactly
the features read come with them and replace the computation
(``churnops.serving.reasons``); others are computed.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np

from churnops.errors import BadRequestError, InvalidInputError, NotFoundError, NotImplementedInModelError, UnavailableError
from churnops.monitoring.live import LiveDriftMonitor
from churnops.monitoring.predlog.records import FeatureLayout, PredictionBatch
from churnops.monitoring.predlog.writer import PredictionLog
from churnops.privacy.cached import Pseudonyms
from churnops.privacy.keys import ErasedCustomerError
from churnops.privacy.store import STORE_ERRORS as PRIVACY_ERRORS
from churnops.serving.audit import AuditSink, digest
from churnops.serving.explain import CompiledModel, Scored, known_categories, top_reasons
from churnops.serving.inputs import FeatureSchema, Instance, ParsedRequest
from churnops.serving.instruments import ServingMetrics
from churnops.serving.reasons import ReasonsStore, encode, explainer, feature_rows, joined, start_warming
from churnops.training.ensemble import ChurnEnsemble

log = logging.getLogger(__name__)

OnFailure = Literal["degrade", "reject"]
PROBE_CUSTOMER = -1  # a customer id no store holds: reading it exercises the store without touching real rows
AUDIT_ERRORS: tuple[type[Exception], ...] = (OSError, *PRIVACY_ERRORS)  # the trail or the subject keys are unavailable


class FeatureSource(Protocol):
    def read_many(self, customer_ids: list[int]) -> list[dict[str, Any] | None]: ...


@dataclass
class Breaker:
    """Circuit breaker for the online store: after a failure, skip it for ``cooldown_s``, then try again.

    It also knows whether the store is up (its last read succeeded); ``on_change(up)`` hears each change,
    for the ``churnops_online_store_up`` gauge and one log line per outage rather than one per request.
    """

    cooldown_s: float = 2.0
    clock: Callable[[], float] = time.monotonic
    on_change: Callable[[bool], None] | None = None
    _open_until: float = 0.0
    _up: bool = True
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def up(self) -> bool:
        return self._up

    def allow(self) -> bool:
        return self.clock() >= self._open_until

    def failure(self) -> None:
        with self._lock:
            self._open_until = self.clock() + self.cooldown_s
            self._set(up=False)

    def success(self) -> None:
        with self._lock:
            self._open_until = 0.0
            self._set(up=True)

    def _set(self, up: bool) -> None:
        if up != self._up:
            self._up = up
            if self.on_change is not None:
                self.on_change(up)

    def retry_after(self) -> int:
        return max(1, int(np.ceil(self._open_until - self.clock())))


@dataclass(frozen=True)
class ServedModel:
    """A registered model version loaded for serving."""

    registered_model: str
    version: str
    alias: str | None
    model: ChurnEnsemble
    threshold: float
    run_id: str | None = None
    fingerprint: str | None = None  # sha256 of the artifact: precomputed reasons name it


@dataclass(frozen=True)
class ServingPolicy:
    on_store_failure: OnFailure = "degrade"


def _erased_at(i: int, customer_id: int | None) -> ErasedCustomerError:
    return ErasedCustomerError(
        f"customer {customer_id} was erased (right to erasure) and is not scored again", field=f"instances[{i}].customer_id"
    )


def risk_bands(p: np.ndarray, threshold: float) -> np.ndarray:
    """high: at or above the campaign threshold; medium: at least half of it; else low."""
    return np.where(p >= threshold, "high", np.where(p >= threshold / 2, "medium", "low"))


def risk_band(p: float, threshold: float) -> str:
    return str(risk_bands(np.asarray([p]), threshold)[0])


@dataclass
class Fetched:
    """Each instance's feature record, why the store was skipped (if it was), and what came with the records."""

    records: list[dict[str, Any] | None]
    degraded: str | None = None
    precomputed: list[Scored | None] | None = None  # explained from exactly these records by this version
    digests: list[bytes | None] | None = None  # of the stored feature bytes, for storing what is computed

    def hit(self) -> Scored | None:
        """The precomputed explanation of every instance, or None unless every instance has one."""
        found = [p for p in self.precomputed or [] if p is not None]
        return joined(found) if found and len(found) == len(self.records) else None


@dataclass
class Outcome:
    predictions: list[dict[str, Any]]
    degraded: bool


class Scorer:
    def __init__(
        self,
        served: ServedModel,
        schema: FeatureSchema,
        source: FeatureSource | None,
        store_errors: tuple[type[BaseException], ...],
        audit: AuditSink | None,
        metrics: ServingMetrics,
        policy: ServingPolicy,
        breaker: Breaker | None = None,
        prediction_log: PredictionLog | None = None,
        drift: LiveDriftMonitor | None = None,
        pseudonyms: Pseudonyms | None = None,
        request_errors: tuple[type[BaseException], ...] = (),
        reasons: ReasonsStore | None = None,
    ) -> None:
        self.served = served
        self.pseudonyms = pseudonyms
        self.compiled = CompiledModel(served.model)
        self.schema = schema
        self.source = source
        self.store_errors = store_errors
        self.request_errors = request_errors  # store errors of one request (too large for its budget), not of the store
        self.audit = audit
        self.metrics = metrics
        self.policy = policy
        self.breaker = breaker or Breaker()
        self.labels = (served.registered_model, served.version)
        self.prediction_log = prediction_log
        self.drift = drift
        self.reasons = reasons if self.compiled.explainable else None
        self.layout = FeatureLayout(())
        try:
            self.layout = FeatureLayout(tuple(self.compiled.features), frozenset(self.compiled.categorical))
        except InvalidInputError as e:  # e.g. a model trained on a user's table with column names SQL cannot hold
            log.warning("model %s v%s: predictions are not logged for monitoring (%s)", *self.labels, e)
            self.prediction_log = None
        known = known_categories(served.model)
        # (position in the model's features, name, values seen in training) of each categorical feature
        self.categories = [(i, f, known[f]) for i, f in enumerate(self.compiled.features) if f in known]
        if not self.compiled.explainable:
            log.warning("model %s v%s serves without reasons: %s", *self.labels, self.compiled.unexplainable_reason)
        self._warm_up()

    def _warm_up(self) -> None:
        """Score one empty profile before taking traffic: first calls into the boosters are slow."""
        rows = np.full((1, len(self.compiled.features)), None, dtype=object)
        self.compiled.explain(rows) if self.compiled.explainable else self.compiled.predict(rows)

    def start_warming(self) -> threading.Thread | None:
        """Precompute every customer's reasons for this version in the background (requests meanwhile compute theirs)."""
        return start_warming(self.reasons, explainer(self.compiled)) if self.reasons is not None else None

    def _stage(self, stage: str, seconds: float) -> None:
        self.metrics.latency.labels(*self.labels, stage).observe(seconds)

    def fetch(self, instances: list[Instance]) -> Fetched:
        """Each instance's feature record (and precomputed reasons, when the store keeps them), or why the store was skipped."""
        records: list[dict[str, Any] | None] = [inst.features for inst in instances]
        wanted = [(i, inst.customer_id) for i, inst in enumerate(instances) if inst.features is None and inst.customer_id is not None]
        if not wanted:
            return Fetched(records)
        if self.source is None:
            raise BadRequestError("this server has no online store; send 'features' records", field="instances[].customer_id")
        if not self.breaker.allow():
            return self._store_down(records, wanted, "store_circuit_open")
        t0 = time.perf_counter()
        found = None
        try:
            if self.reasons is not None:
                found = self.reasons.read_many([cid for _, cid in wanted])  # the same round trip as the features alone
                rows = [f.record for f in found]
            else:
                rows = self.source.read_many([cid for _, cid in wanted])
        except self.store_errors as e:
            if isinstance(e, self.request_errors):  # the store is fine: opening the breaker would fail everyone else
                log.info("online store read of %d ids failed for this request only (%s: %s)", len(wanted), type(e).__name__, e)
                return self._store_down(records, wanted, "store_over_budget", "online feature store read over its budget")
            log.warning("online store failed (%s: %s); circuit open for %.1fs", type(e).__name__, e, self.breaker.cooldown_s)
            self.breaker.failure()
            return self._store_down(records, wanted, "store_error")
        self.breaker.success()
        self._stage("features", time.perf_counter() - t0)
        for (i, cid), row in zip(wanted, rows, strict=True):
            if row is None:
                raise NotFoundError(f"customer {cid} has no features in the online store", field=f"instances[{i}].customer_id")
            records[i] = row
        if found is None:
            return Fetched(records)
        precomputed: list[Scored | None] = [None] * len(instances)
        digests: list[bytes | None] = [None] * len(instances)
        for (i, _), f in zip(wanted, found, strict=True):
            precomputed[i], digests[i] = f.entry, f.digest
        return Fetched(records, None, precomputed, digests)

    def _store_down(
        self,
        records: list[dict[str, Any] | None],
        wanted: list[tuple[int, int]],
        reason: str,
        why: str = "online feature store unavailable",
    ) -> Fetched:
        if self.policy.on_store_failure == "reject":
            raise UnavailableError(why, retry_after=self.breaker.retry_after())
        for i, _ in wanted:
            records[i] = {}  # every feature missing: the model's answer for an unknown profile, flagged degraded
        return Fetched(records, reason)

    def rows(self, records: list[dict[str, Any] | None]) -> np.ndarray:
        return feature_rows(self.compiled.features, records)

    def unseen(self, rows: np.ndarray) -> list[list[str]]:
        """Per row, the categorical features whose value was never seen in training (scored as missing)."""
        out: list[list[str]] = [[] for _ in range(len(rows))]
        for i, name, known in self.categories:
            for r, value in enumerate(rows[:, i]):
                if value is not None and value not in known:
                    out[r].append(name)
        return out

    def reads_store(self, instances: list[Instance]) -> bool:
        """Whether ``fetch`` would read the online store for these instances (the caller then reads off its event loop)."""
        wanted = any(inst.features is None and inst.customer_id is not None for inst in instances)
        return wanted and self.source is not None and self.breaker.allow()

    def probe_store(self) -> bool:
        """Whether the store answers: one read of a customer id no one has, tried once the breaker allows it.

        A reject-mode server reports not ready while its store is down; the readiness probe calls this so that
        the server comes back without needing traffic (which an unready pod does not get).
        """
        if self.source is None or self.breaker.up:
            return True
        if not self.breaker.allow():
            return False
        try:
            self.source.read_many([PROBE_CUSTOMER])
        except self.store_errors as e:
            log.info("online store still down (%s: %s)", type(e).__name__, e)
            self.breaker.failure()
            return False
        self.breaker.success()
        return True

    def score(
        self,
        request: ParsedRequest,
        caller: str,
        client_request_id: str | None,
        full: bool = False,
        fetched: Fetched | None = None,
    ) -> Outcome:
        """Score every instance; ``full`` adds the whole attribution (the explain verb).

        Every answer gets its own unique request id (the audit's key); a client's id is kept beside it.
        """
        t_start = time.perf_counter()
        rid = uuid.uuid4().hex
        self.refuse_erased(request.instances)
        fetched = fetched if fetched is not None else self.fetch(request.instances)
        records, degraded_reason = fetched.records, fetched.degraded
        rows = self.rows(records)
        want_reasons = self.compiled.explainable and (full or request.top_k > 0)
        if full and not self.compiled.explainable:
            raise NotImplementedInModelError(
                f"model v{self.served.version} cannot be explained exactly: {self.compiled.unexplainable_reason}"
            )
        scored = self._scored(request.instances, rows, fetched, want_reasons)
        bands = risk_bands(scored.probability, self.served.threshold)
        unseen = self.unseen(rows)
        predictions = [
            self._prediction(request, rows, scored, str(bands[r]), r, rid, degraded_reason, full, unseen[r]) for r in range(len(rows))
        ]
        if client_request_id is not None:
            for p in predictions:
                p["client_request_id"] = client_request_id
        t0 = time.perf_counter()
        if self.audit is not None:
            try:
                self.audit.append([self._audit_entry(p, records[i], caller, request.instances[i], i) for i, p in enumerate(predictions)])
            except AUDIT_ERRORS as e:
                log.error("audit append failed: %s", e)
                raise UnavailableError("audit trail unavailable; no prediction is served unaudited", retry_after=5) from None
            self._stage("audit", time.perf_counter() - t0)
        if self.prediction_log is not None:  # off the request path: it keeps references until its flusher runs
            self.prediction_log.record_many(
                PredictionBatch(
                    *self.labels,
                    self.layout,
                    [inst.customer_id for inst in request.instances],
                    [p["churn_probability"] for p in predictions],
                    [p["risk_band"] for p in predictions],
                    [p["request_id"] for p in predictions],
                    rows,
                    time.time(),
                    degraded=degraded_reason is not None,
                )
            )
        if self.drift is not None and degraded_reason is None:  # a degraded row holds no real inputs
            try:
                self.drift.observe(rows, scored.probability)
            except InvalidInputError as e:  # monitoring never fails a prediction; a value it cannot bin is reported
                log.warning("live drift skipped %d row(s) of model %s v%s: %s", len(rows), *self.labels, e)
                self.metrics.drift_skipped.labels(*self.labels).inc(len(rows))
        self._observe(predictions, rows, degraded_reason, unseen)
        self._stage("total", time.perf_counter() - t_start)
        return Outcome(predictions, degraded_reason is not None)

    def _scored(self, instances: list[Instance], rows: np.ndarray, fetched: Fetched, want_reasons: bool) -> Scored:
        """Scores, with the attribution when wanted: precomputed when every instance has it, else computed. A request of
        one customer stores what it computed (explaining a row alone is what precomputing does); a batch's sums round
        with its shape, so it stores nothing."""
        hit = fetched.hit()
        if hit is not None:
            return hit if want_reasons else Scored(hit.probability)
        t0 = time.perf_counter()
        scored = self.compiled.explain(rows) if want_reasons else self.compiled.predict(rows)
        self._stage("explain" if want_reasons else "predict", time.perf_counter() - t0)
        digest = fetched.digests[0] if fetched.digests is not None and len(instances) == 1 else None
        cid = instances[0].customer_id
        if want_reasons and self.reasons is not None and digest is not None and cid is not None:
            self.reasons.store_later([(cid, digest, encode(digest, scored, 0))])
        return scored

    def _prediction(
        self,
        request: ParsedRequest,
        rows: np.ndarray,
        scored: Scored,
        band: str,
        r: int,
        rid: str,
        degraded: str | None,
        full: bool,
        unseen: list[str],
    ) -> dict[str, Any]:
        p = float(scored.probability[r])
        out: dict[str, Any] = {
            "customer_id": request.instances[r].customer_id,
            "churn_probability": round(p, 6),
            "risk_band": band,
            "model": self.served.registered_model,
            "model_version": self.served.version,
            "request_id": f"{rid}/{r}" if len(rows) > 1 else rid,
            "degraded": degraded is not None,
        }
        if scored.contributions is not None:
            k = len(self.compiled.features) if full else request.top_k
            out["reasons"] = [vars(x) for x in top_reasons(self.compiled, rows[r], scored.contributions[r], k)]
            if full:
                assert scored.margin is not None
                out["base_value"] = scored.base_value
                out["margin"] = float(scored.margin[r])
                out["explanation_space"] = "log-odds of the uncalibrated ensemble score"
        else:
            out["reasons"] = []
            out["reasons_unavailable"] = self.compiled.unexplainable_reason or "top_k is 0"
        if degraded:
            out["degraded_reason"] = degraded
        if unseen:
            out["unseen_categories"] = unseen  # scored as missing: the model never saw these values
        return out

    def refuse_erased(self, instances: list[Instance]) -> None:
        """An erased customer is not served again, even with features sent: a 404 naming the instance.

        Scoring them would need a new audit key (linking them again) and would put them back in the prediction log.
        """
        if self.pseudonyms is None:
            return
        erased = self.pseudonyms.erased(inst.customer_id for inst in instances if inst.customer_id is not None)
        for i, inst in enumerate(instances):
            if inst.customer_id in erased:
                raise _erased_at(i, inst.customer_id)

    def _subject(self, inst: Instance, i: int) -> str | None:
        if self.pseudonyms is None:
            return None
        try:
            return self.pseudonyms.subject(inst.customer_id)
        except ErasedCustomerError:  # erased after ``refuse_erased`` looked: the store refused the key
            raise _erased_at(i, inst.customer_id) from None

    def _audit_entry(self, p: dict[str, Any], record: dict[str, Any] | None, caller: str, inst: Instance, i: int) -> dict[str, Any]:
        """The audit record names the customer by a pseudonym (``subject``), never by id: erasing the customer shreds the
        key behind it and leaves the chain intact. Features sent without an id name no subject."""
        return {
            "request_id": p["request_id"],
            "client_request_id": p.get("client_request_id"),
            "time": time.time(),
            "caller": caller,
            "model": p["model"],
            "model_version": p["model_version"],
            "subject": self._subject(inst, i),
            "feature_source": "request" if inst.features is not None else "online_store",
            "features_sha256": digest(record or {}),
            "score": p["churn_probability"],
            "risk_band": p["risk_band"],
            "reasons": [(x["feature"], round(x["contribution"], 6)) for x in p["reasons"][:5]],
            "degraded": p["degraded"],
        }

    def _observe(self, predictions: list[dict[str, Any]], rows: np.ndarray, degraded: str | None, unseen: list[list[str]]) -> None:
        m = self.metrics
        m.predictions.labels(*self.labels).inc(len(predictions))
        hist = m.score.labels(*self.labels)
        for p in predictions:
            hist.observe(p["churn_probability"])
        missing = int(sum(v is None for v in rows.ravel()))
        m.feature_values.labels(*self.labels).inc(rows.size)
        if missing:
            m.missing.labels(*self.labels).inc(missing)
        if degraded:
            m.degraded.labels(*self.labels, degraded).inc(len(predictions))
        for names in unseen:
            for name in names:
                m.unseen.labels(*self.labels, name).inc()
