"""Generation and the feature build as tasks over partitions: Dask writes exactly what one process writes."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from churnops.data.config import GeneratorConfig
from churnops.data.generator import write_raw
from churnops.data.raw import read_raw
from churnops.data.schema import ENTITY, EVENT_TABLES, RAW_TABLES, TIMESTAMP
from churnops.features.catalog import DOMAINS
from churnops.features.engine import build_features, compute_block_features, feature_schema
from churnops.parallel.runner import Engine

CFG = GeneratorConfig(n_customers=1_800, block_size=500, seed=11)  # four parts, the last one short


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory, dask_engine: Engine) -> tuple[Path, Path]:
    """The same data generated and featurised once in this process and once on Dask."""
    here, there = tmp_path_factory.mktemp("in-process"), tmp_path_factory.mktemp("on-dask")
    seen: list[int] = []
    assert write_raw(CFG, here / "raw") == write_raw(CFG, there / "raw", progress=seen.append, engine=dask_engine)
    assert seen == [500, 500, 500, 300]  # progress comes per part, in order
    build_features(CFG.calendar, here / "raw", here / "features")
    build_features(CFG.calendar, there / "raw", there / "features", engine=dask_engine)
    return here, there


def test_generation_on_dask_writes_the_same_parts(both: tuple[Path, Path]) -> None:
    here, there = both
    for table in RAW_TABLES:
        names = sorted(p.name for p in (here / "raw" / table).glob("part-*.parquet"))
        assert names == [f"part-{i:05d}.parquet" for i in range(4)]
        assert names == sorted(p.name for p in (there / "raw" / table).glob("part-*.parquet"))
        for name in names:
            assert pq.read_table(here / "raw" / table / name).equals(pq.read_table(there / "raw" / table / name)), (table, name)


def test_the_feature_build_on_dask_writes_the_same_files(both: tuple[Path, Path]) -> None:
    here, there = both
    for domain in DOMAINS:
        mine, theirs = pq.read_table(here / "features" / f"{domain}.parquet"), pq.read_table(there / "features" / f"{domain}.parquet")
        assert mine.num_rows > CFG.n_customers
        assert mine.schema.equals(theirs.schema)
        assert mine.equals(theirs), domain


def test_partitions_give_the_features_of_one_block_of_every_customer(both: tuple[Path, Path]) -> None:
    """Each customer's features depend on its own history only: four parts equal one block of all 1,800."""
    here, _ = both
    tables = {t: read_raw(here / "raw", t) for t in EVENT_TABLES}
    whole = compute_block_features(CFG.calendar, tables)
    for domain in DOMAINS:
        built = pq.read_table(here / "features" / f"{domain}.parquet").to_pandas()
        expected = pa.Table.from_pandas(whole[domain], schema=feature_schema(domain), preserve_index=False).to_pandas()
        key = [TIMESTAMP, ENTITY]
        assert len(built) == len(expected)
        pd.testing.assert_frame_equal(
            built.sort_values(key).reset_index(drop=True), expected.sort_values(key).reset_index(drop=True), check_exact=True
        )
