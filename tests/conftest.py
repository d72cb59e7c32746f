"""Shared fixtures: a small generated data set, and private Redis / PostgreSQL databases."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from churnops_models.data import GeneratorConfig, save_manifest, write_raw
from churnops_models.features import build_features
from churnops_pipelines.foundation import Layout

SMALL = GeneratorConfig(n_customers=2_000, block_size=1_000, seed=7)
# Override to point the tests at another server (the account needs CREATEDB).
PG_ADMIN_DSN = os.environ.get("CHURNOPS_TEST_PG_DSN", "host=127.0.0.1 port=5432 user=postgres dbname=postgres connect_timeout=5")


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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A private redis-server on a free loopback port (never the shared instance)."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is required for integration tests (apt-get install redis-server)"
    port = _free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=1)
    deadline = time.monotonic() + 10
    while True:
        try:
            client.ping()
            break
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield f"127.0.0.1:{port}"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def pg_database() -> Iterator[str]:
    """A fresh PostgreSQL database for one test, dropped afterwards."""
    name = f"churnops_test_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        yield name
    finally:
        with psycopg.connect(PG_ADMIN_DSN, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
