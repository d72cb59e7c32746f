"""Grafana dashboards as code: serving, drift, performance, business and fairness.

Built with grafana-foundation-sdk (Grafana's own typed builders) rather than
hand-written JSON, so a panel is a few lines of Python, every query is built
from the names in ``churnops_contract.metric_names`` (or the recording rules in
``manifests/monitoring/rules``), and the checked-in JSON under
``manifests/monitoring/dashboards/`` is regenerated, never edited:

    python -m churnops.monitoring.dashboards manifests/monitoring/dashboards

Every dashboard has a Prometheus data-source variable and ``model`` /
``version`` variables read from ``churnops_model_info``, so one JSON file
serves every deployment. Output is deterministic (sorted keys, fixed ids and
layout), which lets a test compare it byte for byte with the checked-in copy.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import bargauge, heatmap, stat, table, timeseries
from grafana_foundation_sdk.builders.common import GraphThresholdsStyleConfig, ReduceDataOptions, VizLegendOptions
from grafana_foundation_sdk.builders.dashboard import (
    CustomVariable,
    Dashboard,
    DatasourceVariable,
    QueryVariable,
    Row,
    ThresholdsConfig,
)
from grafana_foundation_sdk.builders.prometheus import Dataquery
from grafana_foundation_sdk.cog.builder import Builder
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as gd
from grafana_foundation_sdk.models.common import (
    BigValueGraphMode,
    GraphTresholdsStyleMode,
    LegendDisplayMode,
    LegendPlacement,
    VizOrientation,
)
from grafana_foundation_sdk.models.prometheus import PromQueryFormat

from churnops_contract import metric_names as c

DATASOURCE = gd.DataSourceRef(type_val="prometheus", uid="${datasource}")
MV = 'model=~"$model", version=~"$version"'  # the model/version selection of every panel
RATE = "[$__rate_interval]"
FAIRNESS_GATE = 0.25  # the training gate's largest recall gap (churnops.training.config), also the alert's limit
TAGS = ["churnops"]
GRID_WIDTH = 24  # Grafana's grid columns


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    instant: bool = False
    fmt: PromQueryFormat | None = None


def _targets(panel: Builder[gd.Panel], queries: Sequence[Query]) -> None:
    for ref, q in zip("ABCDEFGH", queries, strict=False):
        target = Dataquery().expr(q.expr).ref_id(ref)
        if q.legend:
            target = target.legend_format(q.legend)
        if q.instant:
            target = target.instant()
        if q.fmt is not None:
            target = target.format(q.fmt)
        panel.with_target(target)  # type: ignore[attr-defined]


def _thresholds(steps: Sequence[tuple[str, float | None]]) -> ThresholdsConfig:
    return ThresholdsConfig().mode(gd.ThresholdsMode.ABSOLUTE).steps([gd.Threshold(color=color, value=value) for color, value in steps])


def series(
    title: str, unit: str, *queries: Query, description: str = "", span: int = 12, limits: tuple[float, float] | None = None
) -> Builder[gd.Panel]:
    """A time series panel; ``limits`` draws warning/critical lines."""
    panel = (
        timeseries.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(span)
        .height(8)
        .legend(VizLegendOptions().display_mode(LegendDisplayMode.LIST).placement(LegendPlacement.BOTTOM).show_legend(True))
    )
    if limits is not None:
        panel = panel.thresholds(_thresholds([("green", None), ("orange", limits[0]), ("red", limits[1])]))
        panel = panel.thresholds_style(_line_thresholds())
    _targets(panel, queries)
    return panel


def _line_thresholds() -> GraphThresholdsStyleConfig:
    return GraphThresholdsStyleConfig().mode(GraphTresholdsStyleMode.LINE)  # (sic: the SDK spells it so)


def single(
    title: str, unit: str, query: Query, description: str = "", limits: tuple[float, float] | None = None, span: int = 6
) -> Builder[gd.Panel]:
    """A single figure (last value), coloured by ``limits``."""
    steps: list[tuple[str, float | None]] = [("green", None)]
    if limits is not None:
        steps += [("orange", limits[0]), ("red", limits[1])]
    panel = (
        stat.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(span)
        .height(6)
        .thresholds(_thresholds(steps))
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .graph_mode(BigValueGraphMode.AREA)
    )
    _targets(panel, [query])
    return panel


def bars(
    title: str, unit: str, query: Query, description: str = "", span: int = 12, limits: tuple[float, float] | None = None
) -> Builder[gd.Panel]:
    """Horizontal bars, one per series (e.g. per feature), from an instant query."""
    steps: list[tuple[str, float | None]] = [("green", None)]
    if limits is not None:
        steps += [("orange", limits[0]), ("red", limits[1])]
    panel = (
        bargauge.Panel()
        .title(title)
        .description(description)
        .unit(unit)
        .datasource(DATASOURCE)
        .span(span)
        .height(10)
        .orientation(VizOrientation.HORIZONTAL)
        .reduce_options(ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .thresholds(_thresholds(steps))
    )
    _targets(panel, [query])
    return panel


def distribution(title: str, query: Query, description: str = "", span: int = 12) -> Builder[gd.Panel]:
    """A heatmap of histogram buckets over time."""
    # The buckets come computed from Prometheus (calculate off), one row per bucket bound.
    panel = heatmap.Panel().title(title).description(description).datasource(DATASOURCE).span(span).height(8).calculate(False).show_legend()
    _targets(panel, [query])
    return panel


def listing(title: str, query: Query, description: str = "", span: int = 12) -> Builder[gd.Panel]:
    panel = table.Panel().title(title).description(description).datasource(DATASOURCE).span(span).height(6).show_header(True)
    _targets(panel, [query])
    return panel


# --- variables --------------------------------------------------------------------------------------------


def _query_variable(name: str, label: str, query: str) -> QueryVariable:
    return (
        QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(query)
        .refresh(gd.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(gd.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def _variables() -> list[Builder[gd.VariableModel]]:
    return [
        DatasourceVariable("datasource").label("Data source").type("prometheus"),
        _query_variable("model", "Model", f"label_values({c.MODEL_INFO}, model)"),
        _query_variable("version", "Version", f'label_values({c.MODEL_INFO}{{model=~"$model"}}, version)'),
    ]


def _custom(name: str, label: str, values: Sequence[str]) -> CustomVariable:
    return (
        CustomVariable(name)
        .label(label)
        .values(",".join(values))
        .current(gd.VariableOption(text=values[0], value=values[0], selected=True))
    )


def assemble(
    uid: str,
    title: str,
    description: str,
    rows: Sequence[tuple[str, Sequence[Builder[gd.Panel]]]],
    extra: Sequence[Builder[gd.VariableModel]] = (),
) -> Dashboard:
    """A dashboard from titled rows of panels; ids and positions are given in order so the JSON is stable.

    Positions are computed here: the SDK's automatic layout does not wrap a
    panel that no longer fits in the 24-column grid.
    """
    board = (
        Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(TAGS)
        .refresh("1m")
        .time("now-6h", "now")
        .timezone("utc")
        .tooltip(gd.DashboardCursorSync.CROSSHAIR)
    )
    for variable in [*_variables(), *extra]:
        board = board.with_variable(variable)
    panel_id, y = 1, 0
    for row_title, panels in rows:
        board = board.with_row(Row(row_title).id(panel_id).grid_pos(gd.GridPos(h=1, w=GRID_WIDTH, x=0, y=y)))
        panel_id, y = panel_id + 1, y + 1
        x, line_height = 0, 0
        for panel in panels:
            pos = panel.build().grid_pos
            assert pos is not None
            if x + pos.w > GRID_WIDTH:  # wrap onto a new line
                x, y, line_height = 0, y + line_height, 0
            pos.x, pos.y = x, y
            board = board.with_panel(panel.id(panel_id))  # type: ignore[attr-defined]
            panel_id, x, line_height = panel_id + 1, x + pos.w, max(line_height, pos.h)
        y += line_height
    return board


# --- the dashboards ---------------------------------------------------------------------------------------


def serving() -> Dashboard:
    total = c.total
    latency = f"{c.LATENCY}_bucket{{{MV}}}"
    return assemble(
        "churnops-serving",
        "ChurnOps / Serving",
        "Requests, errors, latency by stage, the score distribution, degraded mode and the prediction log.",
        [
            (
                "Traffic and errors",
                [
                    series(
                        "Requests per second",
                        "reqps",
                        Query(f"sum by (model, version) (rate({total(c.REQUESTS)}{{{MV}}}{RATE}))", "{{model}} v{{version}}"),
                    ),
                    series(
                        "Errors per second by status",
                        "reqps",
                        Query(f'sum by (model, code) (rate({total(c.ERRORS)}{{model=~"$model"}}{RATE}))', "{{model}} {{code}}"),
                        description="Every status >= 400 the server sent; 4xx are the clients' mistakes, 5xx ours.",
                    ),
                    single(
                        "5xx share (5 min)",
                        "percentunit",
                        Query('model:churnops_error_ratio_5xx:rate5m{model=~"$model"}'),
                        limits=(0.01, 0.05),
                        description="Server errors over all responses; alerts at 1 % (warning) and 5 % (critical).",
                    ),
                    single("Predictions per second", "short", Query(f"sum(rate({total(c.PREDICTIONS)}{{{MV}}}{RATE}))")),
                    listing(
                        "Served versions",
                        Query(f'{c.MODEL_INFO}{{model=~"$model"}} == 1', instant=True, fmt=PromQueryFormat.TABLE),
                        description="Loaded and ready model versions and their aliases.",
                    ),
                ],
            ),
            (
                "Latency",
                [
                    series(
                        f"p95 latency by stage ({', '.join(c.STAGES)})",
                        "s",
                        Query(f"histogram_quantile(0.95, sum by (stage, le) (rate({latency}{RATE})))", "{{stage}}"),
                        limits=(0.05, 0.1),
                    ),
                    series(
                        "p99 latency by stage",
                        "s",
                        Query(f"histogram_quantile(0.99, sum by (stage, le) (rate({latency}{RATE})))", "{{stage}}"),
                    ),
                ],
            ),
            (
                "Scores",
                [
                    distribution(
                        "Score distribution over time",
                        Query(f"sum by (le) (increase({c.SCORE}_bucket{{{MV}}}{RATE}))", "{{le}}", fmt=PromQueryFormat.HEATMAP),
                        description="Calibrated churn probabilities per bucket.",
                    ),
                    series(
                        "Mean score",
                        "percentunit",
                        Query(
                            f"sum by (model, version) (rate({c.SCORE}_sum{{{MV}}}{RATE})) / sum by (model, version) (rate({c.SCORE}_count{{{MV}}}{RATE}))",
                            "{{model}} v{{version}}",
                        ),
                    ),
                ],
            ),
            (
                "Inputs and degraded mode",
                [
                    series(
                        "Degraded predictions by reason",
                        "short",
                        Query(f"sum by (reason) (rate({total(c.DEGRADED)}{{{MV}}}{RATE}))", "{{reason}}"),
                        description="Scored without online features (store down or circuit open).",
                    ),
                    series(
                        "Degraded and missing shares (5 min)",
                        "percentunit",
                        Query(f"model_version:churnops_degraded_ratio:rate5m{{{MV}}}", "degraded {{model}} v{{version}}"),
                        Query(f"model_version:churnops_missing_feature_ratio:rate5m{{{MV}}}", "missing values {{model}} v{{version}}"),
                        limits=(0.01, 0.1),
                    ),
                    bars(
                        "Unseen categories by feature (per second)",
                        "short",
                        Query(
                            f"topk(10, sum by (feature) (rate({total(c.UNSEEN_CATEGORIES)}{{{MV}}}{RATE})))", "{{feature}}", instant=True
                        ),
                    ),
                ],
            ),
            (
                "Prediction log",
                [
                    series(
                        "Seconds since the last completed flush",
                        "s",
                        Query(f"time() - {c.PREDICTION_LOG_LAST_FLUSH}", "{{instance}} {{sink}}"),
                        limits=(120, 900),
                    ),
                    series("Records waiting", "short", Query(f"{c.PREDICTION_LOG_QUEUE}", "{{instance}} {{sink}}")),
                    series(
                        "Records written and dropped per second",
                        "short",
                        Query(f"sum by (sink) (rate({total(c.PREDICTION_LOG_RECORDS)}{RATE}))", "written {{sink}}"),
                        Query(f"sum by (sink, reason) (rate({total(c.PREDICTION_LOG_DROPPED)}{RATE}))", "dropped {{sink}} {{reason}}"),
                    ),
                ],
            ),
        ],
    )


def drift() -> Dashboard:
    per_feature = f'{MV}, method="$method", feature!="{c.SCORE_FEATURE}"'
    quality = [
        bars(
            f"Worst features: {check.replace('_', ' ')} rate",
            "percentunit",
            Query(f'topk(15, max by (feature) ({c.FEATURE_QUALITY}{{{MV}, check="{check}"}}))', "{{feature}}", instant=True),
            span=8,
            limits=(0.05, 0.2),
        )
        for check in c.QUALITY_CHECKS
    ]
    return assemble(
        "churnops-drift",
        "ChurnOps / Drift",
        "Live drift of inputs and scores against the training reference, and feature quality.",
        [
            (
                "Verdict",
                [
                    single(
                        "Window judged drifted",
                        "bool",
                        Query(f"max({c.DRIFT_DETECTED}{{{MV}}})"),
                        limits=(0.5, 1),
                        description="After multiple-testing control across features.",
                    ),
                    single(
                        "Share of features drifted", "percentunit", Query(f"max({c.DRIFTED_FEATURES_SHARE}{{{MV}}})"), limits=(0.1, 0.5)
                    ),
                    single("Predictions in the live window", "short", Query(f"sum({c.DRIFT_WINDOW_SIZE}{{{MV}}})")),
                    single("Score PSI", "short", Query(f'max({c.SCORE_DRIFT}{{{MV}, method="psi"}})'), limits=(0.2, 0.5)),
                    series(
                        "Share of features drifted", "percentunit", Query(f"{c.DRIFTED_FEATURES_SHARE}{{{MV}}}", "{{model}} v{{version}}")
                    ),
                    series(
                        "Score drift by method",
                        "short",
                        Query(f"max by (method) ({c.SCORE_DRIFT}{{{MV}}})", "{{method}}"),
                        limits=(0.2, 0.5),
                    ),
                ],
            ),
            (
                "Per feature ($method)",
                [
                    bars(
                        "Most drifted features",
                        "short",
                        Query(f"topk(20, max by (feature) ({c.DRIFT_SCORE}{{{per_feature}}}))", "{{feature}}", instant=True),
                    ),
                    bars(
                        "Smallest p-values (ks, chi2)",
                        "short",
                        Query(
                            f'bottomk(20, min by (feature) ({c.DRIFT_PVALUE}{{{MV}, feature!="{c.SCORE_FEATURE}"}}))',
                            "{{feature}}",
                            instant=True,
                        ),
                    ),
                    series(
                        "Drift of the 10 most drifted features",
                        "short",
                        Query(f"topk(10, max by (feature) ({c.DRIFT_SCORE}{{{per_feature}}}))", "{{feature}}"),
                        span=24,
                    ),
                ],
            ),
            ("Feature quality", quality),
        ],
        extra=[_custom("method", "Drift method", c.DRIFT_METHODS)],
    )


def performance() -> Dashboard:
    selection = f'{MV}, segment=~"$segment"'
    by_metric = [
        series(
            f"{metric.upper().replace('_', '-')}: measured, estimated, reference",
            "short",
            Query(f'max by (segment, source) ({c.PERFORMANCE}{{{selection}, metric="{metric}"}})', "{{source}} ({{segment}})"),
            span=12 if metric in ("auc", "pr_auc") else 8,
            description="Measured from delayed labels, estimated from calibrated scores before they arrive, reference = holdout at training.",
        )
        for metric in c.PERFORMANCE_METRICS
    ]
    return assemble(
        "churnops-performance",
        "ChurnOps / Performance",
        "Model quality measured from delayed labels and estimated before they arrive, against the training reference.",
        [
            (
                "AUC against the reference",
                [
                    series(
                        "AUC drop below the holdout reference",
                        "short",
                        Query(f"model_version:churnops_auc_drop:measured{{{MV}}}", "measured {{model}} v{{version}}"),
                        Query(f"model_version:churnops_auc_drop:estimated{{{MV}}}", "estimated {{model}} v{{version}}"),
                        limits=(0.05, 0.1),
                    ),
                    series(
                        "Label coverage",
                        "percentunit",
                        Query(f"{c.LABEL_COVERAGE}{{{MV}}}", "{{model}} v{{version}}"),
                        description="Share of predictions with a label yet.",
                    ),
                ],
            ),
            ("By metric", by_metric),
        ],
        extra=[_query_variable("segment", "Segment", f"label_values({c.PERFORMANCE}, segment)")],
    )


def business() -> Dashboard:
    selection = f'{MV}, segment=~"$segment"'
    satisfaction = [
        series(f"{name.upper()} by risk band", "short", Query(f'avg by (band) ({c.SATISFACTION}{{{MV}, metric="{name}"}})', "{{band}}"))
        for name in ("csat", "nps")
    ]
    return assemble(
        "churnops-business",
        "ChurnOps / Business",
        "Churn, revenue at risk, the retention campaign's expected savings and ROI, and satisfaction by risk band.",
        [
            (
                "Churn and revenue",
                [
                    series("Churn rate", "percentunit", Query(f"{c.CHURN_RATE}{{{selection}}}", "{{segment}} ({{source}})")),
                    series(
                        "Monthly revenue at risk by band",
                        "currencyUSD",
                        Query(f"sum by (band) ({c.REVENUE_AT_RISK}{{{selection}}})", "{{band}}"),
                    ),
                    single("Revenue at risk now", "currencyUSD", Query(f"sum({c.REVENUE_AT_RISK}{{{selection}}})")),
                    single("Expected campaign savings", "currencyUSD", Query(f"sum({c.EXPECTED_SAVINGS}{{{selection}}})")),
                ],
            ),
            (
                "Campaign",
                [
                    series(
                        "Expected savings",
                        "currencyUSD",
                        Query(f"{c.EXPECTED_SAVINGS}{{{selection}}}", "{{segment}} {{model}} v{{version}}"),
                    ),
                    series("Campaign ROI", "percentunit", Query(f"{c.CAMPAIGN_ROI}{{{selection}}}", "{{segment}} {{model}} v{{version}}")),
                ],
            ),
            ("Customer satisfaction", satisfaction),
        ],
        extra=[_query_variable("segment", "Segment", f"label_values({c.CHURN_RATE}, segment)")],
    )


def fairness() -> Dashboard:
    limits = (FAIRNESS_GATE * 0.8, FAIRNESS_GATE)
    return assemble(
        "churnops-fairness",
        "ChurnOps / Fairness",
        f"Gaps between segments in positive rate (live) and recall (labelled), against the training gate of {FAIRNESS_GATE}.",
        [
            (
                "Gaps between segments",
                [
                    single("Recall gap (measured)", "short", Query(f'max({c.FAIRNESS_GAP}{{{MV}, metric="recall_gap"}})'), limits=limits),
                    single(
                        "Positive-rate gap", "short", Query(f'max({c.FAIRNESS_GAP}{{{MV}, metric="positive_rate_gap"}})'), limits=limits
                    ),
                    series(
                        "Gaps over time",
                        "short",
                        Query(f"{c.FAIRNESS_GAP}{{{MV}}}", "{{metric}} ({{source}}) {{model}} v{{version}}"),
                        span=24,
                        limits=limits,
                    ),
                    listing("Current gaps", Query(f"{c.FAIRNESS_GAP}{{{MV}}}", instant=True, fmt=PromQueryFormat.TABLE), span=24),
                ],
            ),
        ],
    )


DASHBOARDS: dict[str, Callable[[], Dashboard]] = {
    "serving": serving,
    "drift": drift,
    "performance": performance,
    "business": business,
    "fairness": fairness,
}


def render(name: str) -> str:
    """One dashboard as Grafana JSON (sorted keys, two-space indent, final newline): the same bytes every time."""
    return JSONEncoder(sort_keys=True, indent=2).encode(DASHBOARDS[name]().build()) + "\n"


def write_all(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in DASHBOARDS:
        path = out_dir / f"{name}.json"
        path.write_text(render(name))
        paths.append(path)
    return paths


def queries(board: dict[str, object]) -> list[str]:
    """Every PromQL expression of a rendered dashboard (panel targets and query variables)."""
    out: list[str] = []
    for panel in board.get("panels", []):  # type: ignore[attr-defined]
        out += [t["expr"] for t in panel.get("targets", []) if "expr" in t]
    for variable in board.get("templating", {}).get("list", []):  # type: ignore[attr-defined]
        if variable.get("type") == "query":
            out.append(variable["query"])
    return out


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 1:
        print("usage: python -m churnops.monitoring.dashboards <out-dir>", file=sys.stderr)
        return 2
    for path in write_all(Path(args[0])):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
