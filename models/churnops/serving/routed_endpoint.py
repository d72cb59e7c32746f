"""One endpoint (``churn``) split between a stable and a canary version by the routing table's weight.

The embedded mode's stand-in for KServe's canary traffic split: a
``kserve.Model`` that owns a ``ChurnModel`` per version named in the routing
table (``churnops.serving.routing_table``) and hands each request to one of them.
Every version keeps its own metrics labels (model, version), so the rollout
runner reads the stable and the canary apart exactly as the operator does in
a cluster; every answer names the version that scored it.

A version the table newly names is loaded on a background thread; until it
is ready its share goes to the stable version. A version the table no longer
names is unloaded. With no stable version at all the endpoint stays up and
answers 503 saying so (``healthy`` is true so that requests reach the router
and get that message rather than KServe's bare "not ready"; the server's
readiness follows ``serving`` instead).

Errors are counted by the server's middleware, which only sees the URL; the
router tells it which version answered through ``ROUTED``, a context
variable set in the request's own task before the version's model runs.

This module imports KServe: only ``churnops.serving.server.serve`` loads it.
"""

from __future__ import annotations

import logging
import random
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import ContextVar
from typing import Any

from kserve import InferRequest, InferResponse, Model

from churnops.errors import UnavailableError
from churnops.serving.instruments import ServingMetrics
from churnops.serving.predictor import ChurnModel
from churnops.serving.routing_table import TableWatcher, choose
from churnops.serving.scoring import Scorer

log = logging.getLogger(__name__)

# (registered model, version) of the version answering the current request; read by the error counter.
ROUTED: ContextVar[tuple[str, str] | None] = ContextVar("churnops_routed", default=None)
WATCH_S = 0.5  # how often the background thread looks at the table (it loads and unloads versions)


