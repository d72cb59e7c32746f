"""Which engine a command gets: explicit choices win, auto weighs the input, bad options name themselves."""

from __future__ import annotations

import pytest

from churnops.errors import InvalidInputError
from churnops.parallel.choice import ADDRESS_ENV, AUTO_THRESHOLD_BYTES, EngineConfig, resolve


@pytest.mark.parametrize(
    ("config", "size", "expected"),
    [
        (EngineConfig("auto"), AUTO_THRESHOLD_BYTES, "local"),  # at the threshold: not worth starting workers
        (EngineConfig("auto"), AUTO_THRESHOLD_BYTES + 1, "dask"),
        (EngineConfig("auto", threshold_bytes=0), 1, "dask"),
        (EngineConfig("auto", address="tcp://scheduler:8786"), 0, "dask"),  # a cluster was given: use it
        (EngineConfig("local"), 10**12, "local"),
        (EngineConfig("dask"), 0, "dask"),
        (EngineConfig("auto", threshold_bytes=None), 10**12, "local"),  # size never decides (batch scoring)
        (EngineConfig("auto", address="tcp://scheduler:8786", threshold_bytes=None), 0, "dask"),
    ],
)
def test_resolve_chooses_by_option_address_and_size(config: EngineConfig, size: int, expected: str) -> None:
    assert resolve(config, size) == expected


def test_the_scheduler_address_falls_back_to_the_one_a_daskjob_sets() -> None:
    env = {ADDRESS_ENV: "tcp://job-scheduler:8786"}
    assert EngineConfig.from_options("auto", None, None, None, env).address == "tcp://job-scheduler:8786"
    assert EngineConfig.from_options("auto", "tcp://other:8786", None, None, env).address == "tcp://other:8786"
    assert EngineConfig.from_options("local", None, None, None, env).address is None  # local means this process
    assert EngineConfig.from_options("auto", None, None, 1.5, {}).threshold_bytes == int(1.5 * 2**20)
    assert EngineConfig.from_options("auto", None, None, float("inf"), {}).threshold_bytes is None


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"kind": "ray"}, "--engine"),
        ({"kind": "dask", "workers": 0}, "--engine-workers"),
        ({"kind": "auto", "threshold_bytes": -1}, "--engine-threshold-mb"),
        ({"kind": "local", "address": "tcp://scheduler:8786"}, "--engine-address"),
    ],
)
def test_bad_engine_options_name_the_option(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(InvalidInputError) as caught:
        EngineConfig(**kwargs)  # type: ignore[arg-type]
    assert caught.value.field == field
