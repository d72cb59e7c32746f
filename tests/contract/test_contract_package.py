"""The shared contract installs alone, without NumPy, pandas or any ML library, and imports nothing else."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
UV = ROOT / ".tools" / "bin" / "uv"


@pytest.mark.timeout(300)
def test_contract_installs_into_an_empty_environment(tmp_path: Path) -> None:
    uv = str(UV) if UV.exists() else shutil.which("uv")
    if uv is None:
        pytest.fail("uv is needed to build the contract package (`make install` puts it in .tools/)")
    venv = tmp_path / "venv"
    subprocess.run([uv, "venv", "--quiet", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    # --offline: the build backend comes from uv's cache, filled when the project was installed
    subprocess.run([uv, "pip", "install", "--quiet", "--offline", "--python", python, str(ROOT / "models" / "contract")], check=True)
    listed = subprocess.run([uv, "pip", "freeze", "--python", python], check=True, capture_output=True, text=True).stdout.splitlines()
    assert [p.split("==")[0].split(" @ ")[0] for p in listed] == ["churnops-contract"]  # nothing else
    probe = (
        "import sys, churnops_contract.metric_names, churnops_contract.policy, churnops_contract.registry;"
        "heavy = {'numpy', 'pandas', 'sklearn', 'mlflow', 'kserve', 'feast'} & set(sys.modules);"
        "print(churnops_contract.registry.CHAMPION, sorted(heavy))"
    )
    out = subprocess.run([python, "-c", probe], check=True, capture_output=True, text=True, cwd=tmp_path).stdout
    assert out.split() == ["champion", "[]"]
