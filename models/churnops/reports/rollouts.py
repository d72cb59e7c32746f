"""The rollout timeline read for people: canary weight over time, checks with their figures, decisions, retraining runs.

The runner appends every decision to ``timeline.jsonl`` (``churnops.rollout.store``)
in a few kinds: ``event`` (the operator's events: Deployed, CanaryStarted,
StepAdvanced, CheckFailed, Promoted, RolledBack, DriftDetected,
RetrainingTriggered, ...), ``check`` (a verdict with its figures), ``routing``
(the traffic split applied), ``run`` (a retraining run changed state) and
``evaluation`` (the retraining policy looked at the signals). This module
turns them into rows and series; it reads entries by key and tolerates keys
it does not know, so a runner that records more does not break a report.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from churnops.reports.plots import MARK_STYLE, Mark

CHECK_METRICS = ("error_rate", "latency_p95_ms", "score_psi", "auc_delta")
DECISIONS = ("Deployed", "CanaryStarted", "StepAdvanced", "CheckFailed", "Promoted", "RolledBack", "CanaryAborted", "CanaryReplaced")


def when(entry: Mapping[str, Any]) -> dt.datetime:
    return dt.datetime.fromtimestamp(float(entry.get("time") or 0.0), dt.UTC)


def stamp(t: float | dt.datetime | None) -> str:
    if t is None:
        return "n/a"
    moment = t if isinstance(t, dt.datetime) else dt.datetime.fromtimestamp(float(t), dt.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def of_kind(timeline: Iterable[Mapping[str, Any]], *kinds: str) -> list[Mapping[str, Any]]:
    return [e for e in timeline if e.get("kind") in kinds]


def weights(timeline: Sequence[Mapping[str, Any]]) -> list[tuple[dt.datetime, int]]:
    """Canary traffic percent after each change (routing applied and events), 0 while no canary runs."""
    out: list[tuple[dt.datetime, int]] = []
    for e in of_kind(timeline, "routing", "event"):
        if "weight" not in e:
            continue
        w = int(e.get("weight") or 0) if e.get("canary") else 0
        if not out or out[-1][1] != w:
            out.append((when(e), w))
    if out:
        out.append((when(timeline[-1]), out[-1][1]))  # hold the last weight to the end of the record
    return out


def check_points(timeline: Sequence[Mapping[str, Any]]) -> list[tuple[dt.datetime, int, str]]:
    return [(when(e), int(e.get("weight") or 0), str(e.get("outcome"))) for e in of_kind(timeline, "check")]


def canaries(timeline: Iterable[Mapping[str, Any]]) -> dict[int, str]:
    """The canary of each rollout id (entries after a promotion or rollback name the stable version only)."""
    out: dict[int, str] = {}
    for e in timeline:
        rid, canary = e.get("rolloutId"), e.get("canary")
        if isinstance(rid, int) and canary is not None:
            out.setdefault(rid, str(canary))
    return out


def subject(e: Mapping[str, Any], by_rollout: Mapping[int, str]) -> str | None:
    """The version an entry is about: the canary judged or decided on, the version deployed or monitored, a run's challenger."""
    kind, reason = e.get("kind"), e.get("reason")
    if kind == "run":
        return None if e.get("challenger") is None else str(e["challenger"])
    if kind == "evaluation":
        return None if e.get("version") is None else str(e["version"])
    if kind == "event" and reason in (
        "Deployed",
        "DriftDetected",
        "RetrainingTriggered",
        "RetrainingFinished",
        "RetrainingFailed",
        "Degraded",
    ):
        return None if e.get("stable") is None else str(e["stable"])
    if e.get("canary") is not None:
        return str(e["canary"])
    rid = e.get("rolloutId")
    if kind == "event" and isinstance(rid, int) and rid in by_rollout:
        return by_rollout[rid]
    return None if e.get("stable") is None else str(e["stable"])


