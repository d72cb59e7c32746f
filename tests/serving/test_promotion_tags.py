"""Promotion records who replaced whom, on both versions, under the contract's tag names."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from mlflow.tracking import MlflowClient

from churnops.training import registry
from churnops.training.ensemble import ChurnEnsemble
from churnops_contract import registry as names
from tests.support import groups
from tests.support.serving import register

pytestmark = groups.SERVING_MODELS


def test_promotion_tags_both_versions(tmp_path: Path, xgb_single: ChurnEnsemble, churn_table: pd.DataFrame) -> None:
    reg = registry.config_for(f"sqlite:///{tmp_path / 'mlflow.db'}")
    example = churn_table[list(xgb_single.feature_names)].head(3)
    first = register(reg, xgb_single, example, 0.3)
    second = register(reg, xgb_single, example, 0.3)
    assert registry.promote(reg, first, "first").previous is None
    done = registry.promote(reg, second, "better holdout AUC")
    assert (done.version, done.previous, done.reason) == (second, first, "better holdout AUC")

    client = MlflowClient(reg.tracking_uri, registry_uri=reg.tracking_uri)
    new = client.get_model_version(reg.model_name, second).tags
    old = client.get_model_version(reg.model_name, first).tags
    assert new[names.TAG_PROMOTED_AT] == done.time and new[names.TAG_PROMOTION_REASON] == "better holdout AUC"
    assert old[names.TAG_REPLACED_BY] == second and old[names.TAG_REPLACED_AT] == done.time
    assert registry.alias_version(reg, names.CHAMPION) == second
    assert registry.alias_version(reg, names.CHALLENGER) is None  # the promoted challenger is no longer one
    assert (tmp_path / "artifacts").is_dir()  # artifacts next to the store, never ./mlruns
