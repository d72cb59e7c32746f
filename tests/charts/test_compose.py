"""manifests/compose: the Compose specification's schema (vendored by check-jsonschema), promtool on the
Prometheus configuration, and the files the services mount."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from tests.support.k8s_tools import ROOT, run

COMPOSE = ROOT / "manifests" / "compose"
FILE = COMPOSE / "docker-compose.yaml"


def check_compose(path: Path) -> tuple[int, str]:
    result = run([ROOT / ".venv" / "bin" / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", path])
    return result.returncode, result.stdout + result.stderr


def test_compose_file_follows_the_compose_specification() -> None:
    code, out = check_compose(FILE)
    assert code == 0, out


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        (lambda d: d["services"]["redis"].update(imagee="redis"), "imagee"),
        (lambda d: d["services"]["predictor"].update(ports=8080), "ports"),
        (lambda d: d["services"]["mlflow"]["depends_on"]["postgres"].update(condition="service_ready"), "service_ready"),
    ],
)
def test_the_schema_rejects_a_broken_file(tmp_path: Path, edit: object, named: str) -> None:
    doc = yaml.safe_load(FILE.read_text())
    edit(doc)  # type: ignore[operator]
    bad = tmp_path / "docker-compose.yaml"
    bad.write_text(yaml.safe_dump(doc))
    code, out = check_compose(bad)
    assert code != 0 and named in out, out


def test_services_and_hardening() -> None:
    doc = yaml.safe_load(FILE.read_text())
    services = doc["services"]
    assert {"redis", "postgres", "mlflow", "prometheus", "alertmanager", "grafana", "predictor"} <= set(services)
    for name, svc in services.items():
        assert ":" in svc["image"] and not svc["image"].endswith(":latest"), name
        assert svc.get("read_only") is True and svc.get("cap_drop") == ["ALL"], name
        assert "no-new-privileges:true" in svc.get("security_opt", []), name
        assert not str(svc.get("user", "0")).startswith("0"), name
        assert svc["deploy"]["resources"]["limits"], name
        for port in svc.get("ports", []):
            assert port.startswith("127.0.0.1:"), (name, port)


def test_mounted_files_exist_and_the_monitoring_files_are_the_canonical_ones() -> None:
    doc = yaml.safe_load(FILE.read_text())
    for name, svc in doc["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                path = (COMPOSE / source).resolve()
                assert path.exists() or "secrets" in source, (name, source)
                assert ROOT in path.parents
    mounts = " ".join(v for s in doc["services"].values() for v in s.get("volumes", []))
    assert "../monitoring/rules:" in mounts and "../monitoring/alertmanager.yaml:" in mounts and "../monitoring/dashboards:" in mounts


def test_prometheus_config_and_scrape_job() -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool is not installed (Debian: apt-get install prometheus)")
    result = run([promtool, "check", "config", "--syntax-only", COMPOSE / "prometheus.yml"])
    assert result.returncode == 0, result.stdout + result.stderr
    jobs = [j["job_name"] for j in yaml.safe_load((COMPOSE / "prometheus.yml").read_text())["scrape_configs"]]
    assert "churnops-predictor" in jobs  # the job ChurnOpsPredictorDown watches
