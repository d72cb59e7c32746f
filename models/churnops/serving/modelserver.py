"""KServe's ModelServer, adapted where its defaults do not fit a production predictor.

- ``ChurnModelServer`` binds one address (KServe's binds every interface), so the
  embedded mode listens on loopback only.
- ``ChurnRepository`` keeps every model it was given: KServe's repository
  forgets an unloaded model, so ``…/load`` after ``…/unload`` could never work.
  An unknown name is a 404 (``ChurnRepositoryExtension``), not a 503.
- ``ChurnDataPlane`` answers readiness from the models: not ready while no
  model is ready (KServe's says ready unconditionally); a routed endpoint
  (``churnops.serving.router``) counts once it serves a version.
- ``ClientErrorLogs`` logs KServe's client-error responses (unknown model,
  invalid input) as one INFO line instead of an ERROR with a traceback.

This module imports KServe (FastAPI, uvicorn, gRPC): only ``serve`` loads it.
"""

from __future__ import annotations

import logging
from typing import Any

from kserve import ModelRepository, ModelServer
from kserve.errors import InvalidInput, ModelNotFound, ModelNotReady
from kserve.protocol.dataplane import DataPlane
from kserve.protocol.model_repository_extension import ModelRepositoryExtension

from churnops.errors import UnavailableError
from churnops.serving.predictor import ChurnModel

CLIENT_ERRORS: tuple[type[BaseException], ...] = (InvalidInput, ModelNotFound, ModelNotReady)


class ChurnRepository(ModelRepository):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self) -> None:
        super().__init__()
        self.known: dict[str, ChurnModel] = {}

    def update(self, model: Any, name: str | None = None) -> None:
        super().update(model, name)
        self.known[name or model.name] = model

    def load(self, name: str) -> bool:
        """Load a known model again (after an unload, or to retry a failed load) and serve it under its name."""
        model = self.known[name]
        if not model.load(force=True):
            raise UnavailableError(f"model {name} could not be loaded: {model.load_error}")
        self.models[name] = model
        return True


class ChurnRepositoryExtension(ModelRepositoryExtension):  # type: ignore[misc]
    async def load(self, model_name: str) -> None:
        if model_name not in self._model_registry.known:
            raise ModelNotFound(model_name)
        await super().load(model_name)


class ChurnDataPlane(DataPlane):  # type: ignore[misc]
    async def ready(self) -> bool:
        models = self.model_registry.get_models()
        # a routed endpoint is always healthy (it explains its 503s itself); it serves once a version is loaded
        return any([await self._serving(name, model) for name, model in models.items()])

    async def _serving(self, name: str, model: Any) -> bool:
        serving = getattr(model, "serving", None)
        return serving if isinstance(serving, bool) else bool(await self.model_registry.is_model_ready(name))


class ChurnModelServer(ModelServer):  # type: ignore[misc]
    """KServe's ModelServer bound to ``host``, with the repository, extension and data plane above."""

    def __init__(self, host: str, repository: ChurnRepository, **kwargs: Any) -> None:
        super().__init__(registered_models=repository, **kwargs)
        self.host = host
        self.dataplane = ChurnDataPlane(model_registry=repository)
        self.model_repository_extension = ChurnRepositoryExtension(model_registry=repository)

    def setup_event_loop(self) -> None:
        # called after the REST server is built and before it binds: the place to set its address
        if getattr(self, "_rest_server", None) is not None:
            self._rest_server.config.host = self.host
        super().setup_event_loop()


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
