"""Waiting for something a real process does, with a generous deadline instead of a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest


def poll(what: str, check: Callable[[], Any], deadline_s: float = 120.0, every_s: float = 0.3) -> Any:
    """``check()`` until it returns something truthy; fails with its last answer after a generous deadline."""
    end = time.monotonic() + deadline_s
    last: Any = None
    while time.monotonic() < end:
        last = check()
        if last:
            return last
        time.sleep(every_s)
    pytest.fail(f"{what} did not happen within {deadline_s:g} s; last answer: {last!r}")
