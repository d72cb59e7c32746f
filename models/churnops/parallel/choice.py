"""Which engine a command runs on: pure decisions from the options, the environment and the input size."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

from churnops.errors import InvalidInputError

EngineKind = Literal["auto", "local", "dask"]
KINDS: tuple[EngineKind, ...] = ("auto", "local", "dask")
# Inputs above this many bytes of raw Parquet go to the engine under "auto": about 80,000 customers, whose
# feature build takes about 10 s in one process; below it, starting worker processes costs more than it saves.
AUTO_THRESHOLD_BYTES = 100 * 2**20
# The scheduler a Dask Kubernetes operator's DaskJob hands its runner pod.
ADDRESS_ENV = "DASK_SCHEDULER_ADDRESS"


@dataclass(frozen=True)
class EngineConfig:
    """How a command runs its tasks.

    ``kind``: ``local`` runs them in this process, ``dask`` on Dask, ``auto`` on Dask when the input is larger
    than ``threshold_bytes`` (None: never by size) or a scheduler ``address`` is given. ``address``: a running scheduler
    (``tcp://host:8786``); without one, ``dask`` starts a local cluster of ``workers`` processes with one thread
    each (default: one per core). ``connect_timeout_s``: how long to wait for that scheduler.
    """

    kind: EngineKind = "auto"
    address: str | None = None
    workers: int | None = None
    threshold_bytes: int | None = AUTO_THRESHOLD_BYTES
    connect_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InvalidInputError(f"unknown engine {self.kind!r}; choose from {list(KINDS)}", field="--engine")
        if self.workers is not None and self.workers < 1:
            raise InvalidInputError(f"must be at least 1, got {self.workers}", field="--engine-workers")
        if self.threshold_bytes is not None and self.threshold_bytes < 0:
            raise InvalidInputError(f"must not be negative, got {self.threshold_bytes}", field="--engine-threshold-mb")
        if self.kind == "local" and self.address:
            raise InvalidInputError("a scheduler address needs --engine dask or auto", field="--engine-address")

    @classmethod
    def from_options(
        cls, kind: str, address: str | None, workers: int | None, threshold_mb: float | None, env: Mapping[str, str]
    ) -> EngineConfig:
        """Options win; the scheduler address falls back to the one a DaskJob sets in the environment."""
        threshold = AUTO_THRESHOLD_BYTES if threshold_mb is None else None if math.isinf(threshold_mb) else int(threshold_mb * 2**20)
        address = address or (None if kind == "local" else env.get(ADDRESS_ENV) or None)
        return cls(kind, address, workers, threshold)  # type: ignore[arg-type]  # __post_init__ checks the kind


LOCAL = EngineConfig("local")  # the default of library calls: this process, whatever the size


def resolve(config: EngineConfig, input_bytes: int) -> Literal["local", "dask"]:
    """The engine for an input of ``input_bytes``; an explicit choice or a scheduler address always wins."""
    if config.kind != "auto":
        return config.kind
    if config.address:
        return "dask"
    if config.threshold_bytes is None:  # a step that gains nothing from local workers (see threshold_bytes)
        return "local"
    return "dask" if input_bytes > config.threshold_bytes else "local"


def default_workers() -> int:
    return os.cpu_count() or 1
