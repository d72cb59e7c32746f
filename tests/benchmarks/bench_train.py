"""Training benchmark: the default AutoML search on a small customer table and on the default data, 2 cores.

Two cases, each with its baselines measured in the same run on the same split:
- small table: about 5,000 rows x 20 columns written as a CSV export and trained the way
  `churnops train --data` does (ingest, default budget scaled to the table), against a LightGBM with
  default settings and a LightGBM tuned by Optuna on the same grouped folds;
- default data: 50,000 customers x 116 features from Feast, against a default LightGBM.

Every measured step (one training run or one baseline) runs in a fresh process that loads its table
from a file, so its memory is its own and not the data generation's. Just before the step the process's
peak-RSS mark is reset to its current RSS (Linux: ``/proc/self/clear_refs``), so the printed peak is
the step's, and "+N MB" is what the step added above the interpreter, the libraries and the loaded
table. Every contender gets the same threads per model (one on small tables, see
``churnops.training.config.model_threads``).
"""

from __future__ import annotations

import argparse
import logging
import os
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from lightgbm import LGBMClassifier
from sklearn.metrics import brier_score_loss, roc_auc_score

from churnops.data.config import GeneratorConfig
from churnops.data.generator import generate_blocks, save_manifest, write_raw
from churnops.data.ingest import ingest
from churnops.data.parquet import read_parquet
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features import steps as foundation
from churnops.features.catalog import DOMAINS
from churnops.features.engine import build_features, compute_block_features
from churnops.layout import Layout
from churnops.training.automl import preprocessor, suggest_params
from churnops.training.config import SearchBudget, TrainingConfig, model_threads, plan_search
from churnops.training.dataset import churn_spec, cv_folds, spec_from_schema, time_holdout, xy
from churnops.training.evaluation import bootstrap_auc_delta
from churnops.training.runs import training_frame
from churnops.training.train import assess, fit

SMALL_COLUMNS = (
    "segment",
    "plan",
    "contract_type",
    "mrr",
    "seat_utilization_30d",
    "days_since_last_login",
    "failed_payments_90d",
    "tickets_90d",
    "days_to_renewal",
    "engagement_score",
    "company_size",
    "tenure_days",
    "has_dedicated_csm",
    "onboarding_completed",
    "auto_renew",
    "logins_mean_30d",
    "active_users_mean_30d",
    "csat_mean_90d",
    "nps_last",
    "avg_days_late_90d",
)


@dataclass
class Measured:
    """What one step in its own process returns."""

    name: str
    seconds: float
    peak_rss_mb: float  # the process's peak RSS during the step
    step_rss_mb: float  # that peak minus the RSS just before the step
    holdout_y: np.ndarray
    holdout_p: np.ndarray
    detail: dict[str, Any] = field(default_factory=dict)


def _status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak) of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{key} not in /proc/self/status")


def _reset_peak() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def _measure(name: str, step: Callable[[], tuple[np.ndarray, np.ndarray, dict[str, Any]]]) -> Measured:
    before = _status_mb("VmRSS")
    if not _reset_peak():  # the peak then includes imports and loading: an upper bound
        print(f"note: cannot reset the peak-RSS mark; {name}'s peak includes imports and loading")
    started = time.perf_counter()
    y, p, detail = step()
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    return Measured(name, seconds, peak, peak - before, y, p, detail)


def _quiet() -> None:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)


def _load(kind: str, path: str) -> tuple[pd.DataFrame, Any]:
    """The table and its DatasetSpec: a user's CSV through ingest, or the platform's Feast training frame."""

    if kind == "own":
        table = ingest(Path(path), "account", "as_of", "churned")
        return table.frame, spec_from_schema(table.schema, "segment", "mrr", 30)
    return read_parquet(Path(path)), churn_spec()


