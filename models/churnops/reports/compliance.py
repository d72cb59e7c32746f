"""The compliance report of one model version: the document an auditor asks for, generated from the records, never written by hand.

For a version (an alias, a number or a ``models:/`` URI) it collects, from
the registry, the prediction log, the labels, the rollout timelines and the
audit logs of one data directory:

- identity and lineage: the training run, the data it was trained on
  (dataset sha256, feature service, source, rows), its parameters and holdout
  metrics, and the registry's promotion and rollback tags;
- digests: the registered model file hashed *now* against the sha256
  recorded at registration (and on its run), without loading it;
- the training gates as applied, with their observed figures and limits;
- fairness at training (holdout, by segment) and live (every logged
  prediction; recall on the labelled ones), against the gate;
- every rollout decision that concerned the version, with its figures;
- the verification of every audit chain under ``audit/`` now: records
  checked, OK or the problems, and how many of the version's predictions
  each holds;
- the model card logged with the training run.

A piece that does not exist (no live labels yet, a version registered by a
pipeline that kept its evaluation elsewhere) is named as missing, and the
summary at the top says which checks passed, failed or could not be made.
"""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from churnops.errors import ChurnOpsError
from churnops.layout import Layout
from churnops.monitoring.fairness import FairnessConfig, fairness_report
from churnops.monitoring.performance import join_labels
from churnops.reports import html as h
from churnops.reports import rollouts
from churnops.reports import sources as src
from churnops.reports.output import ReportFiles, plain, write_report
from churnops.serving.audit_keys import PublicKeys, public_keys_for
from churnops.training import registry
from churnops.training.config import GateConfig
from churnops_contract import registry as names

REPORT_FORMAT = "churnops.compliance_report"
REPORT_VERSION = 1
SEGMENT = "segment"
REGISTRY_TAGS = (
    names.TAG_PROMOTED_AT,
    names.TAG_PROMOTION_REASON,
    names.TAG_REPLACED_AT,
    names.TAG_REPLACED_BY,
    names.TAG_ROLLED_BACK_AT,
    names.TAG_ROLLBACK_REASON,
)


@dataclass(frozen=True)
class ComplianceSettings:
    tracking_uri: str | None = None
    model_name: str = names.DEFAULT_MODEL_NAME
    horizon_days: float = 30.0
    gates: GateConfig = field(default_factory=GateConfig)
    audit_keys: PublicKeys | None = None  # default: the embedded key directory (or $CHURNOPS_AUDIT_PUBLIC_KEYS)


@dataclass
class Findings:
    """The verdict lines at the top of the report: each check passed (True), failed (False) or could not be made (None)."""

    checks: dict[str, bool | None] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)

    def note(self, missing: src.Missing | str | None) -> None:
        if missing is not None:
            self.missing.append(str(missing))


def _stamp(t: float | None) -> str:
    return rollouts.stamp(t)


# --- sections -------------------------------------------------------------------------------------------------


def lineage_section(mv: src.ModelVersion, evaluation: dict[str, Any] | None) -> h.Section:
    what = "The version, the training run that produced it, the data it was trained on and the registry's record of its promotions."
    lineage = dict(mv.run_tags)
    pairs: list[tuple[str, object]] = [
        ("registered model", mv.model),
        ("version", mv.version),
        ("aliases now", ", ".join(mv.aliases) or "none"),
        ("registered at", _stamp(mv.created)),
        ("training run", mv.run_id or "none"),
        ("threshold", mv.threshold),
        *((f"lineage: {k}", v) for k, v in sorted(lineage.items())),
        *((f"parameter: {k}", v) for k, v in sorted(mv.params.items())),
        *((f"holdout metric: {k}", v) for k, v in sorted(mv.metrics.items())),
        *((f"registry: {k}", mv.version_tags[k]) for k in REGISTRY_TAGS if k in mv.version_tags),
    ]
    missing = [f"lineage: {k} was not recorded with run {mv.run_id}" for k in ("dataset_sha256", "feature_service") if k not in lineage]
    summary = (evaluation or {}).get("summary")
    figures = {
        "model": mv.model,
        "version": mv.version,
        "aliases": list(mv.aliases),
        "registered_at": None if mv.created is None else dt.datetime.fromtimestamp(mv.created, dt.UTC).isoformat(),
        "run_id": mv.run_id,
        "lineage": lineage,
        "parameters": dict(mv.params),
        "holdout_metrics": dict(mv.metrics),
        "registry_tags": {k: mv.version_tags[k] for k in REGISTRY_TAGS if k in mv.version_tags},
        "training_summary": summary,
    }
    return h.Section("lineage", "Model version and lineage", what, h.table(("field", "value"), pairs), tuple(missing), figures)


