"""Kubeflow Pipelines I/O over its v2beta1 REST API: find or start a training run, read its state.

Runs are found by display name before one is created, so a start that was
interrupted after the POST is adopted instead of repeated.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from churnops_operator.http import ExternalError, JsonClient

API = "/apis/v2beta1"


def name_filter(name: str) -> str:
    return json.dumps({"predicates": [{"key": "display_name", "operation": "EQUALS", "string_value": name}]})


class KFP:
    def __init__(self, base_url: str, timeout_s: float = 10.0, token: str | None = None) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.http = JsonClient("kfp", base_url, timeout_s, headers=headers)

    async def _one(self, path: str, key: str, name: str, params: Mapping[str, str] | None = None) -> dict[str, Any] | None:
        answer = await self.http.request("GET", path, params={"filter": name_filter(name), "page_size": "10", **(params or {})})
        items = [item for item in answer.get(key) or [] if item.get("display_name") == name]
        return items[0] if items else None

    async def pipeline_version(self, pipeline: str) -> tuple[str, str]:
        """The pipeline's id and its newest version's id."""
        found = await self._one(f"{API}/pipelines", "pipelines", pipeline)
        if found is None:
            raise ExternalError("kfp", 404, f"no pipeline named {pipeline!r}")
        pid = found["pipeline_id"]
        versions = await self.http.request(
            "GET", f"{API}/pipelines/{pid}/versions", params={"sort_by": "created_at desc", "page_size": "1"}
        )
        items = versions.get("pipeline_versions") or []
        if not items:
            raise ExternalError("kfp", 404, f"pipeline {pipeline!r} has no version")
        return pid, items[0]["pipeline_version_id"]

    async def experiment(self, name: str) -> str:
        """The id of the experiment named ``name``, created when missing."""
        found = await self._one(f"{API}/experiments", "experiments", name)
        if found is not None:
            return str(found["experiment_id"])
        created = await self.http.request("POST", f"{API}/experiments", json={"display_name": name})
        return str(created["experiment_id"])

    async def ensure_run(self, name: str, pipeline: str, experiment: str, parameters: Mapping[str, str]) -> dict[str, Any]:
        """The run named ``name`` in ``experiment``: found, or started now."""
        experiment_id = await self.experiment(experiment)
        existing = await self._one(f"{API}/runs", "runs", name, {"experiment_id": experiment_id})
        if existing is not None:
            return existing
        pipeline_id, version_id = await self.pipeline_version(pipeline)
        body = {
            "display_name": name,
            "experiment_id": experiment_id,
            "pipeline_version_reference": {"pipeline_id": pipeline_id, "pipeline_version_id": version_id},
            "runtime_config": {"parameters": dict(parameters)},
        }
        run: dict[str, Any] = await self.http.request("POST", f"{API}/runs", json=body)
        return run

    async def run(self, run_id: str) -> dict[str, Any]:
        found: dict[str, Any] = await self.http.request("GET", f"{API}/runs/{run_id}")
        return found

    async def aclose(self) -> None:
        await self.http.aclose()
