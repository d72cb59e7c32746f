"""Model card (Markdown and HTML with plots) and the evaluation plots it shows."""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from churnops.training.evaluation import Comparison, Evaluation
from churnops.training.gates import GateResult

# Every file a training run writes to its output directory (train.train_and_register and the plots below).
RUN_OUTPUTS = (
    "evaluation.json",
    "metrics.json",
    "selection.json",
    "model_card.md",
    "model_card.html",
    "roc_calibration.png",
    "business.png",
    "fairness.png",
    "importance.png",
)


def clear_outputs(out_dir: Path) -> None:
    """Remove what an earlier run wrote to ``out_dir``: a refused or plot-less run must not leave its predecessor's
    card or plots beside its own, nor log them to MLflow as its own. Other files are left alone."""
    for name in RUN_OUTPUTS:
        (out_dir / name).unlink(missing_ok=True)


def plot_evaluation(ev: Evaluation, importance: dict[str, float], out_dir: Path) -> dict[str, Path]:
    """ROC, calibration, campaign value, fairness and feature importance plots as PNG files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}

    fig = Figure(figsize=(10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ev.roc["fpr"], ev.roc["tpr"], label=f"AUC {ev.roc_auc:.3f}")
    ax1.plot([0, 1], [0, 1], "--", color="grey")
    ax1.set(title="ROC (holdout)", xlabel="false positive rate", ylabel="true positive rate")
    ax1.legend(loc="lower right")
    ax2.plot(ev.calibration["mean_predicted"], ev.calibration["fraction_positive"], "o-", label=f"Brier {ev.brier:.3f}")
    ax2.plot([0, 1], [0, 1], "--", color="grey")
    ax2.set(title="Calibration (holdout)", xlabel="mean predicted probability", ylabel="observed churn rate")
    ax2.legend(loc="upper left")
    paths["roc_calibration"] = _save(fig, out_dir / "roc_calibration.png")

    if ev.business:
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        curve = ev.business["curve"]
        ax.plot([c["threshold"] for c in curve], [c["net_savings"] for c in curve], "o-")
        ax.axvline(ev.threshold, color="red", linestyle="--", label=f"chosen threshold {ev.threshold:.2f}")
        ax.set(title="Retention campaign: net savings vs threshold", xlabel="threshold", ylabel="net savings")
        ax.legend()
        paths["business"] = _save(fig, out_dir / "business.png")

    if ev.fairness:
        segs = ev.fairness["segments"]
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
        names = list(segs)
        xs = range(len(names))
        ax.bar([x - 0.2 for x in xs], [segs[n]["positive_rate"] for n in names], width=0.4, label="positive rate")
        ax.bar([x + 0.2 for x in xs], [segs[n]["recall"] for n in names], width=0.4, label="recall")
        if len(names) > 12:  # e.g. an age column: one bar per value, names unreadable
            ax.tick_params(axis="x", labelrotation=90, labelsize=6)
        ax.set_xticks(list(xs), names)
        ax.set(title="Fairness across segments (holdout)", ylim=(0, 1))
        ax.legend()
        paths["fairness"] = _save(fig, out_dir / "fairness.png")

    top = sorted(importance.items(), key=lambda kv: kv[1], reverse=True)[:20]
    fig = Figure(figsize=(7, 6))
    ax = fig.subplots()
    ax.barh([k for k, _ in reversed(top)], [v for _, v in reversed(top)])
    ax.set(title="Top features (LightGBM gain share)", xlabel="share of total gain")
    fig.tight_layout()
    paths["importance"] = _save(fig, out_dir / "importance.png")
    return paths


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


@dataclass(frozen=True)
class CardInputs:
    model_name: str
    version: str | None
    evaluation: Evaluation
    gates: list[GateResult]
    comparison: Comparison | None
    lineage: dict[str, Any]
    training: dict[str, Any]  # rows, families tried, ensemble, trials, selected features
    plots: dict[str, Path]
    fairness_column: str | None = None  # the column the evaluation's fairness figures are across
    fairness_gated: bool = True  # a protected attribute (gated) or a business segment (reported)
    segment_thresholds: dict[str, Any] | None = None  # equal opportunity at per-segment thresholds (equal_opportunity.holdout_report)
    reported_segments: dict[str, dict[str, Any]] = field(default_factory=dict)  # further columns' fairness, reported only


def render_markdown(c: CardInputs) -> str:
    ev = c.evaluation
    lines = [
        f"# Model card: {c.model_name}" + (f" v{c.version}" if c.version else ""),
        *_status_lines(c),
        "",
        "## Intended use",
        "Scores each active customer's probability of churning within 30 days, for customer-success teams to",
        "prioritise retention outreach. Not for pricing, credit or employment decisions; scores are estimates for",
        "groups of accounts, not verdicts on one customer.",
        "",
        "## Data",
        *[f"- {k}: {v}" for k, v in c.lineage.items()],
        "",
        "## Training",
        *[f"- {k}: {v}" for k, v in c.training.items()],
        "",
        "## Metrics (time-based holdout)",
        "| metric | value |",
        "|---|---:|",
        *[f"| {k} | {v:.4f} |" for k, v in ev.headline().items()],
        f"| rows | {ev.rows:,} |",
        f"| churn rate | {ev.churn_rate:.4f} |",
        *_threshold_lines(ev),
    ]
    if ev.business:
        at = ev.business["at_threshold"]
        lines += [
            "",
            "## Business impact (holdout)",
            f"- Monthly revenue at risk (sum of p x MRR): {ev.business['revenue_at_risk_monthly']:,.0f}",
            f"- Campaign at threshold {ev.threshold:.2f}: contact {at['contacted']:,} customers, cost {at['cost']:,.0f}, "
            f"expected saved revenue {at['saved_revenue']:,.0f}, net {at['net_savings']:,.0f}, ROI {at['roi']:.2f}",
            f"- Assumptions: {ev.business['config']}",
        ]
    if ev.fairness:
        role = (
            f"Gated: the fairness gate bounds the recall gap between its values at {ev.fairness['max_gap']:g}."
            if c.fairness_gated
            else "A business segment: reported, not gated (segments' churn base rates may differ many-fold); --gate-segment gates it."
        )
        lines += _fairness_lines(c.fairness_column or "segments", ev.fairness, role)
    for column, report in c.reported_segments.items():
        lines += _fairness_lines(column, report, "A business segment: reported, not gated.")
    if c.segment_thresholds is not None:
        lines += _segment_threshold_lines(c.segment_thresholds)
    if c.comparison is not None:
        cmp_ = c.comparison
        lines += [
            "",
            "## Comparison with the champion",
            f"AUC change vs v{cmp_.champion_version}: {cmp_.delta_auc:+.4f} (95% bootstrap CI {cmp_.ci_low:+.4f}..{cmp_.ci_high:+.4f}, {cmp_.resamples} resamples).",
        ]
    lines += ["", "## Quality gates", "| gate | result | detail |", "|---|---|---|"]
    lines += [f"| {g.name} | {'pass' if g.passed else 'FAIL'} | {g.reason} |" for g in c.gates]
    lines += [
        "",
        "## Limitations",
        "- Trained on snapshots of one business; drift in usage, pricing or support changes calibration first: watch the drift monitors.",
        "- Segment differences in positive rate partly reflect different true churn rates; read recall gaps first.",
        "- Labels are 30-day churn; customers who churn later are negatives here.",
        "",
        "## Plots",
        *[f"![{name}]({p.name})" for name, p in c.plots.items()],
    ]
    return "\n".join(lines) + "\n"


def _fairness_lines(column: str, report: dict[str, Any], role: str) -> list[str]:
    """Per-segment rates and recall, and the gaps between segments (the figures a fairness refusal rests on)."""
    lines = [
        "",
        f"## Fairness across {column} (holdout)",
        role,
        "",
        "| segment | rows | churners | churn rate | positive rate | recall | in the recall gap |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    lines += [
        f"| {s} | {v['rows']:,} | {v.get('churners', '-')} | {v['churn_rate']:.3f} | {v['positive_rate']:.3f} | {v['recall']:.3f} | "
        f"{'yes' if v.get('in_recall_gap', True) else 'no (too small)'} |"
        for s, v in report["segments"].items()
    ]
    flagged = ", ".join(report["flagged"]) or "none"
    sizes = (
        f"; segments under {report['min_rows']} rows or {report['min_churners']} churners are not judged" if "min_rows" in report else ""
    )
    lines.append(
        f"\nGaps: positive rate {_gap(report['positive_rate_gap'])}, recall {_gap(report['recall_gap'])} "
        f"(bound {report['max_gap']}{sizes}); flagged: {flagged}."
    )
    lines += [f"- {note}" for note in report.get("notes", [])]
    return lines


def _gap(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.3f}"


def _segment_threshold_lines(report: dict[str, Any]) -> list[str]:
    at = report["holdout"]
    lines = [
        "",
        f"## Equal opportunity at per-segment thresholds across {report.get('column', 'segments')} (holdout)",
        f"**Not served: {report['served']}.**",
        f"- {report['note']}",
        f"- holdout: {report['holdout_contact_share']:.1%} of customers flagged; recall gap {_gap(at['recall_gap'])}, "
        f"positive rate gap {_gap(at['positive_rate_gap'])}",
        "",
        "| segment | threshold | positive rate | recall |",
        "|---|---:|---:|---:|",
    ]
    lines += [f"| {s} | {report['thresholds'][s]:.2f} | {v['positive_rate']:.3f} | {v['recall']:.3f} |" for s, v in at["segments"].items()]
    return lines


def _status_lines(c: CardInputs) -> list[str]:
    """A refused model's card says so first: it is written before the refusal, for inspection."""
    failed = [g.name for g in c.gates if not g.passed]
    if not failed:
        return []
    if c.version is None:
        return ["", f"**Not registered: quality gates failed ({', '.join(failed)}). The figures below are why.**"]
    return [
        "",
        f"**Rejected candidate, registered for inspection only: quality gates failed ({', '.join(failed)}); "
        "it has no alias and cannot be promoted.**",
    ]


