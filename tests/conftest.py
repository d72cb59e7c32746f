"""Shared fixtures (small generated data sets, private Redis / PostgreSQL databases, an MLflow server),
and a check that the run leaves the work tree as it found it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from churnops.data.config import GeneratorConfig
from churnops.data.generator import generate_blocks, save_manifest, write_raw
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features.catalog import DOMAINS
from churnops.features.engine import build_features, compute_block_features
from churnops.layout import Layout
from churnops.parallel.choice import EngineConfig
from churnops.parallel.runner import DaskEngine, open_engine
from churnops.processes import free_port, single_process_metrics, wait_for_http
from tests.support import groups
from tests.support.services import DEFAULT_ADMIN_DSN, private_redis, temporary_database

REPO = Path(__file__).resolve().parents[1]
SMALL = GeneratorConfig(n_customers=2_000, block_size=1_000, seed=7)
# Override to point the tests at another server (the account needs CREATEDB).
PG_ADMIN_DSN = os.environ.get("CHURNOPS_TEST_PG_DSN", DEFAULT_ADMIN_DSN)


def _work_tree_status() -> set[str] | None:
    """``git status`` entries (including untracked and ignored-by-nothing files); None outside a checkout."""
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=all"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    return set(out.splitlines())


# Importing Feast would put prometheus_client in its multi-process mode, where registries share values. Done
# here, not in pytest_configure: pytest imports the conftest files of the folders named on its command line
# (tests/serving/conftest.py imports Feast) before any pytest_configure runs.
single_process_metrics()


def pytest_sessionstart(session: pytest.Session) -> None:
    session.config.stash[_STATUS] = _work_tree_status()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fail the run when tests left files in the work tree (outputs belong in tmp_path or ignored dirs)."""
    if hasattr(session.config, "workerinput"):
        return  # a pytest-xdist worker: the controller checks once
    before = session.config.stash.get(_STATUS, None)
    after = _work_tree_status()
    if before is None or after is None:
        return
    left = sorted(after - before)
    if left:
        print("\ntests changed the work tree (write outputs under tmp_path):\n  " + "\n  ".join(left), file=sys.stderr)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


_STATUS = pytest.StashKey[set[str] | None]()


@pytest.fixture(scope="session", autouse=True)
def audit_key_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every audit writer the tests start (servers inherit the environment) signs with a key of this session,
    kept outside every data directory, never in the user's own ~/.config."""
    key_dir = tmp_path_factory.mktemp("audit-keys")
    before = os.environ.get("CHURNOPS_AUDIT_KEY_DIR")
    os.environ["CHURNOPS_AUDIT_KEY_DIR"] = str(key_dir)
    yield key_dir
    if before is None:
        os.environ.pop("CHURNOPS_AUDIT_KEY_DIR", None)
    else:
        os.environ["CHURNOPS_AUDIT_KEY_DIR"] = before


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups into the node ids
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """With pytest-xdist (``make test`` runs ``--dist loadgroup``): a module that shares an expensive fixture
    carries its group's mark (tests/support/groups.py); every other module is a unit of its own. Units are
    handed out longest first by their measured time, so the workers finish together."""
    root = config.rootpath
    modules = [groups.module_of(item, root) for item in items]
    marked = [groups.group_of(item) for item in items]
    for item, module, group in zip(items, modules, marked, strict=True):
        if group is None:
            item.add_marker(pytest.mark.xdist_group(module))
    units = groups.units(modules, marked)
    rank = groups.unit_order(units, modules, groups.load_durations())
    order = {id(item): (rank[unit], i) for i, (item, unit) in enumerate(zip(items, units, strict=True))}
    items.sort(key=lambda item: order[id(item)])  # a unit's tests stay together and in their order


@pytest.fixture(scope="session")
def small_layout(tmp_path_factory: pytest.TempPathFactory) -> Layout:
    """Raw tables and features for 2,000 customers in two blocks (built once per session)."""
    layout = Layout(tmp_path_factory.mktemp("small"))
    counts = write_raw(SMALL, layout.raw)
    save_manifest(SMALL, layout.raw, counts)
    build_features(SMALL.calendar, layout.raw, layout.features)
    return layout


@pytest.fixture
def layout_copy(small_layout: Layout, tmp_path: Path) -> Layout:
    """A private copy of the small data set that a test may change."""
    shutil.copytree(small_layout.data_dir, tmp_path / "data")
    return Layout(tmp_path / "data")


@pytest.fixture(scope="module")
def dask_engine() -> Iterator[DaskEngine]:
    """A Dask cluster of two worker processes on this machine, shared by a module's tests."""
    with open_engine(EngineConfig("dask", workers=2), 0) as engine:
        assert isinstance(engine, DaskEngine)
        yield engine


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


@pytest.fixture
def pg_dsn(pg_database: str) -> str:
    """A libpq connection string for the test's fresh database."""
    return f"{PG_ADMIN_DSN} dbname={pg_database}"


TRAIN_DATA = GeneratorConfig(n_customers=3_000, block_size=3_000, seed=21)


@pytest.fixture(scope="session")
def churn_table() -> pd.DataFrame:
    """Labels joined with all features at each labelled snapshot (what Feast's historical retrieval returns)."""
    block = next(generate_blocks(TRAIN_DATA))
    feats = compute_block_features(TRAIN_DATA.calendar, block.tables, TRAIN_DATA.calendar.labelled_snapshot_days())
    frame = block.labels[[ENTITY, TIMESTAMP, "churned_30d"]]
    for domain in DOMAINS:
        frame = frame.merge(feats[domain], on=[ENTITY, TIMESTAMP], validate="one_to_one")
    return frame


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, proxied artifacts) on a free loopback port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = Path(sys.executable).parent / "mlflow"
    cmd = [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    cmd += ["--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts")]
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/health", proc, 120)
    except RuntimeError as e:
        proc.kill()
        raise RuntimeError(f"mlflow server did not start ({e}): {(root / 'server.log').read_text()[-2000:]}") from None
    yield url
    proc.terminate()
    proc.wait(timeout=30)
    log.close()
