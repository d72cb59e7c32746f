"""OpenAPI 3.1 description of the predictor's routes (served at ``/openapi.json``).

KServe's own routes take untyped bodies; this spec states what ChurnOps
accepts and answers, including every error status, so clients and fuzzers
(schemathesis in the tests) work from one contract.
"""

from __future__ import annotations

from typing import Any

from churnops.serving.inputs import MAX_INSTANCES, FeatureSchema


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {
    "400": _error("Malformed request (not JSON, nested too deeply, a bad X-Request-Id)"),
    "401": _error("Missing, invalid or expired bearer token"),
    "403": _error("The token's role may not use this route"),
    "404": _error("Unknown model or customer"),
    "413": _error("Request body too large"),
    "415": _error("Content-Type is not application/json"),
    "422": _error("A field has an invalid value; the message names it"),
    "429": _error("Rate limit exceeded; see Retry-After"),
    "500": _error("Internal error: the body names an incident id, never internals"),
    "503": _error("Model not ready or a dependency unavailable; see Retry-After"),
}


def spec(schema: FeatureSchema, model_names: list[str], version: str) -> dict[str, Any]:
    value_types: dict[str, Any] = {
        f: ({"type": ["string", "null"]} if schema.is_categorical(f) else {"type": ["number", "null"]}) for f in schema.features
    }
    model_param = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string", "enum": model_names}}
    secured: list[dict[str, list[str]]] = [{"bearer": []}]
    reason = {
        "type": "object",
        "required": ["feature", "value", "contribution"],
        "properties": {"feature": {"type": "string"}, "value": {}, "contribution": {"type": "number"}},
    }
    prediction = {
        "type": "object",
        "required": ["churn_probability", "risk_band", "reasons", "model", "model_version", "request_id", "degraded"],
        "properties": {
            "customer_id": {"type": ["integer", "null"]},
            "churn_probability": {"type": "number", "minimum": 0, "maximum": 1},
            "risk_band": {"type": "string", "enum": ["low", "medium", "high"]},
            "reasons": {"type": "array", "items": reason},
            "model": {"type": "string"},
            "model_version": {"type": "string"},
            "request_id": {"type": "string", "description": "unique per answer: the audit record's key"},
            "client_request_id": {"type": "string", "description": "the caller's X-Request-Id (or V2 id), when sent"},
            "degraded": {"type": "boolean"},
            "unseen_categories": {
                "type": "array",
                "items": {"type": "string"},
                "description": "categorical features whose value was never seen in training (scored as missing)",
            },
        },
    }
    request_id_header = {
        "name": "X-Request-Id",
        "in": "header",
        "required": False,
        "description": "the caller's id for this request, echoed as client_request_id and kept in the audit trail",
        "schema": {"type": "string", "pattern": "^[A-Za-z0-9._:/-]{1,128}$"},
    }
    v1_request = {
        "type": "object",
        "required": ["instances"],
        "additionalProperties": False,
        "properties": {
            "instances": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_INSTANCES,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "customer_id": {"type": "integer", "minimum": 0},
                        "features": {
                            "type": "object",
                            "required": list(schema.features),
                            "properties": value_types,
                            "additionalProperties": False,
                        },
                    },
                },
            },
            "parameters": {
                "type": "object",
                "properties": {"top_k": {"type": "integer", "minimum": 0, "maximum": len(schema.features)}},
            },
        },
    }
    v2_request = {
        "type": "object",
        "required": ["inputs"],
        "properties": {
            "id": {"type": "string", "pattern": "^[A-Za-z0-9._:/-]{1,128}$"},
            "parameters": {"type": "object"},
            "inputs": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "required": ["name", "shape", "datatype", "data"],
                    "properties": {
                        "name": {"type": "string"},
                        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "datatype": {"type": "string", "enum": ["INT64", "FP64", "FP32", "INT32", "BYTES"]},
                        "data": {"type": "array"},
                    },
                },
            },
        },
    }

    def post(summary: str, request: str, response: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "security": secured,
                "parameters": [model_param, request_id_header],
                "requestBody": {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{request}"}}}},
                "responses": {"200": {"description": "Scored", "content": {"application/json": {"schema": response}}}, **ERRORS},
            }
        }

    def get(summary: str, secured_route: bool = True, params: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        errors = {k: v for k, v in ERRORS.items() if k in ("401", "403", "404", "429", "503")} if secured_route else {}
        op: dict[str, Any] = {"summary": summary, "responses": {"200": {"description": "OK"}, **errors}}
        if secured_route:
            op["security"] = secured
        if params:
            op["parameters"] = params
        return {"get": op}

    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ChurnOps predictor",
            "version": version,
            "description": "Churn risk with exact SHAP reasons (KServe V1 and V2).",
        },
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}}},
                "V1Request": v1_request,
                "V2Request": v2_request,
                "Prediction": prediction,
            },
        },
        "paths": {
            "/v1/models/{model_name}:predict": post(
                "Score customers (V1)",
                "V1Request",
                {"type": "object", "properties": {"predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}},
            ),
            "/v1/models/{model_name}:explain": post(
                "Full attribution of every feature (V1)",
                "V1Request",
                {"type": "object", "properties": {"explanations": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}}}},
            ),
            "/v2/models/{model_name}/infer": post("Score customers (Open Inference Protocol)", "V2Request", {"type": "object"}),
            "/v1/models/{model_name}": get("Model readiness (V1)", params=[model_param]),
            "/v2/models/{model_name}": get("Model metadata (V2)", params=[model_param]),
            "/v2/models/{model_name}/ready": get("Model readiness (V2)", params=[model_param]),
            "/v2/health/live": get("Liveness", secured_route=False),
            "/v2/health/ready": get("Readiness", secured_route=False),
            "/metrics": get("Prometheus metrics", secured_route=False),
        },
    }