def digest_section(check: src.ArtifactCheck, mv: src.ModelVersion, findings: Findings) -> h.Section:
    what = (
        "Digests: the registered model file downloaded and hashed now, against the sha256 recorded when the version was registered "
        "(and on its run); and the sha256 of the training table recorded at training."
    )
    findings.checks["model artifact sha256 matches its registration"] = check.ok
    rows = [
        [check.file, check.recorded, check.recorded_on_run, check.actual, "OK" if check.ok else f"FAILED: {check.problem}"],
        ["training table", mv.run_tags.get("dataset_sha256"), None, None, "recorded at training (the table is rebuilt, not stored)"],
    ]
    body = h.table(
        ("artifact", "sha256 at registration", "sha256 on the run", "sha256 now", "verification"),
        rows,
        ["pass" if check.ok else "fail", ""],
    )
    missing = () if "dataset_sha256" in mv.run_tags else (f"no dataset sha256 was recorded with run {mv.run_id}",)
    figures = {"artifact": {**asdict(check), "ok": check.ok}, "dataset_sha256": mv.run_tags.get("dataset_sha256")}
    return h.Section("digests", "Digests re-verified now", what, body, missing, figures)


def gates_section(evaluation: dict[str, Any] | None, why: src.Missing | None, mv: src.ModelVersion, findings: Findings) -> h.Section:
    what = "The quality gates applied at training, each with the figure observed on the holdout, its limit and the result."
    gates = (evaluation or {}).get("gates")
    if not gates:
        findings.checks["training gates passed"] = None
        recorded = mv.run_tags.get("gates")
        extra = [f"the run records the gates' outcome only as {recorded!r}"] if recorded else []
        reason = str(why) if why is not None else f"the evaluation of run {mv.run_id} lists no gates"
        return h.Section(
            "gates", "Training gates as applied", what, h.paragraphs(extra), (reason,), {"gates": None, "recorded_outcome": recorded}
        )
    passed = all(bool(g.get("passed")) for g in gates)
    findings.checks["training gates passed"] = passed
    rows = [[g.get("name"), g.get("observed"), g.get("limit"), "pass" if g.get("passed") else "FAIL", g.get("reason")] for g in gates]
    body = h.table(("gate", "observed", "limit", "result", "detail"), rows, ["pass" if g.get("passed") else "fail" for g in gates])
    return h.Section("gates", "Training gates as applied", what, body, (), {"gates": gates, "passed": passed})


def training_fairness(evaluation: dict[str, Any] | None) -> tuple[dict[str, Any] | None, str]:
    fair = (evaluation or {}).get("evaluation", {}).get("fairness") or None
    if not fair:
        return None, ""
    rows = [[s, v.get("rows"), v.get("churn_rate"), v.get("positive_rate"), v.get("recall")] for s, v in fair.get("segments", {}).items()]
    body = "<h3>At training (holdout)</h3>" + h.table(("segment", "rows", "churn rate", "positive rate", "recall"), rows)
    body += h.paragraphs(
        [
            f"Gaps: positive rate {h.fmt(fair.get('positive_rate_gap'))}, recall {h.fmt(fair.get('recall_gap'))} (gate {h.fmt(fair.get('max_gap'))}); flagged: {', '.join(fair.get('flagged') or []) or 'none'}."
        ]
    )
    return fair, body


