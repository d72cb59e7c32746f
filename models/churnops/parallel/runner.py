"""Engines that run a function over partitions: in this process, or on a Dask cluster.

``Engine.map`` yields results in the order of the items, whatever order the tasks finish in, so a
caller that writes results as they come writes the same file on either engine. At most ``window``
tasks are in flight (two per worker), which bounds what finished results hold in the caller.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from churnops.errors import UnavailableError
from churnops.parallel.choice import EngineConfig, default_workers, resolve

if TYPE_CHECKING:
    from distributed import Client, LocalCluster

T = TypeVar("T")
R = TypeVar("R")


class Engine(Protocol):
    name: str

    @property
    def workers(self) -> int: ...

    def map(self, fn: Callable[..., R], items: Iterable[T], *shared: object) -> Iterator[R]:
        """``fn(item, *shared)`` for each item, in the items' order; ``shared`` objects reach each worker once."""
        ...


class InProcess:
    """Tasks one after another in the calling process: small inputs, tests, and the demo."""

    name = "local"

    @property
    def workers(self) -> int:
        return 1

    def map(self, fn: Callable[..., R], items: Iterable[T], *shared: object) -> Iterator[R]:
        for item in items:
            yield fn(item, *shared)


class DaskEngine:
    """Tasks on a Dask cluster through a connected ``Client``."""

    name = "dask"

    def __init__(self, client: Client) -> None:
        self.client = client

    @property
    def workers(self) -> int:
        return max(len(self.client.scheduler_info()["workers"]), 1)

    def map(self, fn: Callable[..., R], items: Iterable[T], *shared: object) -> Iterator[R]:
        from distributed import KilledWorker  # noqa: PLC0415 - Dask loads only when a command runs on it

        window = 2 * self.workers
        # sent to every worker once (a model, say), not pickled into each task; Dask hands tasks the values
        handles = self.client.scatter(list(shared), broadcast=True) if shared else []  # type: ignore[no-untyped-call]
        pending: deque[Any] = deque()
        try:
            for item in items:
                # pure=False: two tasks over equal items are still two tasks (the items name files, not values)
                pending.append(self.client.submit(fn, item, *handles, pure=False))
                if len(pending) >= window:
                    yield _result(pending.popleft(), KilledWorker)
            while pending:
                yield _result(pending.popleft(), KilledWorker)
        finally:
            for future in pending:  # an error or an abandoned loop: nothing keeps running for nobody
                future.cancel()


def _result(future: Any, killed: type[Exception]) -> Any:
    try:
        return future.result()
    except killed as e:
        raise UnavailableError(
            f"a Dask worker died running {future.key} ({e}); a worker that runs out of memory is killed: "
            "give the workers more memory or make the partitions smaller"
        ) from None


@contextmanager
def open_engine(config: EngineConfig, input_bytes: int) -> Iterator[Engine]:
    """The engine ``config`` chooses for an input of ``input_bytes``, closed (with any cluster it started) on exit."""
    if resolve(config, input_bytes) == "local":
        yield InProcess()
        return
    client, cluster = _connect(config)
    try:
        yield DaskEngine(client)
    finally:
        client.close()  # type: ignore[no-untyped-call]  # distributed ships partial annotations
        if cluster is not None:
            cluster.close()


def _connect(config: EngineConfig) -> tuple[Client, LocalCluster | None]:
    import dask  # noqa: PLC0415 - Dask loads only when a command runs on it
    from distributed import Client, LocalCluster  # noqa: PLC0415

    if config.address:
        try:
            return Client(config.address, timeout=config.connect_timeout_s), None  # type: ignore[no-untyped-call]
        except (OSError, TimeoutError, ValueError) as e:
            raise UnavailableError(f"no Dask scheduler answers at {config.address}: {e}", field="--engine-address") from None
    # The scheduler runs in this process: its routine INFO lines (workers joining, leaving) are not the command's output.
    logging.getLogger("distributed").setLevel(logging.WARNING)
    # One single-threaded process per worker: the tasks are NumPy/pandas code that holds the interpreter lock.
    # Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_ set, which also turns off glibc's adaptive mmap
    # threshold: every large temporary array is then mapped and faulted in afresh. The tasks here make many
    # (exact reasons of 100,000 rows took 16.5 s in a worker against 4.5 s in this process; 5.2 s unset).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        cluster = LocalCluster(  # type: ignore[no-untyped-call]
            n_workers=config.workers or default_workers(),
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # no fixed port: a second cluster, or a user's own on 8787, never collides
            silence_logs=logging.ERROR,
        )
    return Client(cluster), cluster  # type: ignore[no-untyped-call]
