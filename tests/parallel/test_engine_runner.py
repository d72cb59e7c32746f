"""Engines on a real Dask cluster of worker processes: results in order, errors surfaced, nothing left running."""

from __future__ import annotations

import os
import time

import dask
import pytest

from churnops.errors import InvalidInputError, UnavailableError
from churnops.parallel.choice import EngineConfig
from churnops.parallel.runner import DaskEngine, Engine, InProcess, open_engine
from churnops.processes import free_port


def slow_echo(item: tuple[int, int]) -> tuple[int, int]:
    """Later items finish first: item i of n sleeps (n - i) * 30 ms."""
    i, n = item
    time.sleep((n - i) * 0.03)
    return i, os.getpid()


def fail_on_three(i: int) -> int:
    if i == 3:
        raise InvalidInputError("part 3 is unreadable", field="part-00003")
    time.sleep(0.2)
    return i


def die(_: int) -> int:
    os._exit(1)  # what the kernel's OOM killer does to a worker


def test_results_come_in_item_order_from_worker_processes(dask_engine: Engine) -> None:
    n = 12
    results = list(dask_engine.map(slow_echo, [(i, n) for i in range(n)]))
    assert [i for i, _ in results] == list(range(n))
    pids = {pid for _, pid in results}
    assert len(pids) == 2 and os.getpid() not in pids  # both workers ran tasks, none ran here


def _running(engine: DaskEngine) -> bool:
    return any(engine.client.processing().values())  # type: ignore[no-untyped-call]


def malloc_setting(_: int) -> str | None:
    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_local_workers_keep_the_default_allocator(dask_engine: Engine) -> None:
    """Dask's nanny would set MALLOC_TRIM_THRESHOLD_, which makes array-heavy tasks several times slower."""
    assert list(dask_engine.map(malloc_setting, range(4))) == [None] * 4


def test_the_in_process_engine_runs_tasks_here_in_order() -> None:
    engine = InProcess()
    assert list(engine.map(slow_echo, [(i, 3) for i in range(3)])) == [(0, os.getpid()), (1, os.getpid()), (2, os.getpid())]
    assert engine.workers == 1


def test_a_failing_task_raises_its_own_error_and_cancels_the_rest(dask_engine: Engine) -> None:
    assert isinstance(dask_engine, DaskEngine)
    with pytest.raises(InvalidInputError) as caught:
        list(dask_engine.map(fail_on_three, range(40)))
    assert caught.value.field == "part-00003"
    deadline = time.monotonic() + 10
    while _running(dask_engine) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _running(dask_engine)
    assert list(dask_engine.map(fail_on_three, [0, 1])) == [0, 1]  # the cluster still works


def test_a_worker_that_dies_is_reported_as_unavailable_not_retried_forever() -> None:
    with (
        dask.config.set({"distributed.scheduler.allowed-failures": 0}),
        open_engine(EngineConfig("dask", workers=1), 0) as engine,
        pytest.raises(UnavailableError, match="worker died"),
    ):
        list(engine.map(die, [0]))


def test_an_unreachable_scheduler_names_the_address_option() -> None:
    address = f"tcp://127.0.0.1:{free_port()}"
    with pytest.raises(UnavailableError) as caught, open_engine(EngineConfig("dask", address=address, connect_timeout_s=1.0), 0):
        pass
    assert caught.value.field == "--engine-address"
    assert address in caught.value.message


def test_a_given_scheduler_is_used_and_left_running(dask_engine: Engine) -> None:
    assert isinstance(dask_engine, DaskEngine)
    address = str(dask_engine.client.scheduler_info()["address"])
    with open_engine(EngineConfig("auto", address=address), 0) as engine:
        assert isinstance(engine, DaskEngine)
        assert [i for i, _ in engine.map(slow_echo, [(0, 1), (1, 1)])] == [0, 1]
    assert dask_engine.client.status == "running"  # closing a connection does not close the cluster