def run_churnops(kind: str, path: str, budget: SearchBudget) -> Measured:
    """The default training path: selection, the planned search, ensemble, calibration, holdout evaluation."""

    _quiet()
    frame, spec = _load(kind, path)
    cfg = TrainingConfig(seed=42, budget=budget)

    def step() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        fitted = fit(frame, spec, cfg)
        _, _, gates = assess(fitted, cfg, None, None)
        s = fitted.search
        y = fitted.split.holdout[spec.target_column].to_numpy()
        return (
            y,
            fitted.model.predict_proba(fitted.split.holdout),
            {
                "plan": fitted.plan.describe(),
                "expected_s": fitted.plan.expected_s,
                "trials": f"{s.trials_completed} completed, {s.trials_pruned} pruned, {s.trials_failed} failed"
                + (", stopped early" if s.stopped_early else ""),
                "ensemble": f"{fitted.choice.combiner.kind} of {', '.join(fitted.model.families)}",
                "features": len(fitted.selection.selected),
                "gates": ", ".join(g.name + "=" + ("pass" if g.passed else "FAIL") for g in gates),
                "cv_auc": ", ".join(f"{c.family} {c.cv_auc:.4f}" for c in s.ranked()),
            },
        )

    return _measure("ChurnOps AutoML (default budget)" if budget == SearchBudget() else "ChurnOps AutoML", step)


def run_lightgbm(kind: str, path: str, tuned_trials: int) -> Measured:
    """LightGBM on the same split and features: default settings, or tuned by Optuna (TPE) on the same grouped folds."""

    _quiet()
    frame, spec = _load(kind, path)

    def step() -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
        split = time_holdout(frame, spec)
        x, y = xy(split.train, spec)
        xh, yh = xy(split.holdout, spec)
        prep = preprocessor(spec, "lightgbm").fit(x)
        xt, xht = prep.transform(x), prep.transform(xh)
        threads = model_threads(len(x), len(spec.features))
        params: dict[str, Any] = {}
        if tuned_trials:
            folds = cv_folds(split.train, spec, plan_search(SearchBudget(), len(x), len(spec.features)).n_folds, 42)

            def objective(trial: optuna.Trial) -> float:
                candidate = suggest_params(trial, "lightgbm")
                aucs = []
                for tr, va in folds:
                    model = LGBMClassifier(**candidate, subsample=0.8, subsample_freq=1, n_jobs=threads, verbose=-1, random_state=0)
                    model.fit(xt[tr], y[tr])
                    aucs.append(roc_auc_score(y[va], np.asarray(model.predict_proba(xt[va]))[:, 1]))
                return float(np.mean(aucs))

            study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
            study.optimize(objective, n_trials=tuned_trials)
            params = {**suggest_params(optuna.trial.FixedTrial(study.best_params), "lightgbm"), "subsample": 0.8, "subsample_freq": 1}
        model = LGBMClassifier(**params, n_jobs=threads, verbose=-1, random_state=0).fit(xt, y)
        return yh, np.asarray(model.predict_proba(xht))[:, 1], {"threads": threads}

    name = f"LightGBM tuned ({tuned_trials} Optuna trials)" if tuned_trials else "LightGBM defaults"
    return _measure(name, step)