def customer_of(payload: Any) -> int | None:
    """The first customer id of a V1 or V2 request, without parsing it (None when there is none)."""
    if isinstance(payload, InferRequest):
        for tensor in payload.inputs:
            if tensor.name == "customer_id" and isinstance(tensor.data, list) and tensor.data:
                value = tensor.data[0]
                return value if isinstance(value, int) and not isinstance(value, bool) else None
        return None
    instances = payload.get("instances") if isinstance(payload, dict) else None
    first = instances[0] if isinstance(instances, list) and instances else None
    value = first.get("customer_id") if isinstance(first, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class Router(Model):  # type: ignore[misc]  # kserve ships no type information
    def __init__(
        self,
        name: str,
        watcher: TableWatcher,
        make_model: Callable[[str], ChurnModel],
        registered_model: str,
        metrics: ServingMetrics,
        seed: int | None = None,
        watch_s: float = WATCH_S,
    ) -> None:
        super().__init__(name)
        self.watcher = watcher
        self.make_model = make_model
        self.registered_model = registered_model
        self.metrics = metrics
        self.watch_s = watch_s
        self._rng = random.Random(seed)
        self._lock = threading.RLock()  # a load ending while a version is unloaded calls back under the lock
        self._models: dict[str, ChurnModel] = {}
        self._loading: dict[str, Future[bool]] = {}
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="route-load")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- versions -------------------------------------------------------------------------------------

    def sync(self) -> list[Future[bool]]:
        """Start loading the versions the table names and unload the others; returns the loads started."""
        table = self.watcher.current()
        started = []
        with self._lock:
            for version in table.versions:
                model = self._models.get(version)
                if model is None:
                    model = self._models[version] = self.make_model(version)
                busy = self._loading.get(version)
                if not model.ready and (busy is None or busy.done()):
                    # ChurnModel.load backs off by itself after a failure: a broken version is not retried in a loop
                    future = self._loader.submit(model.load, busy is None)
                    self._loading[version] = future
                    started.append(future)
            for version in [v for v in self._models if v not in table.versions]:
                self._unload(version)
        return started

    def _unload(self, version: str) -> None:
        model = self._models.pop(version)
        busy = self._loading.pop(version, None)
        self._forget(version, model)
        if busy is not None and not busy.done():  # a load still running would mark it loaded again when it ends
            busy.add_done_callback(lambda _: self._forget_later(version, model))
        log.info("route %s: version %s unloaded", self.name, version)

    def _forget(self, version: str, model: ChurnModel) -> None:
        model.stop()
        self.metrics.info.labels(self.registered_model, version, "").set(0)

    def _forget_later(self, version: str, model: ChurnModel) -> None:
        with self._lock:
            if version not in self._models:  # named again meanwhile: its new model owns the gauge
                self._forget(version, model)

    def ready_versions(self) -> frozenset[str]:
        with self._lock:
            return frozenset(v for v, m in self._models.items() if m.ready)

    def scorers(self) -> list[Scorer]:
        with self._lock:
            return [m.scorer for m in self._models.values() if m.scorer is not None]

    @property
    def serving(self) -> bool:
        """Whether the endpoint can answer: the stable version (or a canary at 100 %) is loaded."""
        return choose(self.watcher.current(), self.ready_versions(), None, 0.0) is not None

    # --- KServe's model life cycle ---------------------------------------------------------------------

    def load(self, force: bool = False) -> bool:
        """Load what the table names now (waiting for it, so a server starts ready) and keep following the table."""
        self.watcher.current(force=True)
        for future in self.sync():
            future.result()
        if self._thread is None:
            self._thread = threading.Thread(target=self._watch, name=f"route-{self.name}", daemon=True)
            self._thread.start()
        self.ready = True
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.watch_s):
            try:
                self.sync()
            except Exception:  # the loop must survive anything a load or unload throws; the next look retries
                log.exception("route %s: following the routing table failed", self.name)

    async def healthy(self) -> bool:
        return True  # see the module docstring: requests must reach the router to get its 503 and reason

    def stop(self) -> None:
        self._stop.set()
        with self._lock:
            for version in list(self._models):
                self._unload(version)
        self._loader.shutdown(wait=False, cancel_futures=True)
        self.ready = False

    # --- requests -------------------------------------------------------------------------------------------

    def route(self, payload: Any) -> ChurnModel:
        """The model of the version that answers this request (and mark it for the error counter)."""
        table = self.watcher.current()
        with self._lock:
            ready = {v: m for v, m in self._models.items() if m.ready}
        version = choose(table, ready, customer_of(payload), self._rng.random() * 100.0)
        if version is None:
            if table.stable is None:
                where = self.watcher.error or f"{self.watcher.path} names none"
                raise UnavailableError(
                    f"route {self.name} has no stable version yet ({where}); deploy one with `churnops rollout start`", retry_after=5
                )
            model = self._models.get(table.stable)
            why = model.load_error if model is not None and model.load_error else "still loading"
            raise UnavailableError(f"route {self.name}: stable version {table.stable} is not ready ({why})", retry_after=5)
        ROUTED.set((self.registered_model, version))
        return ready[version]

    def validate(self, payload: Any) -> Any:
        """No shape checks here: the version's parser answers 422 naming the field (KServe's check answers 400)."""
        return payload

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        result: dict[str, Any] | InferResponse = await self.route(payload).predict(payload, headers)
        return result

    async def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        result: dict[str, Any] | InferResponse = await self.route(payload).explain(payload, headers)
        return result

    def _stable_model(self) -> ChurnModel:
        table = self.watcher.current()
        with self._lock:
            model = self._models.get(table.stable or "")
        if model is None or not model.ready:
            raise UnavailableError(f"route {self.name} has no ready stable version", retry_after=5)
        return model

    def get_input_types(self) -> list[dict[str, Any]]:
        types: list[dict[str, Any]] = self._stable_model().get_input_types()
        return types

    def get_output_types(self) -> list[dict[str, Any]]:
        types: list[dict[str, Any]] = self._stable_model().get_output_types()
        return types
