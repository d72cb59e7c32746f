"""The KServe model: V1 and V2 (Open Inference Protocol) predict, and explain.

``ChurnModel`` is a thin adapter: it turns protocol payloads into a
``ParsedRequest``, lets ``Scorer`` do the work, and shapes the answer. Loading
goes through a loader callable, so a sha256 mismatch (or any load failure)
leaves the model registered but not ready (503) instead of crashing the server.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from kserve import InferOutput, InferRequest, InferResponse, Model

from churnops_models.serving.inputs import FeatureSchema, InputError, ParsedRequest, parse_v1, parse_v2
from churnops_models.serving.scoring import Scorer, ServingError, client_error
from churnops_models.serving.security import SUBJECT_HEADER

log = logging.getLogger(__name__)

RELOAD_BACKOFF_S = 30.0  # KServe retries load() on every request to an unready model; do real work at most this often


class ChurnModel(Model):  # type: ignore[misc]  # kserve ships no type information
    def __init__(self, name: str, loader: Callable[[], Scorer], clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__(name)
        self.loader = loader
        self.clock = clock
        self.scorer: Scorer | None = None
        self.load_error: str | None = None
        self._last_attempt: float | None = None

    def load(self) -> bool:
        now = self.clock()
        if self.scorer is None and self._last_attempt is not None and now - self._last_attempt < RELOAD_BACKOFF_S:
            return False
        self._last_attempt = now
        try:
            self.scorer = self.loader()
        except Exception as e:  # any failure keeps the model not ready; the reason is logged and kept
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("model %s failed to load: %s", self.name, self.load_error)
            self.ready = False
            return False
        self.ready = True
        return True

    def _scorer(self) -> Scorer:
        if self.scorer is None:
            raise ServingError(503, f"model {self.name} is not ready: {self.load_error or 'not loaded'}", retry_after=30)
        return self.scorer

    @property
    def schema(self) -> FeatureSchema:
        return self._scorer().schema

    def _parse(self, payload: Any) -> tuple[ParsedRequest, bool]:
        scorer = self._scorer()
        try:
            if isinstance(payload, InferRequest):
                tensors = [(i.name, list(i.shape), list(i.data)) for i in payload.inputs]
                return parse_v2(scorer.schema, tensors, payload.parameters or {}), True
            return parse_v1(scorer.schema, payload), False
        except InputError as e:
            raise client_error(e) from None

    def predict(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        return self._answer(payload, headers, full=False)

    def explain(self, payload: Any, headers: dict[str, str] | None = None) -> dict[str, Any] | InferResponse:
        return self._answer(payload, headers, full=True)

    def _answer(self, payload: Any, headers: dict[str, str] | None, full: bool) -> dict[str, Any] | InferResponse:
        request, v2 = self._parse(payload)
        headers = headers or {}
        caller = headers.get(SUBJECT_HEADER.decode(), "anonymous")
        request_id = headers.get("x-request-id") or (payload.id if v2 and payload.id else None)
        scorer = self._scorer()
        outcome = scorer.score(request, caller, request_id, full=full)
        scorer.metrics.requests.labels(*scorer.labels, "v2" if v2 else "v1").inc()
        if not v2:
            key = "explanations" if full else "predictions"
            return {key: outcome.predictions}
        preds = outcome.predictions
        outputs = [
            InferOutput("churn_probability", [len(preds)], "FP64", [p["churn_probability"] for p in preds]),
            InferOutput("risk_band", [len(preds)], "BYTES", [p["risk_band"] for p in preds]),
            InferOutput("reasons", [len(preds)], "BYTES", [json.dumps(p["reasons"]) for p in preds]),
            InferOutput("model_version", [len(preds)], "BYTES", [p["model_version"] for p in preds]),
        ]
        return InferResponse(
            response_id=preds[0]["request_id"].split("/")[0],
            model_name=self.name,
            model_version=scorer.served.version,
            infer_outputs=outputs,
            parameters={"degraded": outcome.degraded},
        )

    def get_input_types(self) -> list[dict[str, Any]]:
        schema = self.schema
        types = [{"name": "customer_id", "datatype": "INT64", "shape": [-1]}]
        types += [{"name": f, "datatype": "BYTES" if schema.is_categorical(f) else "FP64", "shape": [-1]} for f in schema.features]
        return types

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {"name": "churn_probability", "datatype": "FP64", "shape": [-1]},
            {"name": "risk_band", "datatype": "BYTES", "shape": [-1]},
            {"name": "reasons", "datatype": "BYTES", "shape": [-1]},
            {"name": "model_version", "datatype": "BYTES", "shape": [-1]},
        ]
