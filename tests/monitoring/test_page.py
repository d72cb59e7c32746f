"""The local monitoring page (``churnops monitor serve``) in headless Chromium.

A real ``churnops monitor serve`` process reads a real Parquet prediction log
and labels directory and a real MLflow registry; Debian's Chromium, driven
by Selenium through Debian's chromedriver, loads the page. The page renders
every part (scores, drift, measured vs estimated performance, business,
fairness) for the champion and the challenger, every figure it shows equals
the API's, it loads nothing from anywhere but its own server, and it changes
when new predictions reach the log while it is open.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By

from churnops.monitoring.page import LOOKBACKS, recent
from churnops.monitoring.predlog.parquet import ParquetStore
from churnops.processes import free_port, wait_for_http
from tests.monitoring.monitor_fixtures import (
    Monitored,
    Traffic,
    monitored_fixture,  # noqa: F401 - fixtures used by name
    traffic_fixture,  # noqa: F401
    write_predictions,
)
from tests.support import groups
from tests.support.browser import chromium
from tests.support.waiting import poll

pytestmark = groups.MONITORED

CHAMPION_ROWS, CHALLENGER_ROWS, MORE_ROWS = 400, 300, 250


@dataclass(frozen=True)
class Page:
    url: str
    data_dir: Path
    proc: subprocess.Popen[bytes]

    def api(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}/api/summary", timeout=30) as r:
            doc: dict[str, Any] = json.loads(r.read())
        return doc


def one_per_customer(frame: pd.DataFrame) -> pd.DataFrame:
    """One snapshot per customer, so that each outcome labels exactly one prediction."""
    return frame.drop_duplicates("customer_id").reset_index(drop=True)


def labels_for_champion(rows: pd.DataFrame, now: dt.datetime, path: Path) -> None:
    """Outcomes of half the champion's customers: observation windows that started 20 days ago and hold the predictions."""
    half = rows.iloc[: len(rows) // 2]
    start = (now - dt.timedelta(days=20)).isoformat()
    pd.DataFrame({"customer_id": half["customer_id"], "event_timestamp": start, "churned_30d": half["churned_30d"]}).to_parquet(path)


@pytest.fixture(name="page")
def page_fixture(monitored: Monitored, traffic: Traffic, tmp_path: Path) -> Iterator[Page]:
    data_dir = tmp_path / "data"
    now = dt.datetime.now(dt.UTC)
    champion, challenger = (monitored.models[v] for v in (monitored.champion, monitored.challenger))
    log = data_dir / "predictions"
    champion_rows = one_per_customer(traffic.normal).head(CHAMPION_ROWS)
    write_predictions(log, monitored.model_name, monitored.champion, champion, champion_rows, (now - dt.timedelta(minutes=10)).timestamp())
    others = ~traffic.drifted["customer_id"].isin(one_per_customer(traffic.normal)["customer_id"].head(CHAMPION_ROWS + MORE_ROWS))
    challenger_rows = one_per_customer(traffic.drifted[others]).head(CHALLENGER_ROWS)  # customers without outcomes yet
    write_predictions(
        log, monitored.model_name, monitored.challenger, challenger, challenger_rows, (now - dt.timedelta(minutes=5)).timestamp()
    )
    (data_dir / "labels").mkdir()
    labels_for_champion(champion_rows, now, data_dir / "labels" / "outcomes.parquet")
    page = start_page(data_dir, monitored, tmp_path)
    yield page
    stop(page.proc)


def start_page(data_dir: Path, monitored: Monitored, tmp_path: Path) -> Page:
    port = free_port()
    cmd = [str(Path(sys.executable).parent / "churnops"), "--data-dir", str(data_dir), "monitor", "serve", "--port", str(port)]
    cmd += ["--tracking-uri", monitored.cfg.tracking_uri]
    log = tmp_path / "page.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{url}/healthz", proc, 120)
    except RuntimeError as e:
        stop(proc)
        pytest.fail(f"the monitoring page did not start ({e}):\n{log.read_text()[-3000:]}")
    return Page(url, data_dir, proc)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)


