"""The embedded mode's monitoring page: ``churnops monitor serve``.

On one machine there is no Prometheus or Grafana, yet the questions are the
same: what does the model score, do its inputs still look like training,
how well does it do (measured where outcomes arrived, estimated before),
what is at stake for the business, and is it fair across segments. This
module answers them from the prediction log (and the labels under
``<data-dir>/labels/``, see ``jobs``) with the same statistics as the window
job, as one JSON document (``/api/summary``) that a static page
(``page/index.html``, ``page.js``, ``page.css``: no CDN, plots drawn as SVG in
the browser) polls every two seconds.

Work per refresh is bounded: the summary covers the latest ``max_rows``
predictions of the model, read from the shortest look-back window (an hour,
a day, a week, ...) that holds them, and is computed at most once per
``refresh_s`` whatever the number of open pages (a lock, and a cache of the
last document). Registry facts (threshold, aliases, reference profile) change
rarely and are cached for ``facts_ttl_s``.

The server is the standard library's HTTP server bound to loopback by
default: a local tool for one person, with a content security policy that
lets the page load nothing but its own files. Connections are served by a
fixed pool of threads (a thread per connection let 300 idle sockets make 300
threads); a socket that sends nothing for ``IDLE_TIMEOUT_S`` is dropped, and
connections beyond the pool and its short queue are closed at once.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from importlib import resources
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd

from churnops.errors import ChurnOpsError
from churnops.monitoring.business import BAND_ORDER, business_report
from churnops.monitoring.drift import DriftPolicy, detect_drift
from churnops.monitoring.fairness import fairness_report
from churnops.monitoring.labels import label_files, labels_for, read_labels
from churnops.monitoring.performance import join_labels, performance_report
from churnops.monitoring.predlog.records import LogStore
from churnops.monitoring.profile import SCORE_EDGES, ReferenceProfile
from churnops.monitoring.windows import OutcomeSettings, Window, check_profile, log_features, prepare

log = logging.getLogger(__name__)

PAGE_FORMAT = "churnops.monitoring_page"
LOOKBACKS = (
    dt.timedelta(hours=1),
    dt.timedelta(days=1),
    dt.timedelta(days=7),
    dt.timedelta(days=30),
    dt.timedelta(days=365),
)
METRICS = ("auc", "pr_auc", "precision", "recall", "brier", "ece")
STATIC = {"/": "index.html", "/index.html": "index.html", "/page.js": "page.js", "/page.css": "page.css"}
CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".css": "text/css; charset=utf-8"}
# The page loads its own files and talks to its own API, nothing else (no CDN, no network at run time).
SCORE_LABELS = [f"<= {SCORE_EDGES[0]:g}", *(f"{a:g}-{b:g}" for a, b in itertools.pairwise(SCORE_EDGES)), f"> {SCORE_EDGES[-1]:g}"]
CSP = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'"


@dataclass(frozen=True)
class VersionFacts:
    """What the registry knows about a model version that the page needs."""

    version: str
    threshold: float
    aliases: tuple[str, ...] = ()
    profile: ReferenceProfile | None = None
    reference: Mapping[str, float] = field(default_factory=dict)  # holdout figures by metric name (auc, pr_auc, ...)


class Catalog(Protocol):
    """The registry as the page sees it (the CLI implements it with MLflow; tests may pass their own)."""

    def champion(self) -> str | None: ...

    def facts(self, version: str) -> VersionFacts | None: ...


@dataclass
class CachedCatalog:
    """A catalog whose answers are kept for ``ttl_s``: registry calls cost milliseconds each, refreshes come every second."""

    inner: Catalog
    ttl_s: float = 30.0
    clock: Callable[[], float] = time.monotonic
    _facts: dict[str, tuple[float, VersionFacts | None]] = field(default_factory=dict)
    _champion: tuple[float, str | None] | None = None

    def champion(self) -> str | None:
        now = self.clock()
        if self._champion is None or now - self._champion[0] >= self.ttl_s:
            self._champion = (now, self.inner.champion())
        return self._champion[1]

    def facts(self, version: str) -> VersionFacts | None:
        now = self.clock()
        cached = self._facts.get(version)
        if cached is None or now - cached[0] >= self.ttl_s:
            cached = (now, self.inner.facts(version))
            self._facts[version] = cached
        return cached[1]


@dataclass(frozen=True)
class PageSettings:
    model: str
    labels_dir: Path | None
    max_rows: int = 20_000
    refresh_s: float = 1.0
    lookbacks: tuple[dt.timedelta, ...] = LOOKBACKS
    outcomes: OutcomeSettings = field(default_factory=OutcomeSettings)
    policy: DriftPolicy = field(default_factory=DriftPolicy)


# --- reading (I/O) ------------------------------------------------------------------------------------------


def recent(store: LogStore, model: str, now: dt.datetime, max_rows: int, lookbacks: Sequence[dt.timedelta]) -> tuple[pd.DataFrame, Window]:
    """The latest ``max_rows`` predictions of ``model``: look-back windows of growing length, each reading only what the last did not."""
    end = now + dt.timedelta(minutes=1)  # clocks of writers on this machine may run a little ahead
    parts: list[pd.DataFrame] = []
    rows = 0
    newer = end
    start = end
    for back in lookbacks:
        start = min(now - back, newer)
        part = store.read_window(start, newer, model=model)
        if len(part):
            parts.append(part)
            rows += len(part)
        newer = start
        if rows >= max_rows:
            break
    frames = list(reversed(parts))  # oldest first: each part is sorted by time
    frame = pd.concat(frames, ignore_index=True) if len(frames) > 1 else (frames[0] if frames else pd.DataFrame())
    if len(frame) > max_rows:
        frame = frame.iloc[len(frame) - max_rows :]  # keep the latest
    return frame.reset_index(drop=True), Window(start, end)


@dataclass
class LabelsCache:
    """The labels directory, re-read only when a file in it changed."""

    directory: Path | None
    _key: tuple[tuple[str, int, int], ...] | None = None
    _frame: pd.DataFrame | None = None

    def get(self) -> tuple[pd.DataFrame | None, int]:
        if self.directory is None:
            return None, 0
        files = label_files(self.directory)
        key = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in files)
        if key != self._key:
            self._frame = pd.concat([read_labels(p) for p in files], ignore_index=True) if files else None
            self._key = key
        return self._frame, len(files)


# --- the summary (pure, given its inputs) ---------------------------------------------------------------------


def _f(x: Any) -> float | None:
    """A JSON number, or None for a value that is missing or not finite (never a silent zero)."""
    if x is None:
        return None
    v = float(x)
    return v if np.isfinite(v) else None


def score_distribution(scores: np.ndarray, bands: pd.Series, profile: ReferenceProfile | None) -> dict[str, Any]:
    """Shares of the scores on the predictor's score buckets, the reference's beside them, and the risk bands."""
    edges = np.asarray(SCORE_EDGES)
    counts = np.bincount(np.searchsorted(edges, scores, side="left"), minlength=edges.size + 1)  # right-closed, as the profile's
    band_counts = bands.astype(str).value_counts()
    return {
        "labels": SCORE_LABELS,
        "window": (counts / max(scores.size, 1)).tolist(),
        "reference": None if profile is None else profile.score.proportions.tolist(),
        "mean": _f(scores.mean()) if scores.size else None,
        "bands": {b: int(band_counts.get(b, 0)) for b in BAND_ORDER},
    }


def drift_summary(frame: pd.DataFrame, profile: ReferenceProfile, policy: DriftPolicy) -> dict[str, Any]:
    result = detect_drift(profile, frame[list(profile.names)], frame["score"].to_numpy(dtype=float), list(profile.names), policy)
    features = sorted(result.features, key=lambda f: (not f.drifted, -(f.psi if f.psi is not None else -1.0)))
    return {
        "verdict": result.drift_detected,
        "reasons": list(result.reasons),
        "drifted_share": _f(result.drifted_share),
        "drifted": len(result.drifted_features),
        "tested": result.tested,
        "score_psi": _f(result.score.psi),
        "score_p_value": _f(result.score.p_value),
        "psi_floor": policy.psi_floor,
        "features": [
            {
                "feature": f.feature,
                "kind": f.kind,
                "psi": _f(f.psi),
                "p_value": _f(f.p_value),
                "q_value": _f(f.q_value),
                "drifted": f.drifted,
                "missing_rate": _f(f.missing_rate),
                "reason": f.reason,
            }
            for f in features
        ],
    }


def performance_summary(frame: pd.DataFrame, labels: pd.DataFrame | None, facts: VersionFacts, horizon_days: float) -> dict[str, Any]:
    report = performance_report(frame, labels, {facts.version: facts.threshold}, horizon_days=horizon_days, by_segment=False)
    coverage = report.coverage[0]
    rows = []
    for metric in METRICS:
        measured = report.get(metric, "measured", facts.version)
        estimated = next((f for f in report.figures if f.metric == metric and f.source == "estimated"), None)
        rows.append(
            {
                "metric": metric,
                "measured": _f(measured.value),
                "labelled": measured.rows,
                "estimated": None if estimated is None else _f(estimated.value),
                "reference": _f(facts.reference.get(metric)),
                "note": measured.note,
            }
        )
    return {
        "coverage": {
            "predictions": coverage.predictions,
            "labelled": coverage.labelled,
            "pending": coverage.pending,
            "coverage": _f(coverage.coverage),
        },
        "metrics": rows,
    }


def business_summary(frame: pd.DataFrame, facts: VersionFacts, settings: OutcomeSettings) -> dict[str, Any]:
    report = business_report(
        frame, {facts.version: facts.threshold}, settings.campaign, by_segment=False, business_columns=settings.business_columns
    )

    def value(metric: str, source: str, band: str = "all") -> float | None:
        for f in report.figures:
            if (f.metric, f.source, f.band, f.period) == (metric, source, band, None):
                return _f(f.value)
        return None

    bands = [b for b in BAND_ORDER if any(f.band == b for f in report.figures)]
    return {
        "churn_rate": {"measured": value("churn_rate", "measured"), "estimated": value("churn_rate", "estimated")},
        "revenue_at_risk": {"estimated": value("revenue_at_risk", "estimated")},
        "revenue_at_risk_by_band": [{"band": b, "estimated": value("revenue_at_risk", "estimated", b)} for b in bands],
        "net_savings": {"measured": value("net_savings", "measured"), "estimated": value("net_savings", "estimated")},
        "roi": {"measured": value("roi", "measured"), "estimated": value("roi", "estimated")},
        "satisfaction": [{"band": b, "csat": value("csat", "measured", b), "nps": value("nps", "measured", b)} for b in ("all", *bands)],
    }


def fairness_summary(frame: pd.DataFrame, facts: VersionFacts, settings: OutcomeSettings) -> dict[str, Any]:
    results = fairness_report(frame, {facts.version: facts.threshold}, settings.fairness)
    live = next(r for r in results if r.population == "predictions")
    labelled = next((r for r in results if r.population == "labelled"), None)
    recall = {s.segment: s.recall for s in labelled.segments} if labelled is not None else {}
    return {
        "max_gap": live.max_gap,
        "positive_rate_gap": _f(live.positive_rate_gap),
        "recall_gap": None if labelled is None else _f(labelled.recall_gap),
        "breached": sorted({*live.breached, *(labelled.breached if labelled is not None else ())}),
        "segments": [
            {"segment": s.segment, "rows": s.rows, "positive_rate": _f(s.positive_rate), "recall": _f(recall.get(s.segment))}
            for s in live.segments
        ],
        "notes": list(live.notes) + (list(labelled.notes) if labelled is not None else []),
    }


def version_summary(frame: pd.DataFrame, facts: VersionFacts | None, labels: pd.DataFrame | None, settings: PageSettings) -> dict[str, Any]:
    """Everything the page shows for one version; a part that cannot be computed is None with a note, the rest still shows."""
    version = str(frame["model_version"].iloc[0])
    scores = frame["score"].to_numpy(dtype=float)
    notes: list[str] = []
    ok = np.isfinite(scores) & (scores >= 0) & (scores <= 1)
    if not ok.all():
        notes.append(f"{int((~ok).sum())} logged score(s) are NaN or outside [0, 1] and are left out")
        frame, scores = frame.loc[ok].reset_index(drop=True), scores[ok]
    out: dict[str, Any] = {
        "version": version,
        "aliases": list(facts.aliases) if facts else [],
        "threshold": facts.threshold if facts else None,
        "rows": len(frame),
        "first": _iso(frame["time"].min()) if len(frame) else None,
        "last": _iso(frame["time"].max()) if len(frame) else None,
        "score": score_distribution(scores, frame["risk_band"], facts.profile if facts else None),
        "drift": None,
        "performance": None,
        "business": None,
        "fairness": None,
        "notes": notes,
    }
    if facts is None:
        notes.append(f"v{version} is not in the registry: no threshold and no reference profile, so only the scores are shown")
        return out
    if len(frame) == 0:
        return out
    profile = facts.profile
    if profile is None:
        notes.append(f"v{version} has no reference profile (monitoring/reference_profile.json on its training run): no drift figures")
    else:
        out["drift"] = _part(notes, "drift", lambda: _drift(frame, profile, settings))
    data, prep_notes = prepare(frame, settings.outcomes)
    notes += prep_notes
    if labels is not None:
        data = join_labels(data, labels, horizon_days=settings.outcomes.horizon_days).frame
    out["performance"] = _part(notes, "performance", lambda: performance_summary(frame, labels, facts, settings.outcomes.horizon_days))
    out["business"] = _part(notes, "business", lambda: business_summary(data, facts, settings.outcomes))
    if "segment" in data.columns:
        out["fairness"] = _part(notes, "fairness", lambda: fairness_summary(data, facts, settings.outcomes))
    return out


def _drift(frame: pd.DataFrame, profile: ReferenceProfile, settings: PageSettings) -> dict[str, Any]:
    check_profile(profile, log_features(frame), settings.model, str(frame["model_version"].iloc[0]))
    return drift_summary(frame, profile, settings.policy)


def _part(notes: list[str], name: str, compute: Callable[[], dict[str, Any] | None]) -> dict[str, Any] | None:
    """One part of a version's summary; its failure becomes a note so the rest of the page still shows."""
    try:
        return compute()
    except ChurnOpsError as e:
        notes.append(f"{name}: {e}")
    return None


