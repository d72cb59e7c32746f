from __future__ import annotations

import pandas as pd
import pytest

from churnops_models.data import GeneratorConfig, generate_blocks
from churnops_models.features import DOMAINS, ENTITY, TIMESTAMP, compute_block_features

TRAIN_DATA = GeneratorConfig(n_customers=3_000, block_size=3_000, seed=21)


@pytest.fixture(scope="session")
def churn_table() -> pd.DataFrame:
    """Labels joined with all features at each labelled snapshot (what Feast's historical retrieval returns)."""
    block = next(generate_blocks(TRAIN_DATA))
    feats = compute_block_features(TRAIN_DATA, block.tables, TRAIN_DATA.labelled_snapshot_days())
    frame = block.labels[[ENTITY, TIMESTAMP, "churned_30d"]]
    for domain in DOMAINS:
        frame = frame.merge(feats[domain], on=[ENTITY, TIMESTAMP], validate="one_to_one")
    return frame
