"""The feature steps of a run, and the data foundation run that chains them.

features -> validate -> Feast (apply, backfill the online store) -> online
lookup; ``run_foundation`` runs the data steps first. Small functions over
explicit paths and config, shared by the CLI, the demo and the pipelines.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from tqdm import tqdm

from churnops.data.config import GeneratorConfig
from churnops.data.parquet import read_parquet
from churnops.data.raw import count_rows, raw_bytes, read_calendar, read_raw
from churnops.data.schema import Calendar
from churnops.data.steps import check, generate, validate_raw
from churnops.data.validation import ValidationRun, validate
from churnops.features.catalog import DOMAINS, FEATURES
from churnops.features.engine import build_features
from churnops.features.validation import feature_suite
from churnops.layout import Layout
from churnops.parallel.choice import LOCAL, EngineConfig
from churnops.parallel.runner import open_engine
from churnops_feast import store as feast_store
from churnops_feast.definitions import FEATURE_TTL, TRAINING_SERVICE

log = logging.getLogger(__name__)


@dataclass
class StepTimes:
    seconds: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 2)


def features(layout: Layout, engine: EngineConfig = LOCAL) -> dict[str, int]:
    """The feature build, one task per raw part, on the engine ``engine`` chooses for the raw tables' size."""
    calendar = read_calendar(layout.raw)
    with (
        open_engine(engine, raw_bytes(layout.raw)) as runner,
        tqdm(total=count_rows(layout.raw, "customers"), desc=f"compute features ({runner.name} × {runner.workers})", unit="cust") as bar,
    ):
        return build_features(calendar, layout.raw, layout.features, progress=bar.update, engine=runner)


def validate_features(layout: Layout) -> ValidationRun:
    run = ValidationRun()
    for domain in tqdm(DOMAINS, desc="validate features", unit="view"):
        run.reports.append(validate(read_parquet(layout.features / f"{domain}.parquet"), f"features_{domain}", feature_suite(domain)))
    return run


def serving_window(calendar: Calendar, serve_day: int | None = None) -> tuple[datetime, datetime]:
    """The backfill window of the online store: customers with a snapshot within one TTL of the end.

    Older rows belong to customers that churned long ago; serving never needs them.
    """
    day = calendar.history_days if serve_day is None else serve_day
    end = calendar.day_timestamp(day).to_pydatetime() + timedelta(seconds=1)
    return end - FEATURE_TTL, end


def publish(layout: Layout, mode: feast_store.Mode, env: Mapping[str, str], serve_day: int | None = None) -> tuple[float, int]:
    """Apply the Feast objects and backfill the online store; returns (seconds, rows materialized).

    ``serve_day`` makes an earlier snapshot the served one (default: the end of the history); the
    demo serves the last labelled snapshot, so that the outcomes of what it predicts can arrive.
    """
    calendar = read_calendar(layout.raw)
    if mode == "cluster":
        feast_store.load_into_postgres(feast_store.pg_dsn(env), layout.features)
    store = feast_store.open_store(mode, env, layout.data_dir)
    feast_store.apply(store, feast_store.objects_for(mode, layout.features))
    start, end = serving_window(calendar, serve_day)
    began = time.perf_counter()
    # Backfill explicitly: materialize_incremental would start at now - ttl, far from this history.
    feast_store.materialize(store, start, end)
    seconds = time.perf_counter() - began
    return seconds, len(served_customers(layout, calendar, serve_day)) * len(DOMAINS)


def publish_incremental(layout: Layout, mode: feast_store.Mode, env: Mapping[str, str]) -> float:
    """Materialize rows that arrived since the last run, up to the end of the history."""
    calendar = read_calendar(layout.raw)
    store = feast_store.open_store(mode, env, layout.data_dir)
    began = time.perf_counter()
    feast_store.materialize_incremental(store, serving_window(calendar)[1])
    return time.perf_counter() - began


def served_customers(layout: Layout, calendar: Calendar, serve_day: int | None = None) -> set[int]:
    """Customers whose latest snapshot falls in the serving window."""
    start, end = serving_window(calendar, serve_day)
    frame = read_parquet(layout.features / "demographic.parquet", columns=["customer_id", "event_timestamp"])
    ts = frame["event_timestamp"]
    return {int(c) for c in frame.loc[(ts >= start) & (ts < end), "customer_id"]}


