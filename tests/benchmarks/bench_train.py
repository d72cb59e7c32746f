"""Training benchmark: full AutoML on the default data (50,000 customers, 116 features), 2 cores.
    verdicts = ", ".join(f"{g.name}={'pass' if g.passed else 'FAIL'}" for g in gates)
    print(f"peak memory (RSS, whole process): {peak_rss_mb():,.0f} MB; gates: {verdicts}")
and in the same run the baseline: one LightGBM with default settings on the same
split, so the AUC gain of AutoML and its cost are both visible.
"""

from __future__ import annotations

import argparse
import logging
import os
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
from lightgbm import LGBMClassifier
from sklearn.metrics import brier_score_loss, roc_auc_score

from churnops.data.config import GeneratorConfig
from churnops.data.generator import save_manifest, write_raw
from churnops.features import steps as foundation
from churnops.features.engine import build_features
from churnops.layout import Layout
from churnops.training.automl import preprocessor
from churnops.training.config import SearchBudget, TrainingConfig
from churnops.training.dataset import churn_spec, time_holdout, xy
from churnops.training.runs import training_frame
from churnops.training.train import assess, fit


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--customers", type=int, default=int(os.environ.get("BENCH_CUSTOMERS", "50000")))
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--budget-minutes", type=float, default=10.0)
    args = parser.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.getLogger("mlflow").setLevel(logging.WARNING)

    layout = Layout(Path(tempfile.mkdtemp(prefix="bench-train-")))
    cfg = GeneratorConfig(n_customers=args.customers)
    counts = write_raw(cfg, layout.raw)
    save_manifest(cfg, layout.raw, counts)
    build_features(cfg.calendar, layout.raw, layout.features)
    foundation.publish(layout, "embedded", {})
    t = time.perf_counter()
    frame = training_frame(layout, "embedded", {})
    load_s = time.perf_counter() - t
    spec = churn_spec()
    print(
        f"training table: {len(frame):,} rows x {len(spec.features)} features from Feast in {load_s:.1f} s; churn rate {frame[spec.target_column].mean():.3f}"
    )

    split = time_holdout(frame, spec)
    x, y = xy(split.train, spec)
    xh, yh = xy(split.holdout, spec)
    t = time.perf_counter()
    base = LGBMClassifier(n_jobs=2, verbose=-1, random_state=0)
    prep = preprocessor(spec, "lightgbm").fit(x)
    base.fit(prep.transform(x), y)
    p = np.asarray(base.predict_proba(prep.transform(xh)))[:, 1]
    base_s = time.perf_counter() - t
    print(f"baseline  LightGBM defaults : {base_s:7.1f} s   holdout AUC {roc_auc_score(yh, p):.4f}   Brier {brier_score_loss(yh, p):.4f}")

    tcfg = TrainingConfig(seed=42, budget=SearchBudget(n_trials=args.trials, timeout_s=args.budget_minutes * 60))
    t = time.perf_counter()
    fitted = fit(frame, spec, tcfg)
    ev, _, gates = assess(fitted, tcfg, None, None)
    total_s = time.perf_counter() - t
    s = fitted.search
    print(
        f"ChurnOps  AutoML + ensemble  : {total_s:7.1f} s   holdout AUC {ev.roc_auc:.4f}   Brier {ev.brier:.4f}   "
        f"({s.trials_completed} trials completed, {s.trials_pruned} pruned, {s.trials_failed} failed; search {s.seconds:.0f} s; "
        f"{len(fitted.selection.selected)} features selected; ensemble {fitted.choice.combiner.kind} of {', '.join(fitted.model.families)})"
    )
    verdicts = ", ".join(g.name + "=" + ("pass" if g.passed else "FAIL") for g in gates)
    print(f"peak memory (RSS, whole process): {peak_rss_mb():,.0f} MB; gates: {verdicts}")
    print(f"best CV AUC by family: {', '.join(f'{c.family} {c.cv_auc:.4f}' for c in s.ranked())}")


if __name__ == "__main__":
    main()