def marks(timeline: Sequence[Mapping[str, Any]]) -> list[Mark]:
    """Promotions, rollbacks, first deployments and retraining runs as marks on a time axis."""
    by_rollout = canaries(timeline)
    out = []
    for e in of_kind(timeline, "event"):
        reason = str(e.get("reason"))
        if reason not in MARK_STYLE:
            continue
        version = subject(e, by_rollout)
        label = {"RetrainingTriggered": "retraining", "RetrainingFinished": "run done", "RetrainingFailed": "run failed"}.get(reason)
        out.append(Mark(when(e), reason, label or (f"{reason} v{version}" if version else reason)))
    return out


def promoted_versions(timeline: Sequence[Mapping[str, Any]]) -> list[str]:
    """Versions deployed first or promoted, in order."""
    by_rollout = canaries(timeline)
    out = [subject(e, by_rollout) for e in of_kind(timeline, "event") if e.get("reason") in ("Deployed", "Promoted")]
    return list(dict.fromkeys(v for v in out if v is not None))


def _metric(figures: Mapping[str, Any], name: str) -> Mapping[str, Any]:
    value = figures.get(name)
    return value if isinstance(value, Mapping) else {}


def check_row(e: Mapping[str, Any]) -> list[object]:
    """A check as a table row: when, versions, weight, outcome, samples, each metric canary/stable, failed checks, reason."""
    f = e.get("figures") if isinstance(e.get("figures"), Mapping) else {}
    assert isinstance(f, Mapping)
    row: list[object] = [stamp(e.get("time")), e.get("canary"), e.get("stable"), e.get("weight"), e.get("outcome"), f.get("samples")]
    for name in CHECK_METRICS:
        m = _metric(f, name)
        row.append(
            f"{m.get('outcome', 'n/a')}: {_num(m.get('canary'))} vs {_num(m.get('stable'))} (limit {_num(m.get('limit'))})" if m else "n/a"
        )
    return [*row, e.get("failedChecks"), e.get("reason")]


CHECK_HEADERS = ("time", "canary", "stable", "weight %", "outcome", "samples", *CHECK_METRICS, "failed checks", "reason")


def _num(x: object) -> str:
    return f"{x:.4g}" if isinstance(x, int | float) and not isinstance(x, bool) else "n/a"


def event_row(e: Mapping[str, Any]) -> list[object]:
    return [stamp(e.get("time")), e.get("type"), e.get("reason"), e.get("stable"), e.get("canary"), e.get("weight"), e.get("message")]


EVENT_HEADERS = ("time", "type", "reason", "stable", "canary", "weight %", "message")


def run_row(e: Mapping[str, Any]) -> list[object]:
    return [stamp(e.get("time")), e.get("run"), e.get("state"), e.get("challenger"), e.get("detail")]


RUN_HEADERS = ("time", "run", "state", "challenger", "detail")


def evaluation_row(e: Mapping[str, Any]) -> list[object]:
    s = e.get("signals") if isinstance(e.get("signals"), Mapping) else {}
    assert isinstance(s, Mapping)
    return [
        stamp(e.get("time")),
        e.get("version"),
        s.get("driftDetected"),
        s.get("driftedShare"),
        s.get("measuredAUC"),
        s.get("estimatedAUC"),
        s.get("referenceAUC"),
        s.get("labelled"),
        e.get("breaches"),
        e.get("triggered"),
        e.get("reason"),
    ]


EVALUATION_HEADERS = (
    "time",
    "version",
    "drift",
    "drifted share",
    "measured AUC",
    "estimated AUC",
    "reference AUC",
    "labelled",
    "breaches",
    "retraining",
    "reason",
)


def concerning(timeline: Sequence[Mapping[str, Any]], version: str) -> list[Mapping[str, Any]]:
    """Every entry about ``version``: as its subject, or as a party of a check or decision (the stable version a canary was judged against)."""
    by_rollout = canaries(timeline)
    parties = ("canary", "stable", "version", "challenger")
    return [
        e for e in timeline if subject(e, by_rollout) == version or any(str(e.get(k)) == version for k in parties if e.get(k) is not None)
    ]


def doc(e: Mapping[str, Any]) -> dict[str, Any]:
    """A timeline entry for JSON, with its time also in ISO form."""
    return {**e, "at": when(e).isoformat()}