def lookup(layout: Layout, mode: feast_store.Mode, env: Mapping[str, str], customer_ids: list[int]) -> dict[str, list[Any]]:
    store = feast_store.open_store(mode, env, layout.data_dir)
    return feast_store.online_features(store, customer_ids, TRAINING_SERVICE)


def active_customers(layout: Layout, how_many: int | None = None, serve_day: int | None = None) -> list[int]:
    """Customers in the served snapshot (the latest, or ``serve_day``'s): the ones the online store serves."""
    frame = read_parquet(layout.features / "demographic.parquet", columns=["customer_id", "event_timestamp"])
    served = read_calendar(layout.raw).day_timestamp(serve_day) if serve_day is not None else frame["event_timestamp"].max()
    ids = [int(c) for c in frame.loc[frame["event_timestamp"] == served, "customer_id"]]
    return ids if how_many is None else ids[:how_many]


def plot_profile(layout: Layout) -> Path:
    """Churn rate by snapshot and segment, and engagement of churned vs retained customers."""
    labels = read_raw(layout.raw, "labels")
    demo = read_parquet(layout.features / "demographic.parquet", columns=["customer_id", "event_timestamp", "segment"])
    eng = read_parquet(layout.features / "engagement.parquet", columns=["customer_id", "event_timestamp", "engagement_score"])
    joined = labels.merge(demo, on=["customer_id", "event_timestamp"]).merge(eng, on=["customer_id", "event_timestamp"])
    fig = Figure(figsize=(11, 4))  # object API: no pyplot global state, no display backend
    ax1, ax2 = fig.subplots(1, 2)
    rate = joined.pivot_table(index="event_timestamp", columns="segment", values="churned_30d", aggfunc="mean")
    rate.index = [pd.Timestamp(t).strftime("%Y-%m-%d") for t in rate.index]
    rate.plot(kind="bar", ax=ax1, rot=0)
    ax1.set(title="30-day churn rate by snapshot and segment", ylabel="churn rate", xlabel="snapshot")
    ax1.set_ylim(0, float(rate.to_numpy().max()) * 1.35)  # head room for the legend
    ax1.legend(title="segment", ncols=3, loc="upper center", fontsize=8)
    for value, name in ((0, "retained"), (1, "churned")):
        ax2.hist(joined.loc[joined["churned_30d"] == value, "engagement_score"], bins=40, alpha=0.6, density=True, label=name)
    ax2.set(title="Engagement score at snapshot", xlabel="engagement_score", ylabel="density")
    ax2.legend()
    fig.tight_layout()
    out = layout.reports / "data_profile.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


def run_foundation(
    cfg: GeneratorConfig, layout: Layout, mode: feast_store.Mode, env: Mapping[str, str], serve_day: int | None = None
) -> dict[str, Any]:
    """The whole foundation end to end; returns a summary (also written to reports/foundation.json)."""
    times = StepTimes()
    with times.step("generate"):
        counts = generate(cfg, layout)
    with times.step("validate_raw"):
        raw_run = validate_raw(layout)
        check(raw_run, layout, "raw")
    with times.step("features"):
        feature_rows = features(layout)
    with times.step("validate_features"):
        feature_run = validate_features(layout)
        check(feature_run, layout, "features")
    with times.step("feast_apply_materialize"):
        mat_seconds, mat_rows = publish(layout, mode, env, serve_day)
    ids = active_customers(layout, 3, serve_day)
    online = lookup(layout, mode, env, ids)
    profile = plot_profile(layout)
    labels = read_raw(layout.raw, "labels")
    summary: dict[str, Any] = {
        "customers": cfg.n_customers,
        "raw_rows": counts,
        "feature_rows": feature_rows,
        "features": len(FEATURES),
        "feature_service": TRAINING_SERVICE,
        "label_rows": len(labels),
        "churn_rate_30d": round(float(labels["churned_30d"].mean()), 4),
        "validation_pass_rate": {"raw": raw_run.pass_rate, "features": feature_run.pass_rate},
        "materialize_rows_per_s": round(mat_rows / mat_seconds, 1),
        "online_sample": {k: online[k][:3] for k in ("customer_id", "segment", "mrr", "seat_utilization_30d", "engagement_score")},
        "online_features_returned": len(online) - 1,
        "step_seconds": times.seconds,
        "profile_plot": str(profile),
        "mode": mode,
    }
    (layout.reports / "foundation.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return summary
