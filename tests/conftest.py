"""Shared fixtures: a small generated data set, and private Redis / PostgreSQL databases."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from churnops_features.local_services import DEFAULT_ADMIN_DSN, private_redis, temporary_database
from churnops_models.data import GeneratorConfig, save_manifest, write_raw
from churnops_models.features import build_features
from churnops_pipelines.foundation import Layout

SMALL = GeneratorConfig(n_customers=2_000, block_size=1_000, seed=7)
# Override to point the tests at another server (the account needs CREATEDB).
PG_ADMIN_DSN = os.environ.get("CHURNOPS_TEST_PG_DSN", DEFAULT_ADMIN_DSN)


@pytest.fixture(scope="session")
def small_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """Raw tables and features for 2,000 customers in two blocks (built once per session)."""
    layout = Layout(tmp_path_factory.mktemp("small"))
    counts = write_raw(SMALL, layout.raw)
    save_manifest(SMALL, layout.raw, counts)
    build_features(SMALL, layout.raw, layout.features)
    return layout


@pytest.fixture
def layout_copy(small_layout: Layout, tmp_path: Path) -> Layout:
    """A private copy of the small data set that a test may change."""
    shutil.copytree(small_layout.data_dir, tmp_path / "data")
    return Layout(tmp_path / "data")


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A private redis-server on a free loopback port (never the shared instance)."""
    with private_redis() as url:
        yield url


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    with temporary_database(PG_ADMIN_DSN, prefix="churnops_test") as name:
        yield name