def in_own_process(func: Callable[..., Measured], *args: Any) -> Measured:
    """Run one step in a fresh interpreter, so that its peak memory is its own."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(func, *args).result()


def report(results: list[Measured], reference: str) -> None:

    ref = next(r for r in results if r.name.startswith(reference))
    for r in results:
        auc = roc_auc_score(r.holdout_y, r.holdout_p)
        line = (
            f"  {r.name:40s} {r.seconds:7.1f} s   holdout AUC {auc:.4f}   Brier {brier_score_loss(r.holdout_y, r.holdout_p):.4f}   "
            f"peak RSS {r.peak_rss_mb:6,.0f} MB (step +{r.step_rss_mb:5,.0f} MB)"
        )
        if r is not ref:
            d = bootstrap_auc_delta(r.holdout_y, ref.holdout_p, r.holdout_p, "baseline", resamples=500, seed=0)
            line += f"   {reference} minus this: {d.delta_auc:+.4f} (95% CI {d.ci_low:+.4f}..{d.ci_high:+.4f})"
        print(line, flush=True)
    for key, value in ref.detail.items():
        if key != "expected_s":
            print(f"    {key}: {value}")
    if "expected_s" in ref.detail:
        print(f"    time: expected {ref.detail['expected_s']:.0f} s, measured {ref.seconds:.0f} s")


def small_table(root: Path, customers: int, tuned_trials: int) -> None:
    """A CSV export of ~5,000 rows x 20 columns, as a user brings it."""

    cfg = GeneratorConfig(n_customers=customers, block_size=customers, seed=11)
    block = next(generate_blocks(cfg))
    feats = compute_block_features(cfg.calendar, block.tables, cfg.calendar.labelled_snapshot_days())
    frame = block.labels[[ENTITY, TIMESTAMP, "churned_30d"]]
    for domain in DOMAINS:
        frame = frame.merge(feats[domain], on=[ENTITY, TIMESTAMP], validate="one_to_one")
    own = frame[list(SMALL_COLUMNS)].copy()
    own.insert(0, "account", "acct-" + frame[ENTITY].astype(str))
    own.insert(1, "as_of", frame[TIMESTAMP].dt.strftime("%Y-%m-%d"))
    own["churned"] = np.where(frame["churned_30d"] == 1, "yes", "no")
    path = root / "customers.csv"
    own.to_csv(path, index=False)
    print(f"\nsmall table: {len(own):,} rows x {len(SMALL_COLUMNS)} feature columns (CSV), churn rate {frame['churned_30d'].mean():.3f}")
    results = [
        in_own_process(run_lightgbm, "own", str(path), 0),
        in_own_process(run_lightgbm, "own", str(path), tuned_trials),
        in_own_process(run_churnops, "own", str(path), SearchBudget()),
    ]
    report(results, "ChurnOps")


def default_data(root: Path, customers: int, budget: SearchBudget) -> None:
    """The platform's data: generated customers, features, Feast, historical retrieval."""

    layout = Layout(root / "data")
    cfg = GeneratorConfig(n_customers=customers)
    counts = write_raw(cfg, layout.raw)
    save_manifest(cfg, layout.raw, counts)
    build_features(cfg.calendar, layout.raw, layout.features)
    foundation.publish(layout, "embedded", {})
    t = time.perf_counter()
    frame = training_frame(layout, "embedded", {})
    load_s = time.perf_counter() - t
    path = root / "training.parquet"
    frame.to_parquet(path, index=False)
    spec = churn_spec()
    print(
        f"\ndefault data: {len(frame):,} rows x {len(spec.features)} features from Feast in {load_s:.1f} s; "
        f"churn rate {frame[spec.target_column].mean():.3f}"
    )
    results = [in_own_process(run_lightgbm, "feast", str(path), 0), in_own_process(run_churnops, "feast", str(path), budget)]
    report(results, "ChurnOps")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=int(os.environ.get("BENCH_CUSTOMERS", "50000")))
    parser.add_argument("--small-customers", type=int, default=4_600, help="customers of the small table (about 5,000 rows)")
    parser.add_argument("--tuned-trials", type=int, default=40, help="Optuna trials of the tuned LightGBM baseline")
    parser.add_argument("--trials", type=int, default=None, help="AutoML trials on the default data (default: scaled to the table)")
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    parser.add_argument("--small-only", action="store_true", help="skip the default data (minutes of data generation)")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-train-"))
    small_table(root, args.small_customers, args.tuned_trials)
    if not args.small_only:
        default_data(root, args.customers, SearchBudget(n_trials=args.trials, timeout_s=args.budget_minutes * 60 or None))


if __name__ == "__main__":
    main()
