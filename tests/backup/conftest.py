"""A served embedded data directory (features published, a champion in its own registry) for the backup tests."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from churnops.features import steps as foundation
from churnops.layout import Layout
from churnops.training import registry
from tests.support.serving import fit_ensemble, register


@pytest.fixture(scope="session")
def served_data(small_layout: Layout, churn_table: pd.DataFrame, tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """The small data set published to Feast's SQLite online store, with a champion in the embedded registry."""
    layout = Layout(tmp_path_factory.mktemp("served") / "data")
    shutil.copytree(small_layout.data_dir, layout.data_dir)
    foundation.publish(layout, "embedded", dict(os.environ))
    model = fit_ensemble(churn_table, ["xgboost"], "single")
    reg = registry.RegistryConfig.embedded(layout.data_dir)
    version = register(reg, model, churn_table[list(model.feature_names)].head(5), 0.3)
    registry.promote(reg, version, "backup test champion")
    return layout
