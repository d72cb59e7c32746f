"""Batch scoring in the story: every served customer through the champion, with its top-5 exact reasons.

The served snapshot (all feature domains joined) goes through ``churnops score``'s
code into ``reports/scores.parquet``, with a plot of the score distribution and of
the features that most often drive risk. The batch run is logged for monitoring
and bound to the audit trail like any `churnops score` run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from churnops.data.parquet import read_parquet
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features.catalog import DOMAINS
from churnops.layout import Layout
from churnops.serving.batch import BatchReport, score_file
from churnops.serving.explain import CompiledModel
from churnops.training import registry


def snapshot(layout: Layout, at: pd.Timestamp) -> Path:
    """Every customer's feature row of the snapshot ``at``, joined across domains, as one Parquet file."""
    frame: pd.DataFrame | None = None
    for domain in DOMAINS:
        part = read_parquet(layout.features / f"{domain}.parquet")
        part = part[part[TIMESTAMP] == at]
        frame = part if frame is None else frame.merge(part, on=[ENTITY, TIMESTAMP])
    assert frame is not None
    out = layout.reports / "served_snapshot.parquet"
    out.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(out, index=False)
    return out


def batch_scores(layout: Layout, reg: registry.RegistryConfig, version: str, at: pd.Timestamp) -> tuple[BatchReport, pd.DataFrame, Path]:
    model = CompiledModel(registry.load_model(reg, version), threads=os.cpu_count() or 1)
    threshold = registry.version_info(reg, version)["threshold"]
    report = score_file(model, threshold, snapshot(layout, at), layout.reports / "scores.parquet", top_k=5)
    scores = read_parquet(report.output)
    return report, scores, plot_scores(scores, threshold, layout.reports / "scores.png")


def plot_scores(scores: pd.DataFrame, threshold: float, path: Path) -> Path:
    fig = Figure(figsize=(12, 4.5))  # object API: no pyplot global state
    left, right = fig.subplots(1, 2)
    left.hist(scores["churn_probability"], bins=40, color="#4C72B0")
    left.axvline(threshold, color="#C44E52", linestyle="--", label=f"campaign threshold {threshold:.2f}")
    left.set(title="Churn probability, served snapshot", xlabel="probability", ylabel="customers", yscale="log")
    left.legend()
    if "reason_1_feature" in scores.columns:
        top = scores.loc[scores["reason_1_contribution"] > 0, "reason_1_feature"].value_counts().head(12)[::-1]
        right.barh(top.index, top.to_numpy(), color="#DD8452")
        right.set(title="Strongest reason raising risk (count of customers)", xlabel="customers", xscale="log")
    else:
        right.text(0.5, 0.5, "this model has no exact attribution", ha="center", va="center")
        right.set_axis_off()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