def _iso(t: Any) -> str:
    return str(pd.Timestamp(t).isoformat())


def _version_order(versions: Sequence[str], champion: str | None) -> list[str]:
    def key(v: str) -> tuple[int, int, str]:
        return (0 if v == champion else 1, -int(v) if v.isdigit() else 0, v)

    return sorted(versions, key=key)


def build_summary(
    frame: pd.DataFrame, window: Window, labels: pd.DataFrame | None, label_file_count: int, catalog: Catalog, settings: PageSettings
) -> dict[str, Any]:
    """The page's document: one entry per model version in the sample, the champion first."""
    champion = catalog.champion()
    if labels is not None:
        labels, _ = labels_for(labels, window, settings.outcomes.horizon_days)
    versions = frame["model_version"].astype(str) if len(frame) else pd.Series([], dtype=str)
    entries = []
    for version in _version_order(sorted(versions.unique().tolist()), champion):
        rows = frame.loc[(versions == version).to_numpy()].reset_index(drop=True)
        entries.append(version_summary(rows, catalog.facts(version), labels, settings))
    return {
        "format": PAGE_FORMAT,
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "model": settings.model,
        "champion": champion,
        "window": {"start": window.start.isoformat(), "end": window.end.isoformat(), "rows": len(frame), "max_rows": settings.max_rows},
        "labels": {"files": label_file_count, "rows": 0 if labels is None else len(labels)},
        "versions": entries,
    }


