"""Rate limiting over HTTP, on a server of its own whose bucket refills so slowly that timing cannot matter."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from churnops.layout import Layout
from tests.support import groups
from tests.support.serving import Registered, Server, start_server

pytestmark = groups.SERVING_MODELS


@pytest.fixture(scope="module")
def slow_bucket(served_layout: Layout, registered: Registered, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    # one token per 100 s after a burst of 3: the 4th request of a subject is refused however slow the machine
    srv = start_server(
        served_layout, registered.cfg.tracking_uri, ["champion"], tmp_path_factory.mktemp("limited"), ["--rate", "0.01", "--burst", "3"]
    )
    yield srv
    srv.stop()


def test_rate_limit_per_subject(slow_bucket: Server, customers: list[int]) -> None:
    body = {"instances": [{"customer_id": customers[0]}], "parameters": {"top_k": 0}}
    with slow_bucket.client("burst-tester") as c:
        statuses = [c.post("/v1/models/champion:predict", json=body) for _ in range(5)]
    assert [r.status_code for r in statuses] == [200, 200, 200, 429, 429]
    assert int(statuses[3].headers["retry-after"]) >= 60
    assert "rate limit for 'burst-tester'" in statuses[3].json()["error"]
    with slow_bucket.client("someone-else") as other:  # buckets are per subject
        assert other.post("/v1/models/champion:predict", json=body).status_code == 200
