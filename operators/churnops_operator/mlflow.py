"""MLflow registry I/O over its REST API (2.0): resolve aliases, read versions, move aliases, tag.

The operator never imports ``mlflow`` (hundreds of modules, pandas, SQLAlchemy):
the few calls it needs are plain JSON over HTTP.
"""

from __future__ import annotations

from typing import Any

import aiohttp

from churnops_operator.http import ExternalError, JsonClient

API = "/api/2.0/mlflow"
REFERENCE_AUC_METRIC = "roc_auc"  # the holdout AUC training logs on the run (training/evaluation.py headline)


class MLflow:
    """``username`` and ``password`` (MLflow's ``MLFLOW_TRACKING_USERNAME``/``_PASSWORD``) send HTTP Basic auth,
    as MLflow's basic-auth app expects (they win over ``token``, a bearer token). The credentials never reach a
    log: errors carry only the method, the path and the answer."""

    def __init__(
        self, base_url: str, timeout_s: float = 5.0, token: str | None = None, username: str | None = None, password: str | None = None
    ) -> None:
        basic = aiohttp.encode_basic_auth(username, password) if username and password else None
        bearer = f"Bearer {token}" if token else None
        authorization = basic or bearer
        self.http = JsonClient("mlflow", base_url, timeout_s, headers={"Authorization": authorization} if authorization else {})

    async def version_by_alias(self, model: str, alias: str) -> str | None:
        try:
            answer = await self.http.request("GET", f"{API}/registered-models/alias", params={"name": model, "alias": alias})
        except ExternalError as e:
            if e.status in (400, 404) and ("RESOURCE_DOES_NOT_EXIST" in e.message or "INVALID_PARAMETER_VALUE" in e.message):
                return None
            raise
        return str(answer["model_version"]["version"])

    async def model_version(self, model: str, version: str) -> dict[str, Any] | None:
        try:
            answer = await self.http.request("GET", f"{API}/model-versions/get", params={"name": model, "version": version})
        except ExternalError as e:
            if e.status in (400, 404) and "RESOURCE_DOES_NOT_EXIST" in e.message:
                return None
            raise
        result: dict[str, Any] = answer["model_version"]
        return result

    async def set_alias(self, model: str, alias: str, version: str) -> None:
        await self.http.request("POST", f"{API}/registered-models/alias", json={"name": model, "alias": alias, "version": version})

    async def set_tag(self, model: str, version: str, key: str, value: str) -> None:
        body = {"name": model, "version": version, "key": key, "value": value}
        await self.http.request("POST", f"{API}/model-versions/set-tag", json=body)

    async def run_metric(self, run_id: str, key: str) -> float | None:
        answer = await self.http.request("GET", f"{API}/runs/get", params={"run_id": run_id})
        for metric in (answer.get("run") or {}).get("data", {}).get("metrics") or []:
            if metric.get("key") == key:
                return float(metric["value"])
        return None

    async def aclose(self) -> None:
        await self.http.aclose()
