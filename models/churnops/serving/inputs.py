"""Request validation for the predictor: V1 instances and V2 tensors into typed rows.

Pure functions, no I/O. Every error names the offending field with a JSON-path
like ``instances[2].features.tenure_days`` so a client can fix its request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from churnops.errors import InvalidInputError

MAX_INSTANCES = 1_000
MAX_JSON_NUMBER = 1.7976931348623157e308  # float64's largest: a longer integer cannot be a model input
# Tree boosters hold inputs as float32: larger magnitudes would become infinities inside the model.
MAX_ABS_VALUE = 3.4e38
DEFAULT_TOP_K = 5
V2_ID_INPUT = "customer_id"


@dataclass(frozen=True)
class Instance:
    """One customer to score: by id (features fetched online) and/or with a full feature record."""

    customer_id: int | None
    features: dict[str, Any] | None


@dataclass(frozen=True)
class ParsedRequest:
    instances: list[Instance]
    top_k: int


@dataclass(frozen=True)
class FeatureSchema:
    """What a served model accepts: its features (numeric or categorical) and other known catalog names."""

    features: tuple[str, ...]
    categorical: frozenset[str]
    known: frozenset[str]  # extra catalog features a client may send; ignored by this model

    def is_categorical(self, name: str) -> bool:
        return name in self.categorical


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def check_value(schema: FeatureSchema, name: str, value: Any, where: str) -> Any:
    """A feature value as the model takes it; None means missing."""
    if value is None:
        return None
    if schema.is_categorical(name):
        if not isinstance(value, str):
            raise InvalidInputError(f"expected a string category or null, got {type(value).__name__}", field=where)
        return value
    if not _is_number(value):
        raise InvalidInputError(f"expected a number or null, got {type(value).__name__}", field=where)
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInputError("NaN and Infinity are not valid numbers; send null for a missing value", field=where)
    if abs(value) > MAX_ABS_VALUE:
        raise InvalidInputError(f"magnitude above {MAX_ABS_VALUE:g} is out of range for the model", field=where)
    return float(value)  # the model reads float32 anyway; an int past int64 would not fit the prediction log's columns


def check_customer_id(value: Any, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidInputError(f"expected an integer customer id, got {type(value).__name__}", field=where)
    if value < 0 or value >= 2**63:
        raise InvalidInputError("customer id out of range [0, 2^63)", field=where)
    return value


def check_record(schema: FeatureSchema, record: Any, where: str) -> dict[str, Any]:
    if not isinstance(record, Mapping):
        raise InvalidInputError(f"expected an object of feature values, got {type(record).__name__}", field=where)
    unknown = sorted(set(record) - set(schema.features) - schema.known)
    if unknown:
        raise InvalidInputError("unknown feature", field=f"{where}.{unknown[0]}")
    missing = [f for f in schema.features if f not in record]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InvalidInputError(f"required feature is missing{more}; send null for a missing value", field=f"{where}.{missing[0]}")
    return {f: check_value(schema, f, record[f], f"{where}.{f}") for f in schema.features}


def check_top_k(value: Any, n_features: int, where: str) -> int:
    if value is None:
        return DEFAULT_TOP_K
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= n_features:
        raise InvalidInputError(f"expected an integer between 0 and {n_features}", field=where)
    return value


def _check_count(n: int, where: str) -> None:
    if n == 0:
        raise InvalidInputError("at least one instance is required", field=where)
    if n > MAX_INSTANCES:
        raise InvalidInputError(f"at most {MAX_INSTANCES} instances per request, got {n}", field=where)


def parse_v1(schema: FeatureSchema, body: Any) -> ParsedRequest:
    """``{"instances": [{"customer_id": 7} | {"features": {...}}, ...], "parameters": {"top_k": 5}}``."""
    if not isinstance(body, Mapping):
        raise InvalidInputError("expected a JSON object with an 'instances' list", field="body")
    unknown = sorted(set(body) - {"instances", "parameters"})
    if unknown:
        raise InvalidInputError("unknown field; expected 'instances' and optional 'parameters'", field=unknown[0])
    raw = body.get("instances")
    if not isinstance(raw, list):
        raise InvalidInputError("required list of instances", field="instances")
    _check_count(len(raw), "instances")
    params = body.get("parameters") or {}
    if not isinstance(params, Mapping):
        raise InvalidInputError("expected an object", field="parameters")
    top_k = check_top_k(params.get("top_k"), len(schema.features), "parameters.top_k")
    return ParsedRequest([_instance(schema, item, f"instances[{i}]") for i, item in enumerate(raw)], top_k)


def _instance(schema: FeatureSchema, item: Any, where: str) -> Instance:
    if not isinstance(item, Mapping):
        raise InvalidInputError(f"expected an object with 'customer_id' and/or 'features', got {type(item).__name__}", field=where)
    unknown = sorted(set(item) - {"customer_id", "features"})
    if unknown:
        raise InvalidInputError("unknown field; expected 'customer_id' and/or 'features'", field=f"{where}.{unknown[0]}")
    if "customer_id" not in item and "features" not in item:
        raise InvalidInputError("required unless a full 'features' record is sent", field=f"{where}.customer_id")
    cid = check_customer_id(item["customer_id"], f"{where}.customer_id") if "customer_id" in item else None
    features = check_record(schema, item["features"], f"{where}.features") if "features" in item else None
    return Instance(cid, features)


def parse_v2(schema: FeatureSchema, inputs: Sequence[tuple[str, list[int], list[Any]]], parameters: Mapping[str, Any]) -> ParsedRequest:
    """Open Inference Protocol: a ``customer_id`` INT64 tensor, or one tensor per feature (all shape [n])."""
    if not inputs:
        raise InvalidInputError("at least one input tensor is required", field="inputs")
    by_name: dict[str, list[Any]] = {}
    n: int | None = None
    for i, (name, shape, data) in enumerate(inputs):
        where = f"inputs[{i}]"
        if name in by_name:
            raise InvalidInputError("duplicate input (each name once)", field=f"{where}.name")
        if name != V2_ID_INPUT and name not in schema.features and name not in schema.known:
            raise InvalidInputError("unknown input; expected customer_id or the model's features", field=f"{where}.name")
        if len(shape) != 1 and not (len(shape) == 2 and shape[1] == 1):
            raise InvalidInputError("expected shape [n] or [n, 1]", field=f"{where}.shape")
        if shape[0] != len(data):
            raise InvalidInputError(f"shape {shape} does not match {len(data)} data values", field=f"{where}.shape")
        if n is not None and len(data) != n:
            raise InvalidInputError(f"all inputs must have the same length; expected {n}", field=f"{where}.shape")
        n = len(data)
        by_name[name] = data
    assert n is not None
    _check_count(n, "inputs")
    top_k = check_top_k(parameters.get("top_k"), len(schema.features), "parameters.top_k")
    ids = by_name.get(V2_ID_INPUT)
    has_features = any(name != V2_ID_INPUT for name in by_name)
    instances = []
    for r in range(n):
        cid = check_customer_id(ids[r], f"inputs.{V2_ID_INPUT}.data[{r}]") if ids is not None else None
        record = None
        if has_features:
            record = check_record(schema, {k: v[r] for k, v in by_name.items() if k != V2_ID_INPUT}, f"inputs[row {r}]")
        instances.append(Instance(cid, record))
    return ParsedRequest(instances, top_k)


def first_non_finite(value: Any, path: str = "body") -> str | None:
    """Path of the first NaN, Infinity or number beyond float range in a parsed JSON document."""
    if isinstance(value, float) and not math.isfinite(value):
        return path
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_JSON_NUMBER:
        return path
    if isinstance(value, Mapping):
        for k, v in value.items():
            found = first_non_finite(v, f"{path}.{k}" if path != "body" else str(k))
            if found:
                return found
    if isinstance(value, list):
        for i, v in enumerate(value):
            found = first_non_finite(v, f"{path}[{i}]")
            if found:
                return found
    return None
