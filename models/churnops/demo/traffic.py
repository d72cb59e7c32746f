"""Synthetic customer traffic for the demo: a few threads asking the ``churn`` endpoint about customers.

Each worker keeps one HTTP connection and paces itself to its share of the
target rate, picking customers at random from the current pool (the served
population changes when the demo shifts it); a request asks about one
customer, or about a list of them once the demo sets a batch size (a
customer-success tool scoring its account lists). Answers are counted by status
and by the version that scored them, so the story can say what the canary saw.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx


@dataclass
class TrafficStats:
    sent: int = 0
    predictions: int = 0  # customers scored in answered requests (several per request once batched)
    by_status: Counter[int] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)
    failures: int = 0  # connection errors and timeouts
    first_error: dict[str, str] = field(default_factory=dict)  # status (or "no answer") -> the first message seen

    def line(self) -> str:
        versions = ", ".join(f"v{v}: {n:,}" for v, n in sorted(self.by_version.items()))
        errors = {str(s): n for s, n in sorted(self.by_status.items()) if s >= 400}
        if self.failures:
            errors["no answer"] = self.failures
        detail = f" ({', '.join(f'{k}: {n:,}' + self._why(k) for k, n in errors.items())})" if errors else ""
        scored = f", {self.predictions:,} predictions" if self.predictions != self.sent else ""
        return f"{self.sent:,} requests ({versions or 'none scored'}){scored}, {sum(errors.values()):,} errors{detail}"

    def summary(self) -> dict[str, Any]:
        return {
            "sent": self.sent,
            "predictions": self.predictions,
            "by_version": dict(self.by_version),
            "errors": {str(code): n for code, n in self.by_status.items() if code >= 400},
            "no_answer": self.failures,
            "first_error": self.first_error,
        }

    def _why(self, status: str) -> str:
        message = self.first_error.get(status)
        return f' e.g. "{message}"' if message else ""


class Traffic:
    """Background traffic at ``rate`` requests per second over ``workers`` connections."""

    def __init__(self, url: str, token: str, customers: Sequence[int], rate: float, workers: int = 2, seed: int = 0) -> None:
        self.url = url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.rate = rate
        self.batch = 1
        self.workers = workers
        self.stats = TrafficStats()
        self._customers = list(customers)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._rng = random.Random(seed)

    def set_customers(self, customers: Sequence[int]) -> None:
        with self._lock:
            self._customers = list(customers)

    def set_rate(self, rate: float) -> None:
        self.rate = rate

    def set_batch(self, customers: int) -> None:
        """Customers per request from now on (at the same request rate)."""
        self.batch = max(int(customers), 1)

    def start(self) -> Traffic:
        for i in range(self.workers):
            thread = threading.Thread(target=self._work, name=f"traffic-{i}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)
        self._threads.clear()

    def _pick(self, n: int) -> list[int]:
        with self._lock:
            return self._rng.sample(self._customers, min(n, len(self._customers)))

    def _work(self) -> None:
        with httpx.Client(base_url=self.url, headers=self.headers, timeout=10) as client:
            next_at = time.monotonic()
            while not self._stop.is_set():
                pause = next_at - time.monotonic()
                if pause > 0 and self._stop.wait(pause):
                    return
                next_at = max(next_at + self.workers / max(self.rate, 0.1), time.monotonic() - 1.0)
                self._ask(client, self._pick(self.batch))

    def _ask(self, client: httpx.Client, customers: list[int]) -> None:
        instances = [{"customer_id": c} for c in customers]
        try:
            r = client.post("/v1/models/churn:predict", json={"instances": instances, "parameters": {"top_k": 3}})
        except httpx.HTTPError as e:
            with self._lock:
                self.stats.sent += 1
                self.stats.failures += 1
                self.stats.first_error.setdefault("no answer", f"{type(e).__name__}: {e}"[:160])
            return
        version = r.json()["predictions"][0]["model_version"] if r.status_code == 200 else None
        with self._lock:
            self.stats.sent += 1
            self.stats.by_status[r.status_code] += 1
            if version is not None:
                self.stats.by_version[str(version)] += 1
                self.stats.predictions += len(customers)
            elif r.status_code >= 400:
                self.stats.first_error.setdefault(str(r.status_code), error_message(r))


def error_message(response: httpx.Response) -> str:
    """The ``error`` field of an error answer (KServe's and ours), else the start of its body."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:160]
    return str(body.get("error", body) if isinstance(body, dict) else body)[:160]
