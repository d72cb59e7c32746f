"""The operator's import contracts (import-linter, in pyproject.toml), and what importing it really loads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ML_STACK = ("numpy", "pandas", "pyarrow", "sklearn", "scipy", "lightgbm", "xgboost", "shap", "feast", "kserve", "mlflow", "kfp", "churnops")
OPERATOR_CONTRACTS = (
    "The operator does not import the ML stack",
    "The operator's serving objects import no client library and no I/O module",
    "The operator is layered",
    "The rollout core is layered",
    "Project code shares the rollout core through the contract and never imports the operator or the tests",
)


def test_operator_import_contracts_are_kept() -> None:
    lint = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run([str(lint), "--no-cache"], capture_output=True, text=True, cwd=ROOT, check=False)
    report = " ".join(result.stdout.split())  # import-linter wraps long names
    for name in OPERATOR_CONTRACTS:
        assert name in report, f"contract {name!r} missing from pyproject.toml:\n{result.stdout}"
        tail = report.split(name, 1)[1]
        assert tail.split(" KEPT", 1)[0].count("BROKEN") == 0 and " KEPT" in tail, result.stdout


def test_starting_the_operator_loads_no_ml_library() -> None:
    code = (
        "import sys, churnops_operator.main\n"
        f"bad = sorted({{m.split('.')[0] for m in sys.modules}} & set({ML_STACK!r}))\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "", f"the operator loaded {result.stdout.strip()}"
