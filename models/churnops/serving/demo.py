"""The demo's last steps: score every served customer in batch, then ask the online predictor.

Batch: the latest snapshot of every customer goes through the champion with
top-5 exact SHAP reasons into ``reports/scores.parquet``, with a plot of the
score distribution and of the features that drive risk most often.
Online: a real ``churnops serve`` process is started on a free port, asked
about three customers with a predictor token, its audit trail verified, and
stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from matplotlib.figure import Figure

from churnops.data.parquet import read_parquet
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features.catalog import DOMAINS
from churnops.layout import Layout
from churnops.processes import free_port, wait_for_http
from churnops.serving.audit import verify_file
from churnops.serving.auth import AuthConfig, issue_token
from churnops.serving.batch import BatchReport, score_file
from churnops.serving.explain import CompiledModel
from churnops.training import registry


def latest_snapshot(layout: Layout) -> Path:
    """Every customer's latest feature row, joined across domains, as one Parquet file."""
    frame: pd.DataFrame | None = None
    for domain in DOMAINS:
        part = read_parquet(layout.features / f"{domain}.parquet")
        part = part[part[TIMESTAMP] == part[TIMESTAMP].max()]
        frame = part if frame is None else frame.merge(part, on=[ENTITY, TIMESTAMP])
    assert frame is not None
    out = layout.reports / "latest_snapshot.parquet"
    frame.to_parquet(out, index=False)
    return out


def batch_scores(layout: Layout, reg: registry.RegistryConfig, version: str) -> tuple[BatchReport, pd.DataFrame, Path]:
    model = CompiledModel(registry.load_model(reg, version), threads=os.cpu_count() or 1)
    threshold = registry.version_info(reg, version)["threshold"]
    report = score_file(model, threshold, latest_snapshot(layout), layout.reports / "scores.parquet", top_k=5)
    scores = read_parquet(report.output)
    return report, scores, plot_scores(scores, threshold, layout.reports / "scores.png")


def plot_scores(scores: pd.DataFrame, threshold: float, path: Path) -> Path:
    fig = Figure(figsize=(12, 4.5))  # object API: no pyplot global state
    left, right = fig.subplots(1, 2)
    left.hist(scores["churn_probability"], bins=40, color="#4C72B0")
    left.axvline(threshold, color="#C44E52", linestyle="--", label=f"campaign threshold {threshold:.2f}")
    left.set(title="Churn probability, latest snapshot", xlabel="probability", ylabel="customers", yscale="log")
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


def ask_online(
    layout: Layout, reg: registry.RegistryConfig, mode: str, customer_ids: list[int], timeout_s: float = 180
) -> list[dict[str, Any]]:
    """Start the predictor, score ``customer_ids`` through HTTP with a predictor token, stop it."""
    port = free_port()
    audit = layout.data_dir / "audit" / "demo_predictions.jsonl"
    cmd = [sys.executable, "-m", "churnops.cli", "--data-dir", str(layout.data_dir), "serve", "--port", str(port)]
    cmd += ["--mode", mode, "--tracking-uri", reg.tracking_uri, "--audit-log", str(audit)]
    log = layout.reports / "serve_demo.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        try:
            wait_for_http(f"{url}/v2/health/ready", proc, timeout_s)
        except RuntimeError as e:
            raise RuntimeError(f"the predictor did not start ({e}); see {log}") from None
        key = (layout.data_dir / "secrets" / "jwt.key").read_text().strip()
        token = issue_token(AuthConfig(key=key), "demo", ["predictor"], ttl_s=300)
        body = {"instances": [{"customer_id": c} for c in customer_ids], "parameters": {"top_k": 3}}
        r = httpx.post(f"{url}/v1/models/champion:predict", json=body, headers={"Authorization": f"Bearer {token}"}, timeout=30)
        r.raise_for_status()
        predictions: list[dict[str, Any]] = r.json()["predictions"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    check = verify_file(audit)
    if not check.ok:
        raise RuntimeError(f"audit trail of the demo does not verify: {check.problems}")
    return predictions


def run(layout: Layout, reg: registry.RegistryConfig, mode: str) -> dict[str, Any]:
    """``mode`` is the feature store the predictor reads (embedded SQLite or cluster Redis)."""
    version = registry.resolve_version(reg, registry.CHAMPION)
    report, scores, plot = batch_scores(layout, reg, version)
    riskiest = scores.sort_values("churn_probability", ascending=False).head(3)
    online = ask_online(layout, reg, mode, [int(c) for c in riskiest["customer_id"]])
    return {
        "model_version": version,
        "batch": {"rows": report.rows, "seconds": round(report.seconds, 2), "output": str(report.output), "plot": str(plot)},
        "risk_bands": scores["risk_band"].value_counts().to_dict(),
        "online": online,
    }