def _threshold_lines(ev: Evaluation) -> list[str]:
    """How the decision threshold was chosen; an unprofitable campaign is said first and plainly."""
    rule = ev.threshold_rule
    if not rule:
        return []
    lines = ["", "## Decision threshold"]
    if rule["profitable"] is False:
        lines.append(
            "**No contact is profitable with the stated campaign economics; the threshold below is a fallback rule, not a campaign plan.**"
        )
    return [*lines, f"- {rule['note']}", f"- rule: {rule['rule']}, threshold {rule['threshold']:.2f}"]


def render_html(markdown_text: str, plots: dict[str, Path]) -> str:
    """A self-contained HTML page: the card's text with plots inlined."""
    body: list[str] = []
    in_table = False
    for line in markdown_text.splitlines():
        if line.startswith("|"):
            cells = [html.escape(x.strip()) for x in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue
            if not in_table:
                body.append("<table>")
                in_table = True
            body.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
            continue
        if in_table:
            body.append("</table>")
            in_table = False
        if line.startswith("!["):
            continue
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            body.append(f"<h{level}>{html.escape(line.lstrip('# '))}</h{level}>")
        elif line.startswith("**") and line.endswith("**"):
            body.append(f"<p><strong>{html.escape(line.strip('*'))}</strong></p>")
        elif line.startswith("- "):
            body.append(f"<li>{html.escape(line[2:])}</li>")
        elif line.strip():
            body.append(f"<p>{html.escape(line)}</p>")
    if in_table:
        body.append("</table>")
    for name, path in plots.items():
        data = base64.b64encode(path.read_bytes()).decode()
        body.append(f'<figure><img alt="{name}" src="data:image/png;base64,{data}"/><figcaption>{name}</figcaption></figure>')
    style = "body{font-family:sans-serif;max-width:60em;margin:auto}table{border-collapse:collapse}td{border:1px solid #ccc;padding:2px 8px}img{max-width:100%}"
    return f"<!doctype html><html><head><meta charset='utf-8'><title>Model card</title><style>{style}</style></head><body>{''.join(body)}</body></html>\n"


def write_card(c: CardInputs, out_dir: Path) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    text = render_markdown(c)
    md = out_dir / "model_card.md"
    md.write_text(text)
    page = out_dir / "model_card.html"
    page.write_text(render_html(text, c.plots))
    return md, page