@pytest.fixture(name="browser")
def browser_fixture(tmp_path: Path) -> Iterator[webdriver.Chrome]:
    with chromium(tmp_path / "chromium-profile") as driver:
        yield driver


# --- what the page shows against what the API says --------------------------------------------------------------


def shown(value: Any) -> str:
    """A number as page.js shows it: integers whole, others with four decimals rounded like Number.prototype.toFixed."""
    if value is None:
        return "\u2013"
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    if float(value).is_integer():
        return str(int(value))
    # toFixed rounds the exact binary value, ties away from zero
    return str(Decimal(value).quantize(Decimal("0.0001"), rounding=ROUND_HALF_UP))


def at(doc: Any, path: str) -> Any:
    for part in path.split("."):
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc


FIGURES = "return Object.fromEntries([...document.querySelectorAll('[data-path]')].map(e => [e.dataset.path, e.textContent]))"


def figures(browser: webdriver.Chrome) -> dict[str, str]:
    """Every figure on the page by its place in the API document, read in one go (the page may redraw between calls)."""
    found: dict[str, str] = browser.execute_script(FIGURES)
    return found


def rows_shown(browser: webdriver.Chrome) -> str | None:
    return figures(browser).get("versions.0.rows")


def test_the_page_renders_every_part_and_its_figures_are_the_apis(page: Page, browser: webdriver.Chrome, monitored: Monitored) -> None:
    browser.get(page.url)
    poll("the page to render the first summary", lambda: rows_shown(browser))
    doc = page.api()
    assert [v["version"] for v in doc["versions"]] == [monitored.champion, monitored.challenger]  # the champion first
    champion, challenger = doc["versions"]
    assert champion["aliases"] == ["champion"] and "challenger" in challenger["aliases"]
    assert (champion["rows"], challenger["rows"], doc["window"]["rows"]) == (
        CHAMPION_ROWS,
        CHALLENGER_ROWS,
        CHAMPION_ROWS + CHALLENGER_ROWS,
    )

    # the test's formatting is the page's own (page.js's fmt), ties and integers included
    samples = [0.03125, -0.03125, 2.0, 7, None, 0.123449999, 1 / 3]
    assert browser.execute_script("return arguments[0].map(fmt)", samples) == [shown(v) for v in samples]
    on_page = figures(browser)
    assert len(on_page) > 100
    mismatched = {path: (text, shown(at(doc, path))) for path, text in on_page.items() if text != shown(at(doc, path))}
    assert mismatched == {}

    sections = browser.find_elements(By.CSS_SELECTOR, "section.version")
    assert [s.get_attribute("data-version") for s in sections] == [monitored.champion, monitored.challenger]
    for section in sections:
        titles = [h.text for h in section.find_elements(By.TAG_NAME, "h3")]
        assert titles == [
            "Score distribution",
            "Drift per feature",
            "Performance: measured vs estimated",
            "Business",
            "Fairness across segments",
        ]
        bars = section.find_elements(By.CSS_SELECTOR, "svg.score-chart rect.window")
        assert len(bars) == len(champion["score"]["window"])
        assert section.find_elements(By.CSS_SELECTOR, "svg.drift-chart rect.psi")

    # scores: the window's shares and the reference's; drift judged against the profile; the challenger saw drifted customers
    assert sum(champion["score"]["window"]) == pytest.approx(1.0) and sum(champion["score"]["reference"]) == pytest.approx(1.0)
    assert sum(champion["score"]["bands"].values()) == CHAMPION_ROWS
    assert champion["drift"]["verdict"] is False and challenger["drift"]["verdict"] is True
    assert "Drift detected" in sections[1].text and "No drift" in sections[0].text
    # measured where outcomes arrived (half the champion's customers), estimated everywhere, each labelled as such
    perf = {m["metric"]: m for m in champion["performance"]["metrics"]}
    assert champion["performance"]["coverage"]["labelled"] == CHAMPION_ROWS // 2
    assert champion["performance"]["coverage"]["pending"] == CHAMPION_ROWS - CHAMPION_ROWS // 2
    assert perf["auc"]["measured"] is not None and perf["auc"]["estimated"] is not None
    assert challenger["performance"]["coverage"]["labelled"] == 0
    assert all(m["measured"] is None and m["estimated"] is not None for m in challenger["performance"]["metrics"] if m["metric"] != "ece")
    assert "measured" in sections[0].text and "estimated" in sections[0].text
    assert champion["business"]["churn_rate"]["measured"] is not None and challenger["business"]["churn_rate"]["measured"] is None
    assert champion["business"]["revenue_at_risk"]["estimated"] > 0
    assert champion["fairness"]["positive_rate_gap"] is not None and champion["fairness"]["max_gap"] == 0.25

    # nothing comes from anywhere but the page's own server
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    assert resources and all(str(r).startswith(page.url) for r in resources), resources


