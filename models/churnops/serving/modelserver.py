"""KServe's ModelServer, adapted where its defaults do not fit a production predictor.

- ``ChurnModelServer`` binds one address (KServe's binds every interface), so the
  embedded mode listens on loopback only; it reads requests with the header
  bounds, read timeouts and connection cap of ``churnops.serving.http`` and
  sends no ``Server`` header (uvicorn's names itself: nothing to tell a client).
  A worker of several (``churnops.serving.workers``) serves on the socket its
  supervisor bound instead.
- ``ChurnRepository`` keeps every model it was given: KServe's repository
  forgets an unloaded model, so ``…/load`` after ``…/unload`` could never work.
  An unknown name is a 404 (``ChurnRepositoryExtension``), not a 503. A load
  runs on a thread (probes keep answering); concurrent loads of one model share
  one load, and an unload while it runs is a 409.
- ``ChurnDataPlane`` answers readiness from the models: not ready while no
  model is ready (KServe's says ready unconditionally); a routed endpoint
  (``churnops.serving.routed_endpoint``) counts once it serves a version.
  With ``--on-store-failure reject`` it also needs the online store.
- ``ClientErrorLogs`` logs KServe's client-error responses (unknown model,
  invalid input) and failed readiness probes as one INFO line instead of an
  ERROR with a traceback.

This module imports KServe (FastAPI, uvicorn, gRPC): only ``serve`` loads it.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

from kserve import ModelRepository, ModelServer
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady
from kserve.logging import KSERVE_TRACE_LOGGER_NAME as TRACE_LOGGER
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import TimingMiddleware  # the one KServe adds

from churnops.errors import ConflictError, UnavailableError
from churnops.serving.http import protocol_factory
from churnops.serving.predictor import ChurnModel
from churnops.serving.security import HttpLimits

# answers, not faults: a not-ready server (e.g. its store down in reject mode) fails every probe, logged once a probe
CLIENT_ERRORS: tuple[type[BaseException], ...] = (InvalidInput, ModelNotFound, ModelNotReady, ServerNotReady)


class ChurnRepository(ModelRepository):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self) -> None:
        super().__init__()
        self.known: dict[str, ChurnModel] = {}
        self._loading: dict[str, asyncio.Future[bool]] = {}

    def update(self, model: Any, name: str | None = None) -> None:
        super().update(model, name)
        self.known[name or model.name] = model

    async def load(self, name: str) -> bool:
        """Load a known model again (after an unload, or to retry a failed load) and serve it under its name.

        The load (download, verification, compilation: hundreds of milliseconds) runs on a thread, so the event
        loop keeps answering probes and requests meanwhile. A second load of the same model while one runs waits
        for that one and shares its result rather than loading twice.
        """
        model = self.known[name]
        running = self._loading.get(name)
        if running is None:
            running = asyncio.ensure_future(asyncio.to_thread(model.load, True))
            self._loading[name] = running
            running.add_done_callback(lambda _: self._loading.pop(name, None))
        if not await asyncio.shield(running):
            raise UnavailableError(f"model {name} could not be loaded: {model.load_error}")
        self.models[name] = model
        return True

    def unload(self, name: str) -> None:
        """KServe's unload, refused while the model is loading (the load would otherwise serve it again when it ends)."""
        if name in self._loading:
            raise ConflictError(f"model {name} is loading; unload it once the load has answered")
        super().unload(name)


class ChurnRepositoryExtension(ModelRepositoryExtension):  # type: ignore[misc]
    async def load(self, model_name: str) -> None:
        if model_name not in self._model_registry.known:
            raise ModelNotFound(model_name)
        await super().load(model_name)


class ChurnDataPlane(DataPlane):  # type: ignore[misc]
    # Set by ``serve`` when the server rejects requests while its online store is down (--on-store-failure
    # reject): readiness then also needs the store. A degrading server answers anyway and stays ready.
    store_ready: Callable[[], Awaitable[bool]] | None = None

    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        # a routed endpoint is always healthy (it explains its 503s itself); it serves once a version is loaded
        serving = any([await self._serving(name, model) for name, model in models.items()])
        return serving and (self.store_ready is None or await self.store_ready())

    async def _serving(self, name: str, model: Any) -> bool:
        serving = getattr(model, "serving", None)
        return serving if isinstance(serving, bool) else bool(await self.model_registry.is_model_ready(name))


class ChurnModelServer(ModelServer):  # type: ignore[misc]
    """KServe's ModelServer bound to ``host``, with the repository, extension and data plane above."""

    def __init__(
        self,
        host: str,
        repository: ChurnRepository,
        http_limits: HttpLimits | None = None,
        max_connections: int | None = None,
        sockets: list[socket.socket] | None = None,
        **kwargs: Any,
    ) -> None:
        """``max_connections``: open connections beyond it are closed at once; ``sockets``: serve on these (bound) instead."""
        super().__init__(registered_models=repository, **kwargs)
        self.host = host
        self.http_limits = http_limits or HttpLimits()
        self.max_connections = max_connections
        self.sockets = sockets
        self.dataplane = ChurnDataPlane(model_registry=repository)
        self.model_repository_extension = ChurnRepositoryExtension(model_registry=repository)

    def setup_event_loop(self) -> None:
        # called after the REST server is built and before it binds (and loads its config): the place to set
        # its address and the protocol that reads requests
        if getattr(self, "_rest_server", None) is not None:
            config = self._rest_server.config
            config.host = self.host
            config.http = protocol_factory(self.http_limits, self.max_connections)
            config.server_header = False
            # uvicorn trusts X-Forwarded-For from loopback peers by default: any local client (the embedded mode, a
            # sidecar proxy's own connections) could then pick the address that per-address limits key on
            config.proxy_headers = False
            rest = self._rest_server
            rest._add_middlewares = partial(without_idle_timing, rest._add_middlewares)
            if self.sockets is not None:
                # KServe's REST server awaits ``serve()`` without sockets (uvicorn then binds host:port itself); its
                # start coroutine exists already but has not run, so it finds this bound method
                server = self._rest_server._server
                server.serve = partial(server.serve, sockets=self.sockets)
        super().setup_event_loop()


def without_idle_timing(add: Callable[[Any], None], app: Any) -> None:
    """KServe's middlewares, less its TimingMiddleware while the ``kserve.trace`` log it writes to is off: for nothing,
    it matches every request's route again, reads the process's CPU time twice (getrusage) and formats two lines."""
    add(app)
    if not logging.getLogger(TRACE_LOGGER).isEnabledFor(logging.INFO):
        app.user_middleware = [m for m in app.user_middleware if m.cls is not TimingMiddleware]


class ClientErrorLogs(logging.Filter):
    """Turns KServe's 'Exception:' ERROR records for client errors into one INFO line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, CLIENT_ERRORS):
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.msg, record.args = "%s: %s", (type(error).__name__, error)
            record.exc_info, record.exc_text = None, None
            return logging.getLogger(record.name).isEnabledFor(logging.INFO)
        return True
