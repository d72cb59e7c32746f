"""A small customer table as users bring it: contract types whose churn base rates differ many-fold.

Shaped like the public telecom churn tables: month-to-month contracts churn often, two-year
contracts rarely, so at one decision threshold the model finds most month-to-month churners and
few two-year ones (the recall gap the fairness gate refuses). ``gender`` is a protected attribute
that has no effect on churn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from churnops.training.config import SearchBudget, TrainingConfig

CONTRACTS = {"month-to-month": 0.0, "one-year": -2.0, "two-year": -3.5}  # added to the churn log-odds
KEYS = ["--id-column", "customer", "--time-column", "as_of", "--target-column", "churned"]
# one fast family, few trials: these tests are about ingestion, gates and the registry, not the search
FAST = TrainingConfig(seed=1, budget=SearchBudget(n_trials=2, timeout_s=None, n_folds=2, families=("logistic_regression",)))
FAST_ARGS = ["--trials", "3", "--budget-minutes", "0", "--seed", "1"]


def contract_table(n: int = 3_000, seed: int = 5) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    contract = rng.choice(list(CONTRACTS), n, p=[0.5, 0.25, 0.25])
    tenure = rng.gamma(2.0, 12.0, n).round(1)
    charges = rng.normal(70, 25, n).clip(15, 130).round(2)
    tickets = rng.poisson(1.0, n)
    margin = -0.3 + np.array([CONTRACTS[c] for c in contract]) - 0.04 * tenure + 0.015 * (charges - 70) + 0.5 * tickets
    churned = rng.random(n) < 1 / (1 + np.exp(-margin))
    return pd.DataFrame(
        {
            "customer": [f"c{i:05d}" for i in range(n)],
            "as_of": pd.Timestamp("2025-01-15") + pd.to_timedelta(rng.integers(0, 4, n) * 61, unit="D"),
            "contract": contract,
            "gender": rng.choice(["female", "male"], n),
            "tenure_months": tenure,
            "monthly_charges": charges,
            "tickets": tickets,
            "churned": np.where(churned, "Yes", "No"),
        }
    )


def train_args(data_dir: Path, path: Path, *extra: str) -> list[str]:
    return ["--data-dir", str(data_dir), "train", "--data", str(path), *KEYS, *FAST_ARGS, *extra]