# --- the cache and the server (I/O) -------------------------------------------------------------------------


@dataclass
class SummarySource:
    """Computes the summary at most once per ``settings.refresh_s``; concurrent requests share one computation."""

    store: LogStore
    catalog: Catalog
    settings: PageSettings
    clock: Callable[[], float] = time.monotonic
    now: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _doc: bytes | None = None
    _at: float = float("-inf")
    _labels: LabelsCache | None = None

    def get(self) -> bytes:
        with self._lock:
            if self._doc is None or self.clock() - self._at >= self.settings.refresh_s:
                self._doc = json.dumps(self.compute(), allow_nan=False).encode()
                self._at = self.clock()
            return self._doc

    def compute(self) -> dict[str, Any]:
        if self._labels is None:
            self._labels = LabelsCache(self.settings.labels_dir)
        frame, window = recent(self.store, self.settings.model, self.now(), self.settings.max_rows, self.settings.lookbacks)
        labels, files = self._labels.get()
        return build_summary(frame, window, labels, files, self.catalog, self.settings)


def static_file(name: str) -> bytes:
    return (resources.files("churnops.monitoring") / "page" / name).read_bytes()


IDLE_TIMEOUT_S = 10.0  # a connection that sends nothing for this long is closed (its thread goes back to the pool)


