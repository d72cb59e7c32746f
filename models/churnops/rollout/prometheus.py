"""The canary analysis's answers from a local Prometheus, with the operator's named queries.

Where a Prometheus scrapes the predictor (``--prometheus-url``), the runner
asks it what the operator asks it in a cluster
(``churnops_contract.queries``) and hands the raw answers to the same
observation builder (``churnops_contract.rollout.observe``). A failed,
malformed or timed-out answer is a failed ``Answer`` with a note, never an
exception: the analysis reads it as missing evidence.
"""

from __future__ import annotations

import json
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence

from churnops.errors import UnavailableError
from churnops.rollout import scraped as rm
from churnops_contract import metric_names as m
from churnops_contract.queries import by_version
from churnops_contract.rollout.observe import Answer, failed, parse_answer


class PrometheusMetrics:
    """A Prometheus HTTP API; ``counts_itself`` is False: windows are Prometheus' ``increase``, not the runner's snapshots."""

    counts_itself = False

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s

    def answer(self, expr: str, at: float, keys: Sequence[str] = ("le",)) -> Answer:
        query = urllib.parse.urlencode({"query": expr, "time": f"{at:.3f}"})
        try:
            with urllib.request.urlopen(f"{self.url}/api/v1/query?{query}", timeout=self.timeout_s) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:
            try:
                body = json.loads(e.read())
            except (OSError, ValueError):
                return failed(f"Prometheus at {self.url}: HTTP {e.code}")
        except (OSError, ValueError) as e:
            return failed(f"Prometheus at {self.url}: {e}")
        return parse_answer(body, keys)

    def answers(self, queries: Mapping[str, str], at: float) -> dict[str, Answer]:
        return {name: self.answer(expr, at) for name, expr in queries.items()}

    def scrape(self, model: str, now: float) -> rm.Scrape:
        """The served versions and the drift verdicts (no counters: the windows are queried)."""
        served = self.answer(f"{by_version(m.MODEL_INFO, model)} == 1", now, (m.LABEL_VERSION,))
        if served.values is None:
            raise UnavailableError(f"Prometheus at {self.url}: {served.note}", field="--prometheus-url")
        gauges = {}
        for name, kind in ((m.DRIFT_DETECTED, "drift_detected"), (m.DRIFTED_FEATURES_SHARE, "drifted_share")):
            for version, x in (self.answer(by_version(name, model), now, (m.LABEL_VERSION,)).values or {}).items():
                if math.isfinite(x):
                    gauges[rm.key(kind, version)] = x
        return rm.Scrape(now, {}, gauges, frozenset(served.values))
