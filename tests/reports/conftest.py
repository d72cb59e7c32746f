"""The report tests' data directory: the whole loop, built once per session (see ``story``)."""

from __future__ import annotations

import pandas as pd
import pytest

from tests.reports.story import Story, build_story


@pytest.fixture(scope="session")
def story(tmp_path_factory: pytest.TempPathFactory, churn_table: pd.DataFrame) -> Story:
    return build_story(tmp_path_factory.mktemp("story"), churn_table)