def make_handler(source: SummarySource) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "churnops-monitor"
        timeout = IDLE_TIMEOUT_S

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/api/summary":
                try:
                    self._send(HTTPStatus.OK, source.get(), "application/json")
                except ChurnOpsError as e:
                    self._send(HTTPStatus(e.status), json.dumps({"error": e.detail}).encode(), "application/json")
            elif path == "/healthz":
                self._send(HTTPStatus.OK, b"ok\n", "text/plain; charset=utf-8")
            elif path in STATIC:
                name = STATIC[path]
                self._send(HTTPStatus.OK, static_file(name), CONTENT_TYPES[Path(name).suffix])
            else:
                self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain; charset=utf-8")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("Content-Security-Policy", CSP)
            self.send_header("X-Content-Type-Options", "nosniff")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler


class PooledHTTPServer(HTTPServer):
    """Connections served by ``workers`` threads; ones beyond the pool and ``queued`` waiting are closed at once."""

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler], workers: int = 8, queued: int = 32) -> None:
        super().__init__(address, handler)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="monitor-page")
        self.slots = threading.BoundedSemaphore(workers + queued)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)  # full: the client retries (the page polls) rather than the server growing
            return
        self.pool.submit(self._serve, request, client_address)

    def _serve(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            self.slots.release()

    def server_close(self) -> None:
        super().server_close()
        self.pool.shutdown(wait=False, cancel_futures=True)


def make_server(source: SummarySource, host: str, port: int, workers: int = 8, idle_timeout_s: float = IDLE_TIMEOUT_S) -> PooledHTTPServer:
    handler = make_handler(source)
    handler.timeout = idle_timeout_s
    return PooledHTTPServer((host, port), handler, workers=workers)
