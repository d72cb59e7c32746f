"""values.schema.json: draft-07, closed objects, and wrong values refused with a message that names them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests.charts.render import CHART, SCENARIOS, template

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
DEFAULTS = yaml.safe_load((CHART / "values.yaml").read_text())


def test_schema_is_draft_07_and_valid() -> None:
    assert SCHEMA["$schema"] == "http://json-schema.org/draft-07/schema#"
    jsonschema.Draft7Validator.check_schema(SCHEMA)


def test_every_object_is_closed() -> None:
    """Each object with properties refuses unknown keys (a typo never passes silently)."""
    open_objects: list[str] = []

    def walk(node: Any, path: str) -> None:
        if isinstance(node, dict):
            if node.get("type") == "object" and "properties" in node and node.get("additionalProperties") is not False:
                open_objects.append(path)
            for key, sub in node.items():
                walk(sub, f"{path}/{key}")
        elif isinstance(node, list):
            for i, sub in enumerate(node):
                walk(sub, f"{path}/{i}")

    walk(SCHEMA, "#")
    assert not open_objects, open_objects


@pytest.mark.parametrize("scenario", ["defaults", *SCENARIOS])
def test_values_files_validate(scenario: str) -> None:
    values = (
        DEFAULTS if scenario == "defaults" else _merge(DEFAULTS, yaml.safe_load((CHART / "ci" / f"{scenario}-values.yaml").read_text()))
    )
    jsonschema.Draft7Validator(SCHEMA).validate(values)


def test_every_default_value_is_commented() -> None:
    """Each key of values.yaml has a comment line right above it (or sits in a commented block)."""
    lines = (CHART / "values.yaml").read_text().splitlines()
    bare = []
    for i, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-")) or ":" not in stripped:
            continue
        above = lines[i - 1].strip() if i else ""
        nested_value = stripped.endswith(":") or stripped.split(":", 1)[1].strip() in {"", "{}", "[]"}
        if not above.startswith("#") and not (nested_value and above.endswith(":")) and not _in_documented_block(lines, i):
            bare.append(f"{i + 1}: {stripped}")
    assert not bare, bare


def _in_documented_block(lines: list[str], i: int) -> bool:
    """A key inside a mapping whose parent line is commented (e.g. requests/limits under a commented `resources:`)."""
    indent = len(lines[i]) - len(lines[i].lstrip())
    for j in range(i - 1, -1, -1):
        line = lines[j]
        if not line.strip():
            continue
        ind = len(line) - len(line.lstrip())
        if ind < indent and not line.strip().startswith("#"):
            parent_above = lines[j - 1].strip() if j else ""
            return parent_above.startswith("#") and line.strip().endswith(":")
    return False


def _merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: _merge(base.get(k), v) for k, v in over.items()}}
    return over


BAD = [
    # (description, extra helm arguments, text the error must contain)
    ("a string for replicas", ["--set-string", "operator.replicas=two"], "operator/replicas"),
    ("an unknown key", ["--set", "operator.replicaCount=3"], "replicaCount"),
    (
        "a canary step of 150",
        [
            "--set-json",
            'modelDeployments=[{"name":"churn","namespace":"churn","spec":{"model":{"alias":"champion"},"featureService":"churn_v1","rollout":{"steps":[5,150]}}}]',
        ],
        "modelDeployments/0/spec/rollout/steps/1",
    ),
    ("the latest tag", ["--set", "images.operator.tag=latest"], "images/operator/tag"),
    (
        "a typo inside a ModelDeployment",
        [
            "--set-json",
            'modelDeployments=[{"name":"m","namespace":"churn","spec":{"model":{"alias":"a"},"featureService":"f","rolout":{}}}]',
        ],
        "rolout",
    ),
    (
        "an unknown serving mode",
        [
            "--set-json",
            'modelDeployments=[{"name":"m","namespace":"churn","spec":{"model":{"alias":"a"},"featureService":"f","serving":{"mode":"Knative"}}}]',
        ],
        "modelDeployments/0/spec/serving/mode",
    ),
    ("resources without limits", ["--set", "operator.resources.limits=null"], "operator/resources"),
]


@pytest.mark.parametrize(("what", "args", "named"), BAD, ids=[b[0] for b in BAD])
def test_wrong_values_are_refused_by_name(what: str, args: list[str], named: str) -> None:
    code, _, err = template("-f", CHART / "ci" / "kind-values.yaml", *args)
    assert code != 0, f"{what} was accepted"
    assert "values don't meet the specifications of the schema" in err, err
    assert named in err, err


def test_a_valid_model_deployment_renders_and_matches_the_crd(tmp_path: Path) -> None:
    values = tmp_path / "md.yaml"
    values.write_text(
        yaml.safe_dump(
            {
                "modelDeployments": [
                    {
                        "name": "churn",
                        "namespace": "churn",
                        "spec": {"model": {"alias": "champion"}, "featureService": "churn_v1", "rollout": {"steps": [10, 100]}},
                    }
                ]
            }
        )
    )
    code, out, err = template("-f", CHART / "ci" / "kind-values.yaml", "-f", values)
    assert code == 0, err
    assert "kind: ModelDeployment" in out
