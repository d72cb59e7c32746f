"""The demo's report: one self-contained HTML page (and its JSON twin) telling the whole loop with plots.

Built from what the data directory holds after a run, not from what the demo
remembers, so it can be rebuilt at any time (``churnops report demo``) and
shows the same thing for a run stopped halfway: every section says what it
shows, and a section whose data is not there yet names what is missing.

Sections: the champion's (and each promoted version's) ROC and calibration
on its holdout; a SHAP summary of the champion; drift over time of each
version's traffic against its own reference profile; the canary timeline with
weights, verdicts and their figures, promotions, rollbacks and retraining
runs; measured against estimated performance over time; business impact by
risk band; fairness gaps at training and live against the gate. The
statistics are the monitoring package's own (``drift``, ``performance``,
``business``, ``fairness``, ``jobs``); this module only gathers and draws.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from churnops.data.parquet import read_parquet
from churnops.errors import ChurnOpsError
from churnops.layout import Layout
from churnops.monitoring.business import ALL_BANDS, BAND_ORDER, BusinessColumns, CampaignConfig, business_report, campaign_value
from churnops.monitoring.drift import DriftPolicy
from churnops.monitoring.fairness import FairnessConfig
from churnops.monitoring.performance import join_labels
from churnops.monitoring.predlog.records import FIXED_COLUMNS
from churnops.monitoring.windows import OutcomeSettings, Window, prepare
from churnops.reports import attributions as attr
from churnops.reports import html as h
from churnops.reports import overtime, plots, rollouts
from churnops.reports import sources as src
from churnops.reports.output import ReportFiles, plain, write_report
from churnops.reports.window_jobs import outcome_report
from churnops.serving.explain import ExplanationUnavailableError
from churnops.training import registry
from churnops.training.config import BusinessConfig, GateConfig
from churnops_contract.registry import CHAMPION, DEFAULT_MODEL_NAME

REPORT_FORMAT = "churnops.demo_report"
REPORT_VERSION = 1
HTML_NAME = "demo_report.html"
SCORES_FILE = "scores.parquet"
SEGMENT = "segment"


@dataclass(frozen=True)
class DemoSettings:
    """How the report reads the data directory; the defaults suit the demo and a production log alike."""

    tracking_uri: str | None = None  # default: the embedded registry under the data directory
    model_name: str = DEFAULT_MODEL_NAME
    windows: int = 12  # points over time (drift windows, performance periods)
    explain_sample: int = 2_000  # logged predictions explained for the SHAP summary
    top_features: int = 15
    horizon_days: float = 30.0  # label horizon: an outcome covers [event_timestamp, +horizon)
    policy: DriftPolicy = field(default_factory=DriftPolicy)
    gates: GateConfig = field(default_factory=GateConfig)


@dataclass
class Context:
    """Everything the sections read, gathered once."""

    layout: Layout
    settings: DemoSettings
    cfg: registry.RegistryConfig
    versions: dict[str, src.ModelVersion]
    champion: str | None
    evaluations: dict[str, dict[str, Any]]
    missing_evaluations: dict[str, src.Missing]
    deployments: list[src.Rollout]
    rollout_problems: list[src.Missing]
    log: pd.DataFrame  # every prediction of the model: fixed columns and the outcome columns
    labels: pd.DataFrame | None
    labels_missing: src.Missing | None
    marks: list[plots.Mark]
    colours: dict[str, str]
    seconds: int | None = None  # window length over time (None: empty log)
    outcome: dict[str, Any] | None = None  # ``jobs.outcome_report`` over the whole log
    outcome_missing: list[str] = field(default_factory=list)

    @property
    def model(self) -> str:
        return self.cfg.model_name

    def label(self, version: str) -> str:
        return f"v{version}" + (" (champion)" if version == self.champion else "")


# --- gathering ---------------------------------------------------------------------------------------------


def version_order(version: str) -> tuple[int, str]:
    return (int(version), "") if version.isdigit() else (0, version)


def outcome_columns() -> list[str]:
    b = BusinessColumns()
    return [SEGMENT, b.revenue, b.csat, b.nps]


def read_log(layout: Layout, model: str) -> pd.DataFrame:
    span = src.log_span(layout)
    if span is None:
        return pd.DataFrame(columns=list(FIXED_COLUMNS))
    return src.prediction_store(layout).read_window(span.start, span.end, model=model, features=outcome_columns())


def gather(layout: Layout, settings: DemoSettings) -> Context:
    cfg = replace(src.registry_config(layout, settings.tracking_uri), model_name=settings.model_name)
    versions = {v: src.model_version(cfg, v) for v in src.registered_versions(cfg)}
    evaluations, missing = {}, {}
    for v, mv in versions.items():
        doc, why = src.evaluation(cfg, mv)
        if doc is not None:
            evaluations[v] = doc
        elif why is not None:
            missing[v] = why
    deployments, problems = src.rollouts(layout)
    labels, labels_missing = src.labels(layout)
    log = read_log(layout, cfg.model_name)
    in_log = set(log["model_version"].astype(str)) if len(log) else set()
    colours = {f"v{v}": plots.colour(i) for i, v in enumerate(sorted({*versions, *in_log}, key=version_order))}  # one colour per version
    marks = [m for d in deployments for m in rollouts.marks(d.timeline)]
    ctx = Context(
        layout,
        settings,
        cfg,
        versions,
        registry.alias_version(cfg, CHAMPION) if versions else None,
        evaluations,
        missing,
        deployments,
        problems,
        log,
        labels,
        labels_missing,
        marks,
        colours,
    )
    if len(log):
        ctx.seconds = overtime.window_seconds(log["time"].min().to_pydatetime(), log["time"].max().to_pydatetime(), settings.windows)
        ctx.outcome, ctx.outcome_missing = outcomes(ctx)
    return ctx


def campaign(ctx: Context) -> CampaignConfig:
    """The economics the champion was trained with (its evaluation), else the defaults training uses."""
    doc = ctx.evaluations.get(ctx.champion or "", {})
    stated = doc.get("evaluation", {}).get("business", {}).get("config")
    b = BusinessConfig(**stated) if isinstance(stated, dict) else BusinessConfig()
    return CampaignConfig(b.contact_cost, b.save_rate, b.months_saved, b.max_contact_share)


def outcome_settings(ctx: Context) -> OutcomeSettings:
    g = ctx.settings.gates
    fairness = FairnessConfig(max_gap=g.max_fairness_gap, gate_metrics=g.fairness_gate_metrics)
    seconds = ctx.seconds or 86_400
    return OutcomeSettings(campaign(ctx), fairness, ctx.settings.horizon_days, overtime.period(seconds))


def thresholds(ctx: Context, frame: pd.DataFrame) -> tuple[dict[str, float], list[str]]:
    out, unknown = {}, []
    for v in sorted(frame["model_version"].astype(str).unique()):
        if v in ctx.versions:
            out[v] = ctx.versions[v].threshold
        else:
            unknown.append(v)
    return out, unknown


def outcomes(ctx: Context) -> tuple[dict[str, Any] | None, list[str]]:
    """Measured and estimated performance over time, business and fairness figures of the whole log (the monitoring job's)."""
    known, unknown = thresholds(ctx, ctx.log)
    notes = [f"v{v} is in the prediction log but not in the registry {ctx.cfg.tracking_uri}: its predictions are left out" for v in unknown]
    frame = ctx.log[ctx.log["model_version"].astype(str).isin(known)]
    if frame.empty:
        return None, [*notes, "no prediction of a registered version in the log"]
    first, last = frame["time"].min().to_pydatetime(), frame["time"].max().to_pydatetime()
    window = Window(first, last + dt.timedelta(microseconds=1))
    try:
        report, _ = outcome_report(frame, ctx.labels, known, outcome_settings(ctx), window, ctx.model)
    except ChurnOpsError as e:
        return None, [*notes, f"the outcome figures cannot be computed: {e}"]
    return report.doc, [*notes, *report.doc["notes"]]


# --- sections ---------------------------------------------------------------------------------------------


def evaluation_versions(ctx: Context) -> list[str]:
    """The champion and every version deployed first or promoted during the run, in the order they served."""
    promoted = [v for d in ctx.deployments for v in rollouts.promoted_versions(d.timeline)]
    ordered = [*promoted, *([ctx.champion] if ctx.champion else [])]
    return list(dict.fromkeys(v for v in ordered if v in ctx.versions))


def evaluation_section(ctx: Context) -> h.Section:
    what = (
        "ROC and calibration of the champion and of every version promoted during the run, each on the holdout it was evaluated on "
        "at training (time-based: the latest snapshot), from the evaluation logged with its training run."
    )
    chosen = evaluation_versions(ctx)
    if not chosen:
        return h.Section(
            "evaluation", "ROC and calibration", what, missing=(f"no champion in the registry {ctx.cfg.tracking_uri}: train one first",)
        )
    curves, rows, missing = [], [], []
    for v in chosen:
        doc = ctx.evaluations.get(v)
        if doc is None:
            missing.append(str(ctx.missing_evaluations.get(v, src.Missing(f"the evaluation of v{v}", "not found"))))
            continue
        ev = doc["evaluation"]
        curves.append({"label": f"{ctx.label(v)} AUC {ev['roc_auc']:.3f}", "roc": ev["roc"], "calibration": ev["calibration"]})
        rows.append([ctx.label(v), ev["rows"], ev["churn_rate"], ev["roc_auc"], ev["pr_auc"], ev["brier"], ev["threshold"], ev["recall"]])
    figures = {
        "versions": [
            {
                "version": v,
                "champion": v == ctx.champion,
                **{k: ctx.evaluations[v]["evaluation"][k] for k in ("roc_auc", "brier", "roc", "calibration")},
            }
            for v in chosen
            if v in ctx.evaluations
        ]
    }
    body = ""
    if curves:
        body = h.image(h.png(plots.roc_calibration(curves)), "ROC and calibration")
        body += h.table(("version", "holdout rows", "churn rate", "ROC-AUC", "PR-AUC", "Brier", "threshold", "recall"), rows)
    return h.Section("evaluation", "ROC and calibration", what, body, tuple(missing), figures)


def batch_version(ctx: Context, scores: Path) -> str | None:
    """The version that wrote ``scores``: the batch audit record whose output sha256 is the file's (``churnops score`` writes one per run).

    Matched by content, not by path: the record outlives a moved data directory, and a file changed since is not attributed.
    """
    digest = registry.sha256_file(scores)
    version = None
    for path in src.audit_log_paths(ctx.layout):
        with path.open("rb") as f:
            for line in f:
                if b'"kind":"batch"' not in line:  # records are canonical JSON: prediction records are skipped unparsed
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a torn record: the audit verification reports it
                if rec.get("output_sha256") == digest:
                    version = str(rec.get("model_version"))
    return version


def attribution_source(ctx: Context) -> tuple[attr.Attributions | None, list[str]]:
    """The explain path on the champion's logged predictions, else the batch scores' reasons (see ``attributions``)."""
    notes: list[str] = []
    champion = ctx.champion
    if champion is not None:
        frame = src.latest_rows(ctx.layout, ctx.model, champion, ctx.settings.explain_sample)
        if len(frame):
            try:
                model = registry.load_model(ctx.cfg, champion)
                return attr.from_explain(model, frame, champion, ctx.settings.explain_sample, top=ctx.settings.top_features), notes
            except (ExplanationUnavailableError, registry.ModelIntegrityError) as e:
                notes.append(f"v{champion} cannot be explained here ({e}); using the batch scores' reasons")
        else:
            notes.append(f"no logged prediction of the champion v{champion} to explain")
    scores = ctx.layout.reports / SCORES_FILE
    if not scores.exists():
        return None, [*notes, f"no batch scores at {scores}: run `churnops score` (or the demo's batch step)"]
    version = batch_version(ctx, scores)
    if version is None:
        notes.append(f"no batch audit record names {scores} with its current sha256: the version that scored it is unknown")
    found = attr.from_reasons(read_parquet(scores), version or "unknown", ctx.settings.top_features)
    if found is None:
        notes.append(f"{scores} carries no reasons (scored with --top-k 0)")
    return found, notes


def attribution_section(ctx: Context) -> h.Section:
    what = (
        "SHAP summary of the champion: how far each feature moves the churn log-odds on average (mean |contribution|) and in which "
        "direction, with every prediction's contribution coloured by the feature's value (red: high, blue: low)."
    )
    found, notes = attribution_source(ctx)
    if found is None:
        return h.Section("shap", "SHAP summary", what, missing=tuple(notes))
    shown = found.features[: ctx.settings.top_features]
    fig = plots.attributions(
        [f.feature for f in shown],
        [f.mean_abs for f in shown],
        [f.raises for f in shown],
        [found.points[f.feature] for f in shown],
        f"v{found.version}: {found.note}",
    )
    rows = [[f.feature, f.kind, f.mean_abs, f.mean, f.correlation, f.direction] for f in shown]
    body = h.paragraphs([found.note]) + h.image(h.png(fig), "SHAP summary")
    body += h.table(("feature", "kind", "mean |contribution|", "mean contribution", "Spearman rho", "direction"), rows)
    informational = tuple(n for n in notes if found.source == "batch_reasons")
    return h.Section("shap", "SHAP summary", what, body, informational, {"attributions": found.to_doc(ctx.settings.top_features)})


def drift_section(ctx: Context) -> h.Section:
    policy = ctx.settings.policy
    what = (
        "Drift over time: for each window of the prediction log, the share of features that drifted (Benjamini-Hochberg at "
        f"{policy.fdr:g} and PSI >= {policy.psi_floor:g}) and the score's PSI, of each version's traffic against the reference "
        f"profile it was trained with. Filled points carry a verdict; hollow points had fewer than {policy.min_rows} predictions."
    )
    if ctx.seconds is None:
        return h.Section("drift", "Drift over time", what, missing=(f"the prediction log under {ctx.layout.predictions} is empty",))
    versions = sorted(ctx.log["model_version"].astype(str).unique(), key=version_order)
    profiles, missing = {}, []
    for v in versions:
        prof, why = src.profile(ctx.cfg, v) if v in ctx.versions else (None, src.Missing(f"v{v}", "not in the registry"))
        if prof is not None:
            profiles[v] = prof
        elif why is not None:
            missing.append(str(why))
    cuts = overtime.windows(ctx.log["time"].min().to_pydatetime(), ctx.log["time"].max().to_pydatetime(), ctx.seconds)
    points, problems = overtime.drift_points(src.prediction_store(ctx.layout), ctx.model, versions, profiles, cuts, policy)
    missing += problems
    figures = {"window_seconds": ctx.seconds, "policy": asdict(policy), "windows": [asdict(p) for p in points]}
    if not points:
        return h.Section("drift", "Drift over time", what, missing=(*missing, "no window could be judged"), figures=figures)
    share, psi = [], []
    for v in sorted({p.version for p in points}, key=versions.index):
        pts = [p for p in points if p.version == v]
        solid = [p.detected is not None for p in pts]
        share.append(plots.Series(f"v{v}", [p.start for p in pts], [p.drifted_share for p in pts], solid))
        psi.append(plots.Series(f"v{v}", [p.start for p in pts], [p.score_psi for p in pts], solid))
    fig = plots.over_time(
        [
            (
                "Share of features drifted per window",
                "share",
                share,
                [(policy.drifted_share, f"window drifts at {policy.drifted_share:.0%}")],
            ),
            ("Score PSI per window", "PSI", psi, [(policy.score_psi_floor, f"floor {policy.score_psi_floor:g}"), (0.2, "alert 0.2")]),
        ],
        ctx.marks,
        ctx.colours,
    )
    rows = [
        [p.version, rollouts.stamp(p.start), p.rows, f"{p.drifted}/{p.tested}", p.drifted_share, p.score_psi, p.detected] for p in points
    ]
    body = h.image(h.png(fig), "drift over time")
    body += h.table(("version", "window start", "predictions", "drifted", "share", "score PSI", "drift detected"), rows)
    return h.Section("drift", "Drift over time", what, body, tuple(missing), figures)


def rollout_body(d: src.Rollout) -> tuple[str, dict[str, Any]]:
    st = d.status
    if not d.timeline:
        text = f"Deployment {d.name} is recorded (phase {st.get('phase') or 'Pending'}) but has taken no decision yet: run `churnops rollout run`."
        return h.paragraphs([text]), {
            "name": d.name,
            "status": st,
            "checks": [],
            "events": [],
            "runs": [],
            "promoted": [],
            "rolled_back": [],
        }
    checks = rollouts.of_kind(d.timeline, "check")
    events = rollouts.of_kind(d.timeline, "event")
    runs = rollouts.of_kind(d.timeline, "run")
    evaluations = [e for e in rollouts.of_kind(d.timeline, "evaluation") if e.get("breaches") or e.get("triggered")]
    fig = plots.canary_timeline(
        rollouts.weights(d.timeline), rollouts.check_points(d.timeline), rollouts.marks(d.timeline), f"Rollout {d.name}"
    )
    summary = [
        [
            d.name,
            st.get("phase"),
            st.get("stableVersion"),
            st.get("canaryVersion"),
            st.get("canaryWeight"),
            st.get("failedChecks"),
            len(checks),
        ]
    ]
    body = h.table(("deployment", "phase", "stable", "canary", "weight %", "failed checks", "checks"), summary)
    body += h.image(h.png(fig), f"canary timeline {d.name}")
    body += "<h3>Decisions</h3>" + h.table(rollouts.EVENT_HEADERS, [rollouts.event_row(e) for e in events])
    body += "<h3>Checks and their figures (canary vs stable)</h3>"
    body += h.table(rollouts.CHECK_HEADERS, [rollouts.check_row(e) for e in checks], [str(e.get("outcome")) for e in checks])
    if runs:
        body += "<h3>Retraining runs</h3>" + h.table(rollouts.RUN_HEADERS, [rollouts.run_row(e) for e in runs])
    if evaluations:
        body += "<h3>Retraining policy: breached evaluations</h3>"
        body += h.table(rollouts.EVALUATION_HEADERS, [rollouts.evaluation_row(e) for e in evaluations])
    cases = auc_cases(d.timeline)
    if cases:
        body += auc_cases_html(cases, d.timeline)
    figures = {
        "name": d.name,
        "status": {
            k: st.get(k) for k in ("phase", "stableVersion", "canaryVersion", "canaryWeight", "failedChecks", "lastVerdict", "history")
        },
        "weights": [{"at": t, "weight": w} for t, w in rollouts.weights(d.timeline)],
        "checks": [rollouts.doc(e) for e in checks],
        "events": [rollouts.doc(e) for e in events],
        "runs": [rollouts.doc(e) for e in runs],
        "promoted": rollouts.promoted_versions(d.timeline),
        "rolled_back": [str(e.get("from")) for e in st.get("history") or [] if e.get("event") == "RolledBack"],
        "auc_cases": cases,
    }
    return body, figures


AUC_CASE_KIND = "outcomes"  # recorded by the demo: a canary, how it was made, and the delayed labels behind its AUC test
AUC_CASE_HEADERS = (
    "canary",
    "stable",
    "how it was made",
    "holdout AUC (champion)",
    "live AUC canary (labelled)",
    "live AUC stable (labelled)",
    "delta (limit)",
    "AUC test",
    "score PSI (limit)",
    "ended",
)
AUC_CHECK_HEADERS = ("time", "weight %", "check", "AUC test", "canary AUC", "stable AUC", "delta", "evidence (1 fails)", "reason")


def auc_cases(timeline: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """The AUC cases recorded in a timeline (see ``churnops.demo.worse``), oldest first."""
    return [dict(e) for e in timeline if e.get("kind") == AUC_CASE_KIND and isinstance(e.get("auc"), dict)]


def _auc_of(check: Any) -> dict[str, Any]:
    figures = check.get("figures") if isinstance(check, dict) else None
    auc = figures.get("auc_delta") if isinstance(figures, dict) else None
    return auc if isinstance(auc, dict) else {}


def _delta(a: object, b: object) -> float | None:
    return a - b if isinstance(a, int | float) and isinstance(b, int | float) else None


def auc_case_row(case: dict[str, Any]) -> list[object]:
    a, hold, psi, ended = case["auc"], case.get("holdout") or {}, case.get("scorePSI") or {}, case.get("ended") or {}
    champion = f" ({h.fmt(hold.get('championAUC'), '.3f')} v{hold.get('champion')})" if hold.get("champion") else ""
    return [
        case.get("canary"),
        case.get("stable"),
        case.get("made"),
        f"{h.fmt(hold.get('auc'), '.3f')}{champion}",
        f"{h.fmt(a.get('canary'), '.3f')} ({h.fmt(a.get('labelledCanary'), ',')})",
        f"{h.fmt(a.get('stable'), '.3f')} ({h.fmt(a.get('labelledStable'), ',')})",
        f"{h.fmt(a.get('delta'), '+.3f')} ({h.fmt(a.get('limit'))})",
        a.get("verdict"),
        f"{h.fmt(psi.get('canary'), '.3f')} ({h.fmt(psi.get('limit'))})",
        f"{ended.get('reason')}: {ended.get('message')}" if ended else "running",
    ]


def auc_check_row(check: dict[str, Any]) -> list[object]:
    a = _auc_of(check)
    return [
        rollouts.stamp(check.get("time")),
        check.get("weight"),
        check.get("outcome"),
        a.get("outcome"),
        a.get("canary"),
        a.get("stable"),
        _delta(a.get("canary"), a.get("stable")),
        a.get("evidence"),
        check.get("reason"),
    ]


def auc_cases_html(cases: Sequence[dict[str, Any]], timeline: Sequence[dict[str, Any]]) -> str:
    """Each recorded AUC case: its figures, a plot of the sequential test's evidence, and the checks that judged AUC."""
    out = "<h3>The AUC test: canaries judged on delayed outcomes</h3>"
    out += h.table(AUC_CASE_HEADERS, [auc_case_row(c) for c in cases], [str(c["auc"].get("verdict")) for c in cases])
    for case in cases:
        checks = [e for e in timeline if e.get("kind") == "check" and e.get("canary") == case.get("canary") and _auc_of(e)]
        if not checks:
            continue
        out += h.image(h.png(auc_evidence_plot(checks, str(case.get("canary")))), f"AUC test of v{case.get('canary')}")
        out += h.table(AUC_CHECK_HEADERS, [auc_check_row(c) for c in checks], [str(c.get("outcome")) for c in checks])
    return out


def auc_evidence_plot(checks: Sequence[dict[str, Any]], version: str) -> Figure:
    """The canary's and the stable's AUC at each check, and the test's evidence against its failing boundary."""
    fig = Figure(figsize=(10, 3.6))
    left, right = fig.subplots(1, 2)
    times = [rollouts.when(c) for c in checks]
    for key, label, colour in (("canary", f"canary v{version}", "#C44E52"), ("stable", "stable", "#4C72B0")):
        values = [_auc_of(c).get(key) for c in checks]
        left.plot(times, [np.nan if v is None else v for v in values], marker="o", markersize=3, color=colour, label=label)
    left.set(title="Measured AUC on delayed outcomes", ylabel="AUC")
    left.legend()
    evidence = [float(_auc_of(c).get("evidence") or 0.0) for c in checks]
    right.plot(times, evidence, marker="o", markersize=3, color="#8172B3")
    right.axhline(1.0, color="#b3261e", linestyle="--", label="fails at 1")
    right.set(title="Sequential test: evidence that the canary is worse", ylabel="log LR / failing boundary")
    right.legend()
    for ax in (left, right):
        ax.tick_params(axis="x", labelrotation=30, labelsize=7)
    fig.tight_layout()
    return fig


def rollout_section(ctx: Context) -> h.Section:
    what = (
        "The canary timeline of each deployment: canary traffic over time, every check at the weight it judged (green passed, grey "
        "waited for samples, red failed) with its figures, and the decisions: deployments, promotions, rollbacks, retraining runs."
    )
    missing = tuple(str(m) for m in ctx.rollout_problems)
    if not ctx.deployments:
        return h.Section("rollout", "Canary timeline", what, missing=(*missing, str(src.no_rollout(ctx.layout))))
    bodies, docs, idle = [], [], []
    for d in ctx.deployments:
        if not d.timeline:
            idle.append(f"deployment {d.name!r} has taken no decision yet: run `churnops rollout run --name {d.name}`")
            continue
        body, doc = rollout_body(d)
        bodies.append(body)
        docs.append(doc)
    return h.Section("rollout", "Canary timeline", what, "".join(bodies), (*missing, *idle), {"deployments": docs})


def performance_section(ctx: Context) -> h.Section:
    what = (
        "Measured against estimated performance over time: ROC-AUC per period from the delayed labels that arrived (solid) and "
        "estimated from the calibrated scores by CBPE (dashed), with the share of predictions labelled. Pending predictions are "
        "never counted as negatives."
    )
    missing = list(ctx.outcome_missing)
    points = overtime.performance_points(ctx.outcome.get("over_time") if ctx.outcome else None)
    if not points:
        return h.Section("performance", "Measured vs estimated performance", what, missing=(*missing, "no prediction in the log yet"))
    if ctx.labels_missing is not None:
        missing.insert(0, str(ctx.labels_missing))
    measured, estimated, coverage = [], [], []
    for v in sorted({p.version for p in points}, key=version_order):
        pts = [p for p in points if p.version == v]
        times = [p.start for p in pts]
        measured.append(plots.Series(f"v{v} measured", times, [p.measured for p in pts], key=f"v{v}"))
        estimated.append(plots.Series(f"v{v} estimated", times, [p.estimated for p in pts], dashed=True, key=f"v{v}"))
        coverage.append(plots.Series(f"v{v}", times, [p.labelled / p.predictions if p.predictions else None for p in pts]))
    reference = ctx.versions[ctx.champion].metrics.get("roc_auc") if ctx.champion in ctx.versions else None
    lines = [] if reference is None else [(float(reference), f"champion holdout AUC {reference:.3f}")]
    fig = plots.over_time(
        [
            ("ROC-AUC: measured (solid) and estimated by CBPE (dashed)", "AUC", [*measured, *estimated], lines),
            ("Label coverage", "share labelled", coverage, []),
        ],
        ctx.marks,
        ctx.colours,
    )
    rows = [[p.version, rollouts.stamp(p.start), p.predictions, p.labelled, p.measured, p.estimated, p.note or ""] for p in points]
    body = h.image(h.png(fig), "measured vs estimated performance")
    body += h.table(("version", "period start", "predictions", "labelled", "AUC measured", "AUC estimated", "why not measured"), rows)
    figures = {"period_seconds": ctx.seconds, "points": [asdict(p) for p in points]}
    return h.Section("performance", "Measured vs estimated performance", what, body, tuple(missing), figures)


def latest_per_customer(frame: pd.DataFrame) -> pd.DataFrame:
    """Each customer's latest prediction (a customer scored many times counts once); predictions without an id are kept."""
    known = frame[frame["customer_id"].notna()].sort_values("time", kind="stable").drop_duplicates("customer_id", keep="last")
    return pd.concat([known, frame[frame["customer_id"].isna()]], ignore_index=True)


def band_figures(rows: pd.DataFrame, threshold: float, cfg: CampaignConfig) -> list[dict[str, Any]]:
    """Per risk band: customers, revenue at risk, and the expected value of contacting every customer of the band."""
    report = business_report(rows, threshold, cfg, by_segment=False)
    version = str(rows["model_version"].iloc[0])
    everyone = replace(cfg, max_contact_share=1.0)
    revenue = pd.to_numeric(rows[BusinessColumns().revenue], errors="coerce").to_numpy(dtype=float)
    out = []
    bands = [b for b in BAND_ORDER[::-1] if (rows["risk_band"] == b).any()]
    for band in bands:
        sel = (rows["risk_band"] == band).to_numpy() & np.isfinite(revenue)
        value = campaign_value(rows["score"].to_numpy(dtype=float)[sel], revenue[sel], 0.0, everyone) if sel.any() else {}
        out.append(
            {
                "band": band,
                "customers": report.get("customers", "measured", version, band=band).value,
                "revenue_at_risk": report.get("revenue_at_risk", "estimated", version, band=band).value,
                "contact_cost": value.get("campaign_cost"),
                "expected_saved_revenue": value.get("saved_revenue"),
                "expected_net_savings": value.get("net_savings"),
                "roi": value.get("roi"),
            }
        )
    at = {m: report.get(m, "estimated", version).value for m in ("contacted", "campaign_cost", "saved_revenue", "net_savings", "roi")}
    measured = {f.metric: f.value for f in report.figures if f.source == "measured" and f.band == ALL_BANDS and f.metric in at}
    return [*out, {"band": f"campaign at threshold {threshold:.2f}", **{f"expected_{k}": v for k, v in at.items()}, "measured": measured}]


def business_section(ctx: Context) -> h.Section:
    cfg = campaign(ctx)
    what = (
        "Business impact of the champion on each customer's latest score: monthly revenue at risk (sum of churn probability x MRR) "
        "per risk band, and the expected value of a retention campaign contacting that band (contact cost "
        f"{cfg.contact_cost:,.0f}, save rate {cfg.save_rate:g}, {cfg.months_saved:g} months saved); the campaign at the model's "
        "threshold within the team's capacity, measured where outcomes arrived."
    )
    champion = ctx.champion
    rows = ctx.log[ctx.log["model_version"].astype(str) == champion] if champion else ctx.log.iloc[:0]
    if champion is None or rows.empty:
        return h.Section("business", "Business impact", what, missing=("no logged prediction of the champion",))
    latest, notes = prepare(latest_per_customer(rows), outcome_settings(ctx))
    if ctx.labels is not None:
        try:
            latest = join_labels(latest, ctx.labels, horizon_days=ctx.settings.horizon_days).frame
        except ChurnOpsError as e:  # labels that contradict themselves: expected figures only, and why
            notes.append(f"measured campaign figures left out: {e}")
    if latest[BusinessColumns().revenue].isna().all():
        return h.Section("business", "Business impact", what, missing=(*notes, f"v{champion} does not use the revenue column"))
    figures = band_figures(latest, ctx.versions[champion].threshold, cfg)
    bands = [f for f in figures if f["band"] in BAND_ORDER]
    fig = plots.business_bands(
        [f["band"] for f in bands],
        [f["revenue_at_risk"] for f in bands],
        [f["expected_net_savings"] for f in bands],
        [f["roi"] for f in bands],
    )
    rows_out = [
        [
            f["band"],
            f["customers"],
            f["revenue_at_risk"],
            f["contact_cost"],
            f["expected_saved_revenue"],
            f["expected_net_savings"],
            f["roi"],
        ]
        for f in bands
    ]
    at = figures[-1]
    rows_out.append(
        [
            at["band"],
            at["expected_contacted"],
            None,
            at["expected_campaign_cost"],
            at["expected_saved_revenue"],
            at["expected_net_savings"],
            at["expected_roi"],
        ]
    )
    body = h.image(h.png(fig), "business impact by band")
    body += h.table(
        ("band", "customers", "revenue at risk / month", "contact cost", "expected saved revenue", "expected net savings", "ROI"), rows_out
    )
    if at["measured"]:
        body += h.paragraphs([f"Measured on labelled customers: {', '.join(f'{k} {h.fmt(v)}' for k, v in at['measured'].items())}."])
    missing = tuple(notes) + (() if ctx.labels_missing is None else (str(ctx.labels_missing),))
    doc = {"version": champion, "customers": int(latest["customer_id"].notna().sum()), "campaign": asdict(cfg), "bands": figures}
    return h.Section("business", "Business impact", what, body, missing, doc)


def fairness_rows(ctx: Context, versions: Sequence[str]) -> list[dict[str, Any]]:
    """Per version: the gaps at training (holdout) and live (every prediction; labelled ones for recall)."""
    live = (ctx.outcome or {}).get("fairness") or []
    out: list[dict[str, Any]] = []
    for v in versions:
        ev = ctx.evaluations.get(v, {}).get("evaluation", {}).get("fairness") or {}
        if ev:
            out.append(
                {
                    "version": v,
                    "when": "training",
                    "positive_rate_gap": ev.get("positive_rate_gap"),
                    "recall_gap": ev.get("recall_gap"),
                    "notes": [],
                }
            )
        of_v = {r["population"]: r for r in live if r["version"] == v}
        if of_v:
            pred, lab = of_v.get("predictions", {}), of_v.get("labelled", {})
            notes = [*pred.get("notes", []), *lab.get("notes", [])] + ([] if lab else ["no labelled prediction yet: no live recall gap"])
            out.append(
                {
                    "version": v,
                    "when": "live",
                    "positive_rate_gap": pred.get("positive_rate_gap"),
                    "recall_gap": lab.get("recall_gap"),
                    "notes": notes,
                }
            )
    return out


def fairness_section(ctx: Context) -> h.Section:
    gate = ctx.settings.gates.max_fairness_gap
    what = (
        "Fairness across segments: the largest gap between segments in positive rate (share flagged at the threshold) and in recall "
        f"(share of churners flagged), at training on the holdout and live on the prediction log, against the training gate ({gate:g}; "
        f"gated: {', '.join(ctx.settings.gates.fairness_gate_metrics)})."
    )
    versions = list(dict.fromkeys([*evaluation_versions(ctx), *sorted(ctx.log["model_version"].astype(str).unique(), key=version_order)]))
    rows = fairness_rows(ctx, [v for v in versions if v in ctx.versions])
    if not rows:
        return h.Section("fairness", "Fairness", what, missing=("no evaluation with segments and no live prediction with a segment",))
    fig = plots.fairness_gaps(
        [f"v{r['version']} {r['when']}" for r in rows], [r["positive_rate_gap"] for r in rows], [r["recall_gap"] for r in rows], gate
    )
    table_rows = [[f"v{r['version']}", r["when"], r["positive_rate_gap"], r["recall_gap"], "; ".join(r["notes"])] for r in rows]
    body = h.image(h.png(fig), "fairness gaps") + h.table(("version", "when", "positive-rate gap", "recall gap", "notes"), table_rows)
    missing = () if ctx.labels_missing is None else (str(ctx.labels_missing),)
    return h.Section(
        "fairness",
        "Fairness",
        what,
        body,
        missing,
        {"gate": gate, "gate_metrics": list(ctx.settings.gates.fairness_gate_metrics), "rows": rows},
    )


SECTIONS = (
    evaluation_section,
    attribution_section,
    drift_section,
    rollout_section,
    performance_section,
    business_section,
    fairness_section,
)


# --- the report -------------------------------------------------------------------------------------------------


def build(layout: Layout, settings: DemoSettings | None = None, now: dt.datetime | None = None) -> tuple[dict[str, Any], str]:
    """The report's JSON document and HTML page (nothing written)."""
    settings = settings or DemoSettings()
    ctx = gather(layout, settings)
    sections = [make(ctx) for make in SECTIONS]
    generated = (now or dt.datetime.now(dt.UTC)).isoformat(timespec="seconds")
    meta = [
        f"Data directory {layout.data_dir}, generated {generated}.",
        f"Model {ctx.model}: {len(ctx.versions)} registered version(s), champion "
        + (f"v{ctx.champion}" if ctx.champion else "none")
        + f"; {len(ctx.log):,} logged predictions; {len(ctx.deployments)} rollout(s).",
    ]
    doc = {
        "format": REPORT_FORMAT,
        "version": REPORT_VERSION,
        "generated_at": generated,
        "data_dir": str(layout.data_dir),
        "model": ctx.model,
        "champion": ctx.champion,
        "versions": sorted(ctx.versions, key=version_order),
        "predictions": len(ctx.log),
        "sections": {s.key: s.to_doc() for s in sections},
    }
    doc = plain(doc)  # as the JSON file holds it
    return doc, h.page(f"ChurnOps demo report: {ctx.model}", meta, sections)


def default_path(layout: Layout) -> Path:
    return layout.reports / HTML_NAME


def write_demo_report(layout: Layout, out: Path | None = None, settings: DemoSettings | None = None) -> ReportFiles:
    """Build the report and write ``out`` (default ``<data-dir>/reports/demo_report.html``) and its ``.json`` twin."""
    doc, page = build(layout, settings)
    html_path = out or default_path(layout)
    return write_report(page, doc, html_path, html_path.with_suffix(".json"))