def live_rows(layout: Layout, mv: src.ModelVersion) -> pd.DataFrame:
    span = src.log_span(layout)
    if span is None:
        return pd.DataFrame()
    return src.prediction_store(layout).read_window(span.start, span.end, model=mv.model, version=mv.version, features=[SEGMENT])


def live_fairness(
    layout: Layout, mv: src.ModelVersion, labels: pd.DataFrame | None, settings: ComplianceSettings
) -> tuple[list[dict[str, Any]], list[str]]:
    """Gaps on every logged prediction of the version, and recall on those whose outcome arrived."""
    rows = live_rows(layout, mv)
    if len(rows) == 0:
        return [], [f"no prediction of v{mv.version} in the prediction log under {layout.predictions}: no live fairness"]
    if SEGMENT not in rows.columns:
        return [], [f"v{mv.version} does not use the {SEGMENT!r} feature: live fairness across segments cannot be computed"]
    notes = []
    if labels is not None:
        rows = join_labels(rows, labels, horizon_days=settings.horizon_days).frame
    g = settings.gates
    results = [
        r.to_dict()
        for r in fairness_report(rows, mv.threshold, FairnessConfig(max_gap=g.max_fairness_gap, gate_metrics=g.fairness_gate_metrics))
    ]
    if not any(r["population"] == "labelled" for r in results):
        notes.append(f"no outcome of v{mv.version}'s predictions has arrived yet: the live recall gap (the gated one) cannot be measured")
    return results, notes


def fairness_section(
    layout: Layout,
    mv: src.ModelVersion,
    evaluation: dict[str, Any] | None,
    labels: pd.DataFrame | None,
    settings: ComplianceSettings,
    findings: Findings,
) -> h.Section:
    gate = settings.gates.max_fairness_gap
    what = (
        f"Positive rate and recall per segment and the largest gaps between segments, at training and live, against the gate ({gate:g}; "
        f"gated: {', '.join(settings.gates.fairness_gate_metrics)}). Segments too small to judge are listed but left out of the gaps."
    )
    fair, body = training_fairness(evaluation)
    missing = [] if fair else [f"fairness at training: the evaluation of v{mv.version} has no per-segment figures"]
    try:
        live, notes = live_fairness(layout, mv, labels, settings)
    except ChurnOpsError as e:
        live, notes = [], [f"live fairness cannot be computed: {e}"]
    missing += notes
    for r in live:
        seg_rows = [[s["segment"], s["rows"], s["churners"], s["positive_rate"], s["recall"], s["in_gap"]] for s in r["segments"]]
        body += f"<h3>Live: {h.esc(r['population'])}</h3>" + h.table(
            ("segment", "predictions", "churners", "positive rate", "recall", "in gap"), seg_rows
        )
        breached = ", ".join(r["breached"]) or "none"
        body += h.paragraphs(
            [
                f"Gaps: positive rate {h.fmt(r['positive_rate_gap'])}, recall {h.fmt(r['recall_gap'])}; breached: {breached}.",
                *list(r["notes"]),
            ]
        )
    labelled = [r for r in live if r["population"] == "labelled"]
    findings.checks["live recall gap within the gate"] = (
        None if not labelled or labelled[0]["recall_gap"] is None else not labelled[0]["breached"]
    )
    if fair:
        findings.checks["training fairness gap within the gate"] = not fair.get("flagged")
    return h.Section(
        "fairness", "Fairness at training and live", what, body, tuple(missing), {"training": fair, "live": live, "gate": gate}
    )