def test_the_page_changes_when_new_predictions_arrive(
    page: Page, browser: webdriver.Chrome, monitored: Monitored, traffic: Traffic
) -> None:
    browser.get(page.url)
    assert poll("the page to render", lambda: rows_shown(browser)) == str(CHAMPION_ROWS)
    model = monitored.models[monitored.champion]
    more = one_per_customer(traffic.normal).iloc[CHAMPION_ROWS : CHAMPION_ROWS + MORE_ROWS]
    write_predictions(
        page.data_dir / "predictions", monitored.model_name, monitored.champion, model, more, dt.datetime.now(dt.UTC).timestamp()
    )
    # while the page stays open (no reload), its next refreshes pick the new predictions up
    poll("the open page to show the new predictions", lambda: rows_shown(browser) == str(CHAMPION_ROWS + MORE_ROWS), deadline_s=60)
    doc = page.api()
    assert doc["versions"][0]["rows"] == CHAMPION_ROWS + MORE_ROWS
    assert poll("the page's figures to settle on the API's", lambda: figures(browser).get("window.rows") == shown(doc["window"]["rows"]))


def test_an_empty_log_gives_an_empty_summary_and_a_page_that_says_so(
    monitored: Monitored, browser: webdriver.Chrome, tmp_path: Path
) -> None:
    page = start_page(tmp_path / "data", monitored, tmp_path)
    try:
        doc = page.api()
        assert doc["versions"] == [] and doc["window"]["rows"] == 0 and doc["champion"] == monitored.champion
        browser.get(page.url)
        body = poll("the page to render", lambda: browser.find_element(By.ID, "versions").text)
        assert "No prediction in the log yet" in body
        with urllib.request.urlopen(f"{page.url}/page.js", timeout=10) as r:
            assert "default-src 'none'" in r.headers["Content-Security-Policy"]
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"{page.url}/../../etc/passwd", timeout=10)
        assert missing.value.code == 404
    finally:
        stop(page.proc)


def test_each_refresh_reads_the_latest_predictions_only(monitored: Monitored, traffic: Traffic, tmp_path: Path) -> None:
    """The work per refresh is bounded: the newest ``max_rows`` predictions, from the shortest look-back that holds them."""
    now = dt.datetime.now(dt.UTC)
    model = monitored.models[monitored.champion]
    log = tmp_path / "predictions"
    ages = (dt.timedelta(days=3), dt.timedelta(hours=2), dt.timedelta(minutes=10))
    for i, age in enumerate(ages):
        rows = traffic.normal.iloc[i * 100 : (i + 1) * 100]
        write_predictions(log, monitored.model_name, monitored.champion, model, rows, (now - age).timestamp(), prefix=f"age{i}")
    store = ParquetStore(log)
    frame, window = recent(store, monitored.model_name, now, 150, LOOKBACKS)
    assert len(frame) == 150 and window.start == now - dt.timedelta(days=1)  # the 3-day-old predictions were not read
    assert frame["request_id"].str.startswith("age2").sum() == 100 and frame["request_id"].str.startswith("age1").sum() == 50
    assert frame["time"].is_monotonic_increasing
    everything, window = recent(store, monitored.model_name, now, 1_000, LOOKBACKS)
    assert len(everything) == 300 and window.start == now - LOOKBACKS[-1]
