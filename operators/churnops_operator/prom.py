"""Prometheus I/O: runs the contract's named queries over the HTTP query API and returns their raw answers.

Nothing here interprets a figure: ``churnops_contract.rollout.observe`` turns
the answers into observations for both drivers. A failed request (an error
status, a timeout, a body that is not JSON) is a failed answer with a note,
never an exception: the analysis reads it as missing evidence.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence

from churnops_contract.rollout.observe import Answer, failed, parse_answer
from churnops_operator.http import ExternalError, JsonClient


class Prometheus:
    """``concurrency`` bounds the queries in flight for the whole process (many resources checking at once must not
    flood Prometheus); ``per_call`` those of one ``answers`` call, so that one resource whose queries hang holds at
    most that many slots until its timeout and the other resources' checks go on."""

    def __init__(self, base_url: str, timeout_s: float = 5.0, concurrency: int = 32, per_call: int = 8) -> None:
        self.http = JsonClient("prometheus", base_url, timeout_s, connections=concurrency)
        self.slots = asyncio.Semaphore(concurrency)
        self.per_call = per_call

    async def answer(self, expr: str, at: float, keys: Sequence[str] = ("le",)) -> Answer:
        async with self.slots:
            try:
                body = await self.http.request("GET", "/api/v1/query", params={"query": expr, "time": f"{at:.3f}"})
            except ExternalError as e:
                return failed(e.message[:200] if e.status else str(e)[:200])
        return parse_answer(body, keys)

    async def answers(self, queries: Mapping[str, str], at: float) -> dict[str, Answer]:
        """Every named query at once, ``per_call`` at a time (a hanging Prometheus costs one timeout per
        ``per_call`` queries, not one per query)."""
        mine = asyncio.Semaphore(self.per_call)

        async def one(expr: str) -> Answer:
            async with mine:
                return await self.answer(expr, at)

        names = list(queries)
        found = await asyncio.gather(*(one(queries[n]) for n in names))
        return dict(zip(names, found, strict=True))

    async def aclose(self) -> None:
        await self.http.aclose()