def decisions_section(deployments: Sequence[src.Rollout], problems: Sequence[src.Missing], layout: Layout, version: str) -> h.Section:
    what = (
        f"Every rollout decision that concerned v{version}, from each deployment's timeline: as canary or as the stable version it "
        "was judged against, with each check's figures, the traffic applied, retraining runs and the retraining policy's evaluations."
    )
    missing = [str(p) for p in problems]
    if not deployments:
        return h.Section("rollout", "Rollout decisions", what, missing=(*missing, str(src.no_rollout(layout))), figures={"deployments": []})
    body, docs = "", []
    for d in deployments:
        entries = rollouts.concerning(d.timeline, version)
        docs.append({"name": d.name, "entries": [rollouts.doc(e) for e in entries]})
        body += f"<h3>Deployment {h.esc(d.name)}: {len(entries)} entries</h3>"
        if not entries:
            body += h.paragraphs([f"v{version} was never deployed, judged or produced here."])
            continue
        parts = (
            ("Decisions", rollouts.EVENT_HEADERS, rollouts.event_row, "event"),
            ("Checks and their figures", rollouts.CHECK_HEADERS, rollouts.check_row, "check"),
            (
                "Traffic applied",
                ("time", "stable", "canary", "weight %"),
                lambda e: [rollouts.stamp(e.get("time")), e.get("stable"), e.get("canary"), e.get("weight")],
                "routing",
            ),
            ("Retraining runs", rollouts.RUN_HEADERS, rollouts.run_row, "run"),
            ("Retraining policy evaluations", rollouts.EVALUATION_HEADERS, rollouts.evaluation_row, "evaluation"),
        )
        for title, headers, row, kind in parts:
            chosen = rollouts.of_kind(entries, kind)
            quiet = []
            if kind == "evaluation":  # every few minutes for as long as the version serves: the page shows those that counted
                quiet = [e for e in chosen if not e.get("breaches") and not e.get("triggered")]
                chosen = [e for e in chosen if e not in quiet]
            if chosen:
                body += f"<h4>{h.esc(title)}</h4>" + h.table(headers, [row(e) for e in chosen])
            if quiet:
                body += h.paragraphs([f"{len(quiet)} evaluation(s) found every signal within limits (all are in the JSON report)."])
    return h.Section("rollout", "Rollout decisions", what, body, tuple(missing), {"deployments": docs})


def audit_section(checks: Sequence[src.AuditCheck], mv: src.ModelVersion, layout: Layout, findings: Findings) -> h.Section:
    what = (
        "Every audit log under the data directory's audit/ verified now: the hash chain and each batch's Ed25519 signature from "
        "the first record to the signed head kept outside the log (edits, deletions, reordering, forged appends and truncation "
        "break it), and how many of this version's predictions each holds."
    )
    if not checks:
        findings.checks["audit chains verify"] = None
        return h.Section("audit", "Audit-chain verification", what, missing=(f"no audit log under {layout.audit}",), figures={"logs": []})
    key = f"{mv.model}:{mv.version}"
    findings.checks["audit chains verify"] = all(c.ok for c in checks)
    rows = [
        [
            c.path,
            c.records,
            "OK" if c.ok else "FAILED",
            "; ".join(c.problems) or "none",
            c.unacknowledged,
            c.head_file,
            c.by_version.get(key, 0),
        ]
        for c in checks
    ]
    body = h.table(
        ("log", "records checked", "verification", "problems", "unacknowledged", "head file", f"predictions of v{mv.version}"),
        rows,
        ["pass" if c.ok else "fail" for c in checks],
    )
    missing = tuple(f"{c.path}: no head file, so records cut off its end could not be detected" for c in checks if not c.head_file)
    figures = {"logs": [{**asdict(c), "ok": c.ok, "predictions_of_version": c.by_version.get(key, 0)} for c in checks]}
    return h.Section("audit", "Audit-chain verification", what, body, missing, figures)


def card_section(cfg: registry.RegistryConfig, mv: src.ModelVersion) -> h.Section:
    what = f"The model card logged with training run {mv.run_id} (written before registration, so it names the model without its version number)."
    markdown, md_path = src.run_text(cfg, mv.run_id, src.CARD_MARKDOWN)
    page, page_path = src.run_text(cfg, mv.run_id, src.CARD_HTML)
    if markdown is None and page is None:
        why = f"run {mv.run_id} logged no model card ({src.CARD_MARKDOWN} under {src.EVALUATION_DIR}/)"
        return h.Section("card", "Model card", what, missing=(why,), figures={"markdown": None})
    body = h.embedded_page(page, f"model card v{mv.version}") if page is not None else f"<pre>{h.esc(markdown)}</pre>"
    return h.Section("card", "Model card", what, body, (), {"markdown": markdown, "source": f"run {mv.run_id}: {md_path or page_path}"})


def summary_section(findings: Findings, mv: src.ModelVersion) -> h.Section:
    what = "Each check of this report: passed, FAILED, or not possible with what the data directory holds (see the sections)."
    rows = [[name, {True: "passed", False: "FAILED", None: "not possible"}[ok]] for name, ok in findings.checks.items()]
    classes = [{True: "pass", False: "fail", None: ""}[ok] for ok in findings.checks.values()]
    body = h.table(("check", "result"), rows, classes) + h.paragraphs(
        [f"Missing pieces: {len(findings.missing)} (listed in their sections)."]
    )
    return h.Section(
        "summary", f"Summary for v{mv.version}", what, body, (), {"checks": dict(findings.checks), "missing": list(findings.missing)}
    )


# --- the report -------------------------------------------------------------------------------------------------


def build(
    layout: Layout, model: str = names.CHAMPION, settings: ComplianceSettings | None = None, now: dt.datetime | None = None
) -> tuple[dict[str, Any], str]:
    """The compliance report of the version ``model`` names: its JSON document and HTML page (nothing written)."""
    settings = settings or ComplianceSettings()
    cfg = replace(src.registry_config(layout, settings.tracking_uri), model_name=settings.model_name)
    version = src.require_known_model(cfg, model)
    mv = src.model_version(cfg, version)
    evaluation, why = src.evaluation(cfg, mv)
    labels, labels_missing = src.labels(layout)
    deployments, problems = src.rollouts(layout)
    findings = Findings()
    body = [
        lineage_section(mv, evaluation),
        digest_section(src.artifact_check(cfg, mv), mv, findings),
        gates_section(evaluation, why, mv, findings),
        fairness_section(layout, mv, evaluation, labels, settings, findings),
        decisions_section(deployments, problems, layout, version),
        audit_section(src.audit_checks(layout, settings.audit_keys or public_keys_for(None, os.environ)), mv, layout, findings),
        card_section(cfg, mv),
    ]
    if labels_missing is not None:
        findings.note(labels_missing)
    for s in body:
        findings.missing.extend(s.missing)
    sections = [summary_section(findings, mv), *body]
    generated = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    meta = [f"{mv.model} v{mv.version} (asked for as {model!r}), data directory {layout.data_dir}, generated {generated}."]
    doc = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_at": generated,
        "data_dir": str(layout.data_dir),
        "model": mv.model,
        "model_version": mv.version,
        "requested": model,
        "sections": {s.key: s.to_doc() for s in sections},
    }
    doc = plain(doc)  # as the JSON file holds it
    return doc, h.page(f"Compliance report: {mv.model} v{mv.version}", meta, sections)


def default_dir(layout: Layout) -> Path:
    return layout.reports / "compliance"


def write_compliance_report(
    layout: Layout, model: str = names.CHAMPION, out_dir: Path | None = None, settings: ComplianceSettings | None = None
) -> ReportFiles:
    """Write ``compliance_<version>.html`` and ``.json`` into ``out_dir`` (default ``<data-dir>/reports/compliance``)."""
    doc, page = build(layout, model, settings)
    directory = out_dir or default_dir(layout)
    stem = f"compliance_{doc['model_version']}"
    return write_report(page, doc, directory / f"{stem}.html", directory / f"{stem}.json")
