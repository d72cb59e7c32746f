"""Monitoring benchmark: drift alert calibration, concept drift through delayed labels, speed against Evidently, live cost.

Every figure comes from generated customers (``churnops.data``) and the
monitoring code as the predictor and the window job run it:
1. Model: LightGBM fitted on weekly pre-drift snapshots, calibrated (isotonic)
   on other customers' pre-drift snapshots, like the platform's models.
2. Drift alerts: a reference profile from customers of one seed; windows of
   ``--window`` predictions drawn without overlap from customers of another
   seed, of the same process (no drift) and under the covariate preset, on
   the same snapshot days. Share of windows that raise the drift alert, by
   the window job (KS on raw values) and by the live path (binned KS).
   Goals: at most 5 % without drift, at least 95 % with covariate drift.
3. Concept drift: weekly cohorts of predictions under the concept preset (and
   without drift, as the control); each cohort's outcomes arrive 30 days
   later. The performance path (calibration check of observed against
   expected churners) must catch it; printed: the day it does, and measured
   against CBPE-estimated AUC per cohort.
4. Speed against Evidently on the same work: the reference and a window of
   100 features (and the score) x 100,000 rows; each side computes PSI, JS
   and KS per numeric column, PSI, JS and chi-square per categorical one,
   the reference included (ChurnOps builds its profile, Evidently reads the
   raw reference). Evidently runs its registered statistical tests only (no
   Report, no rendering); both sides run on one thread. Cold is the first
   call in a fresh interpreter, warm the median of ``--speed-runs`` in this
   one; the ratio is printed for both, then whether the two sides compute the
   same numbers (Evidently also run on ChurnOps' bins for PSI and JS).
5. Live cost per prediction: ``LiveDriftMonitor.observe`` alone, and a
   one-row LightGBM prediction with and without it.

Run ``python tests/benchmarks/bench_monitoring.py`` (a few minutes; ``--quick``
for a smoke run; ``--only speed`` for one part). Exits 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import json
import math
import os
import pickle
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from scipy import stats
from sklearn.isotonic import IsotonicRegression
from sklearn.metrics import roc_auc_score

from churnops.data.config import GeneratorConfig, with_drift
from churnops.data.generator import generate_blocks
from churnops.features.catalog import FEATURES
from churnops.features.engine import compute_block_features
from churnops.monitoring.drift import DriftPolicy, DriftResult, Layout, WindowCounts, chi_square, count_frame, count_rows, evaluate
from churnops.monitoring.live import LiveDriftMonitor, LiveWindow
from churnops.monitoring.performance import calibration_check, estimated_auc
from churnops.monitoring.profile import KS_SKETCH_POINTS, NumericProfile, build_profile

NUMERIC = [f.name for f in FEATURES if f.dtype != "string"]
CATEGORICAL = [f.name for f in FEATURES if f.dtype == "string"]
KEYS = ["customer_id", "event_timestamp"]
DRIFT_START = 150
HISTORY = 240
WINDOW_DAYS = tuple(range(180, HISTORY + 1, 5))  # snapshot days of the drift windows: 30 to 90 days into the drift
SECTIONS = ("concept", "alerts", "speed", "live")
MODEL_ONLY_CUSTOMERS = 4_000  # the model that scores the frames when the concept study is skipped


@dataclass
class Row:
    name: str
    value: str
    goal: str = ""
    ok: bool | None = None


def log(msg: str) -> None:
    print(msg, flush=True)


def features_of(cfg: GeneratorConfig, days: Sequence[int] | None = None, labels: bool = False) -> pd.DataFrame:
    """Every catalog feature of the generated customers at the snapshot days (default: the calendar's), one frame."""
    frames = []
    for block in generate_blocks(cfg):
        merged: pd.DataFrame | None = None
        for frame in compute_block_features(cfg.calendar, block.tables, snapshot_days=days).values():
            merged = frame if merged is None else merged.merge(frame, on=KEYS)
        assert merged is not None
        if labels:
            merged = merged.merge(block.labels[[*KEYS, "churned_30d"]], on=KEYS, how="left")
        frames.append(merged)
    out = pd.concat(frames, ignore_index=True)
    out["day"] = (out["event_timestamp"] - pd.Timestamp(cfg.calendar.start_date, tz="UTC")).dt.days
    return out


class Model:
    """LightGBM on every catalog feature with isotonic calibration: scores behave like the served ones."""

    def __init__(self, train: pd.DataFrame, calibration: pd.DataFrame) -> None:
        self.categories = {c: sorted(train[c].dropna().unique()) for c in CATEGORICAL}
        self.booster = lgb.LGBMClassifier(n_estimators=150, learning_rate=0.05, num_leaves=31, n_jobs=1, verbose=-1)
        self.booster.fit(self.matrix(train), train["churned_30d"].astype(int))
        self.iso = IsotonicRegression(out_of_bounds="clip", y_min=1e-4, y_max=1 - 1e-4)
        self.iso.fit(self.raw(calibration), calibration["churned_30d"].astype(int))

    def matrix(self, frame: pd.DataFrame) -> pd.DataFrame:
        x = frame[NUMERIC + CATEGORICAL].copy()
        for c in CATEGORICAL:
            x[c] = pd.Categorical(x[c], categories=self.categories[c])
        return x

    def raw(self, frame: pd.DataFrame) -> np.ndarray:
        proba = np.asarray(self.booster.predict_proba(self.matrix(frame)))
        out: np.ndarray = proba[:, 1]
        return out

    def numbers(self, frame: pd.DataFrame) -> np.ndarray:
        """The float matrix a server feeds the booster: category codes in place of strings, NaN where missing."""
        x = self.matrix(frame)
        for c in CATEGORICAL:
            codes = x[c].cat.codes.to_numpy(dtype=float)
            x[c] = np.where(codes < 0, np.nan, codes)
        return x.to_numpy(dtype=float)

    def score(self, frame: pd.DataFrame) -> np.ndarray:
        out: np.ndarray = self.iso.predict(self.raw(frame))
        return out


# --- 1 and 3: the model, and concept drift through delayed labels -----------------------------------------


def concept_study(customers: int, rows: list[Row]) -> Model:
    log(f"[concept] generating {customers:,} customers, weekly snapshots, with and without the concept preset ...")
    base = GeneratorConfig(n_customers=customers, block_size=10_000, history_days=HISTORY, snapshot_every_days=7, seed=5)
    t = time.perf_counter()
    concept = features_of(with_drift(base, "concept", DRIFT_START), labels=True)
    control = features_of(base, labels=True)
    log(f"[concept] {len(concept):,} + {len(control):,} rows in {time.perf_counter() - t:.0f}s")
    pre = concept[(concept["day"] + 30 <= DRIFT_START) & concept["churned_30d"].notna()]
    group = concept["customer_id"] % 4
    t = time.perf_counter()
    model = Model(pre[group.loc[pre.index] == 0], pre[group.loc[pre.index] == 1])
    log(f"[concept] model fitted and calibrated in {time.perf_counter() - t:.1f}s")
    evaluation = pre[group.loc[pre.index] >= 2]
    reference_auc = float(roc_auc_score(evaluation["churned_30d"], model.score(evaluation)))
    rows.append(Row("reference AUC (pre-drift cohorts, held-out customers)", f"{reference_auc:.3f}"))
    caught: dict[str, int | None] = {}
    for name, frame in (("concept", concept), ("control", control)):
        held = frame[(frame["customer_id"] % 4 >= 2) & frame["churned_30d"].notna()].copy()
        held["score"] = model.score(held)
        log(f"[concept] {name}: weekly cohorts (outcomes arrive 30 days after the cohort's day)")
        log("   day  arrives  labelled  observed  expected  ratio  AUC meas  AUC est  breach")
        caught[name] = None
        worst_auc_drop = 0.0
        for day in sorted(int(d) for d in held["day"].unique()):
            cohort = held[held["day"] == day]
            y, p = cohort["churned_30d"].to_numpy(float), cohort["score"].to_numpy()
            check = calibration_check(y, p)
            measured, estimated = float(roc_auc_score(y, p)), estimated_auc(p)
            if day >= DRIFT_START - 30:
                worst_auc_drop = max(worst_auc_drop, reference_auc - measured)
            arrives = day + 30
            if check.breached and caught[name] is None:
                caught[name] = arrives
            log(
                f"  {day:4d}  {arrives:7d}  {check.labelled:8,d}  {check.observed:8.0f}  {check.expected:8.1f}  {check.ratio or 0:5.2f}"
                f"  {measured:8.3f}  {estimated or 0:7.3f}  {'yes' if check.breached else ''}"
            )
        if name == "concept":
            day_caught = caught[name]
            after = None if day_caught is None else day_caught - DRIFT_START
            rows.append(
                Row(
                    "concept drift caught by the performance path",
                    "not caught" if after is None else f"day {day_caught}: {after} days after the drift began",
                    "caught once labels arrive",
                    after is not None,
                )
            )
            rows.append(Row("  largest measured AUC drop below reference (concept)", f"{worst_auc_drop:.3f}", "for information"))
        else:
            rows.append(
                Row(
                    "performance-path false alarm without drift",
                    "none" if caught[name] is None else f"day {caught[name]}",
                    "none",
                    caught[name] is None,
                )
            )
    return model


def fit_model(customers: int) -> Model:
    """The model alone, by the concept study's recipe on customers without drift: runs that skip the study still need scores."""
    log(f"[model] generating {customers:,} customers without drift and fitting the model ...")
    frame = features_of(
        GeneratorConfig(n_customers=customers, block_size=10_000, history_days=HISTORY, snapshot_every_days=7, seed=5), labels=True
    )
    pre = frame[(frame["day"] + 30 <= DRIFT_START) & frame["churned_30d"].notna()]
    group = pre["customer_id"] % 4
    return Model(pre[group == 0], pre[group == 1])


# --- 2: drift alert calibration -----------------------------------------------------------------------


def alert_rates(
    profile_frame: pd.DataFrame, model: Model, pools: dict[str, pd.DataFrame], window: int, windows: int, rows: list[Row]
) -> None:
    features = NUMERIC + CATEGORICAL
    profile = build_profile(profile_frame, model.score(profile_frame), NUMERIC, CATEGORICAL)
    layout = Layout.of(profile)
    policy = DriftPolicy()
    for name, pool in pools.items():
        n = min(windows, len(pool) // window)
        order = np.random.default_rng(0).permutation(len(pool))
        scores = model.score(pool)
        job_alerts = live_alerts = by_features = by_score = 0
        shares: list[float] = []
        t = time.perf_counter()
        for k in range(n):
            idx = order[k * window : (k + 1) * window]
            frame = pool.iloc[idx][features]
            job = evaluate(layout, count_frame(layout, frame, scores[idx]), policy)
            cells = frame.astype(object).to_numpy()
            cells[pd.isna(cells)] = None
            live = evaluate(layout, count_rows(layout, cells, scores[idx]), policy)
            job_alerts += bool(job.drift_detected)
            live_alerts += bool(live.drift_detected)
            by_features += job.drifted_share is not None and job.drifted_share >= policy.drifted_share
            by_score += job.score.drifted
            shares.append(job.drifted_share or 0.0)
        log(
            f"[drift] {name}: {n} windows of {window} in {time.perf_counter() - t:.1f}s; drifted share median {np.median(shares):.3f},"
            f" max {max(shares):.3f} (threshold {policy.drifted_share});"
            f" window job alerts by the feature share {by_features}, by score drift {by_score}"
        )
        if name == "no drift":
            rows.append(
                Row(
                    f"windows without drift raising an alert (job, {n})",
                    f"{job_alerts / n:.1%}",
                    "<= 5 %",
                    job_alerts / n <= 0.05 and n >= 100,
                )
            )
            rows.append(
                Row(
                    f"windows without drift raising an alert (live, {n})",
                    f"{live_alerts / n:.1%}",
                    "<= 5 %",
                    live_alerts / n <= 0.05 and n >= 100,
                )
            )
        else:
            rows.append(
                Row(f"windows with covariate drift raising an alert (job, {n})", f"{job_alerts / n:.1%}", ">= 95 %", job_alerts / n >= 0.95)
            )
            rows.append(
                Row(
                    f"windows with covariate drift raising an alert (live, {n})",
                    f"{live_alerts / n:.1%}",
                    ">= 95 %",
                    live_alerts / n >= 0.95,
                )
            )


# --- 4: speed against Evidently -------------------------------------------------------------------------

SCORE = "score"  # ChurnOps profiles and tests the model's score too; Evidently gets it as one more numeric column
# Per column, Evidently's registered tests for the statistics ChurnOps computes (PSI, Jensen-Shannon, KS, chi-square).
EVIDENTLY_TESTS = {"numeric": ("psi", "jensenshannon", "ks"), "categorical": ("psi", "jensenshannon", "chisquare")}
GOAL_SECONDS, GOAL_RATIO = 2.0, 20.0


@dataclass(frozen=True)
class SpeedWork:
    """The work both sides time: reference and current frames of the same columns, the model's scores already in them."""

    reference: pd.DataFrame
    current: pd.DataFrame
    numeric: list[str]  # features, without the score
    categorical: list[str]

    @property
    def features(self) -> list[str]:
        return self.numeric + self.categorical


def churnops_drift(work: SpeedWork) -> tuple[Layout, WindowCounts, DriftResult]:
    """ChurnOps' whole path: the reference profile, the window's counts (KS on raw values), every statistic and the verdict."""
    profile = build_profile(work.reference, work.reference[SCORE].to_numpy(), work.numeric, work.categorical)
    layout = Layout.of(profile)
    counts = count_frame(layout, work.current, work.current[SCORE].to_numpy(), work.features)
    return layout, counts, evaluate(layout, counts)


def evidently_drift(
    reference: pd.DataFrame, current: pd.DataFrame, numeric: Sequence[str], categorical: Sequence[str]
) -> dict[tuple[str, str], float]:
    """Evidently's statistics alone, per column and test: what its ``get_one_column_drift`` (behind ``ValueDrift`` and
    ``DataDriftPreset``) does before it draws -- drop NaN and infinities, take the registered test, call it -- without
    the report, its correlation matrices, histograms or widgets."""
    from evidently.legacy.calculations.stattests import get_stattest  # noqa: PLC0415 - seconds to import, only for the baseline
    from evidently.legacy.core import ColumnType  # noqa: PLC0415

    out: dict[tuple[str, str], float] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # chi-square divides by the empty expectation of a new category
        for kind, columns in (("numeric", numeric), ("categorical", categorical)):
            column_type = ColumnType.Numerical if kind == "numeric" else ColumnType.Categorical
            for c in columns:
                ref = reference[c].replace([-np.inf, np.inf], np.nan).dropna()
                cur = current[c].replace([-np.inf, np.inf], np.nan).dropna()
                for method in EVIDENTLY_TESTS[kind]:
                    out[(c, method)] = float(get_stattest(ref, cur, column_type, method)(ref, cur, column_type, None).drift_score)
    return out


def run_side(side: str, work: SpeedWork) -> Any:
    """One timed unit of work: ChurnOps' whole path, or Evidently's tests on the same columns (the score among the numeric)."""
    if side == "churnops":
        return churnops_drift(work)
    return evidently_drift(work.reference, work.current, [*work.numeric, SCORE], work.categorical)


def cold_worker(side: str, path: str) -> int:
    """One call of one side in this fresh interpreter; prints its import and call seconds as JSON."""
    with Path(path).open("rb") as f:
        work = SpeedWork(*pickle.load(f))  # the file the benchmark wrote a moment ago
    imported = 0.0
    if side == "evidently":
        t = time.perf_counter()
        importlib.import_module("evidently.legacy.calculations.stattests")  # timed apart from the call
        imported = time.perf_counter() - t
    t = time.perf_counter()
    run_side(side, work)
    print(json.dumps({"import": imported, "call": time.perf_counter() - t}))
    return 0


def cold_run(side: str, path: Path) -> tuple[float, float]:
    """(import, first call) seconds of one side in a fresh interpreter with one thread: its code imported, never run."""
    env = {**os.environ, **dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")}
    done = subprocess.run(
        [sys.executable, __file__, "--cold", side, str(path)], env=env, capture_output=True, text=True, check=True, timeout=900
    )
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    return float(figures["import"]), float(figures["call"])


def binned_for_evidently(work: SpeedWork, layout: Layout) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Each numeric value (and the score) replaced by its profile bin: Evidently, told these columns are categorical,
    then computes PSI and JS on exactly ChurnOps' bins."""
    edges = {f.name: f.edges for f in layout.profile.features if isinstance(f, NumericProfile)} | {SCORE: layout.profile.score.edges}

    def binned(frame: pd.DataFrame) -> pd.DataFrame:
        out = frame.copy()
        for name, e in edges.items():
            x = frame[name].to_numpy(dtype=float)
            out[name] = np.where(np.isnan(x), np.nan, np.searchsorted(np.asarray(e), x, side="left"))
        return out

    return binned(work.reference), binned(work.current)


def agreement(
    work: SpeedWork, ours: tuple[Layout, WindowCounts, DriftResult], theirs: dict[tuple[str, str], float], rows: list[Row]
) -> None:
    """Are both sides computing the same statistics? Same numbers where the definitions coincide, and how far apart otherwise."""
    layout, counts, result = ours
    numeric = [*work.numeric, SCORE]
    ref_b, cur_b = binned_for_evidently(work, layout)
    on_bins = evidently_drift(ref_b, cur_b, [], [*numeric, *work.categorical])

    def ours_of(name: str) -> tuple[float, float, float, float]:
        """PSI, JS, KS and the test's p-value (KS or chi-square); NaN where a statistic does not apply."""
        if name == SCORE:
            return result.score.psi, result.score.js, result.score.ks, result.score.p_value
        f = result.feature(name)
        return tuple(math.nan if v is None else v for v in (f.psi, f.js, f.ks, f.p_value))  # type: ignore[return-value]

    # PSI and JS: Evidently on ChurnOps' bins (categories are the same bins already).
    gap = max(abs(ours_of(c)[k] - on_bins[(c, m)]) for c in [*numeric, *work.categorical] for k, m in ((0, "psi"), (1, "jensenshannon")))
    rows.append(
        Row(
            "  agreement: PSI and JS, Evidently on ChurnOps' bins",
            f"max |diff| {gap:.1e} ({len(numeric) + len(work.categorical)} columns)",
            "<= 1e-9",
            gap <= 1e-9,
        )
    )
    # chi-square: Evidently's is the goodness-of-fit test; ChurnOps computes it in that mode from the same counts.
    cat = [layout.names.index(c) for c in work.categorical]
    _, gof = chi_square(layout.reference[cat], layout.reference_values[cat], counts.bins[cat], reference_is_sample=False)
    rel = max(abs(g - theirs[(c, "chisquare")]) / max(theirs[(c, "chisquare")], 1e-300) for g, c in zip(gof, work.categorical, strict=True))
    rows.append(Row("  agreement: chi-square p (goodness of fit) vs Evidently", f"max relative diff {rel:.1e}", "<= 1e-9", rel <= 1e-9))
    pairs = [f"{c} {result.feature(c).p_value or 0.0:.3g} | {p:.3g}" for c, p in zip(work.categorical, gof, strict=True)]
    log(f"[speed] chi-square p, ChurnOps' verdict test (homogeneity: the reference is a sample too) | goodness of fit: {'; '.join(pairs)}")
    # KS: Evidently's is scipy's ks_2samp on raw values; ChurnOps' statistic uses the 500-point reference sketch.
    d_gap = max(
        abs(ours_of(c)[2] - stats.ks_2samp(work.reference[c].dropna(), work.current[c].dropna(), method="asymp").statistic) for c in numeric
    )
    rows.append(
        Row(
            "  agreement: KS statistic vs ks_2samp (Evidently's ks)",
            f"max |diff| {d_gap:.4f}",
            f"<= {1 / KS_SKETCH_POINTS} (sketch)",
            d_gap <= 1 / KS_SKETCH_POINTS + 1e-12,
        )
    )
    same = sum((ours_of(c)[3] <= 0.05) == (theirs[(c, "ks")] <= 0.05) for c in numeric)
    p_gap = max(abs(ours_of(c)[3] - theirs[(c, "ks")]) for c in numeric)
    rows.append(
        Row("  KS p-value vs Evidently's, same verdict at 0.05", f"{same}/{len(numeric)}; max |diff| {p_gap:.3f}", "for information")
    )
    # Evidently's own binning (what it timed): Sturges bins over both samples, or one bin per value up to 20 values.
    psi_ours = sum(ours_of(c)[0] >= 0.1 for c in numeric)
    psi_theirs = sum(theirs[(c, "psi")] >= 0.1 for c in numeric)
    own = max(abs(ours_of(c)[0] - theirs[(c, "psi")]) for c in numeric)
    rows.append(
        Row(
            "  numeric PSI >= 0.1, own bins (ChurnOps | Evidently)",
            f"{psi_ours} | {psi_theirs} of {len(numeric)}; max |diff| {own:.3f}",
            "for information",
        )
    )


def speed(reference: pd.DataFrame, current: pd.DataFrame, model: Model, n_rows: int, runs: int, evidently: bool, rows: list[Row]) -> None:
    numeric = NUMERIC[: 100 - len(CATEGORICAL)]
    cols = numeric + CATEGORICAL
    big = current.sample(n_rows, replace=len(current) < n_rows, random_state=1).reset_index(drop=True)
    work = SpeedWork(
        reference[cols].assign(**{SCORE: model.score(reference)}), big[cols].assign(**{SCORE: model.score(big)}), numeric, CATEGORICAL
    )  # scored outside every timer: both sides receive the scores
    shape = f"{len(cols)} features + score x {n_rows:,} rows, reference {len(reference):,} rows"
    log(f"[speed] {shape}; one thread each; cold = first call in a fresh interpreter, warm = median of {runs} in this one")
    log("[speed] ChurnOps: reference profile (deciles, 500-point CDF sketch, categories), window counts, then per numeric column")
    log("        PSI, JS, KS (raw values), per categorical column PSI, JS, chi-square; the score PSI, JS, KS; Benjamini-Hochberg verdict")
    if evidently:
        log(
            f"[speed] Evidently {evidently_version()}: registered tests per column, numeric and score {', '.join(EVIDENTLY_TESTS['numeric'])};"
        )
        log(f"        categorical {', '.join(EVIDENTLY_TESTS['categorical'])} (statistics only: no Report, no widgets, no HTML/JSON)")
    sides = ["churnops", "evidently"] if evidently else ["churnops"]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "work.pkl"
        with path.open("wb") as f:
            pickle.dump((work.reference, work.current, work.numeric, work.categorical), f)
        cold = {side: cold_run(side, path) for side in sides}
    warm: dict[str, list[float]] = {side: [] for side in sides}
    thread_cpu: dict[str, list[float]] = {side: [] for side in sides}
    process_cpu: dict[str, float] = dict.fromkeys(sides, 0.0)
    results: dict[str, Any] = {}
    for k in range(runs + 1):  # the sides alternate, so both see the same machine; run 0 warms this interpreter and is not kept
        for side in sides:
            t, c, p = time.perf_counter(), time.thread_time(), time.process_time()
            results[side] = run_side(side, work)
            if k:
                warm[side].append(time.perf_counter() - t)
                thread_cpu[side].append(time.thread_time() - c)
                process_cpu[side] += time.process_time() - p
    # Every thread's CPU time against the calling thread's: 1.00 means no other thread worked.
    threads = ", ".join(f"{side} {process_cpu[side] / sum(thread_cpu[side]):.2f}" for side in sides)
    log(f"[speed] process CPU / calling thread's CPU in the warm runs (1.00: one thread did all the work): {threads}")
    ours_warm, ours_cold = float(np.median(warm["churnops"])), cold["churnops"][1]
    load = os.getloadavg()[0]
    rows.append(Row(f"drift of {shape}", "", "", None))
    rows.append(Row("  tests per column, both sides (numeric | categorical)", "PSI, JS, KS | PSI, JS, chi-square; score: PSI, JS, KS"))
    rows.append(
        Row(
            "  ChurnOps warm (median, runs spread)",
            f"{ours_warm:.3f} s ({min(warm['churnops']):.3f}-{max(warm['churnops']):.3f})",
            f"<= {GOAL_SECONDS:g} s",
            ours_warm <= GOAL_SECONDS,
        )
    )
    rows.append(Row("  ChurnOps cold", f"{ours_cold:.3f} s", f"<= {GOAL_SECONDS:g} s", ours_cold <= GOAL_SECONDS))
    rows.append(
        Row(
            "  window job statistics throughput (warm)",
            f"{n_rows / ours_warm * 60 / 1e6:.1f} M rows/min",
            ">= 1 M/min",
            n_rows / ours_warm * 60 >= 1e6,
        )
    )
    if evidently:
        theirs_warm, (theirs_import, theirs_cold) = float(np.median(warm["evidently"])), cold["evidently"]
        rows.append(
            Row("  Evidently warm (baseline, same run)", f"{theirs_warm:.3f} s ({min(warm['evidently']):.3f}-{max(warm['evidently']):.3f})")
        )
        rows.append(Row("  Evidently cold (baseline, same run)", f"{theirs_cold:.3f} s (+{theirs_import:.1f} s import, not counted)"))
        rows.append(
            Row(
                "  Evidently / ChurnOps, warm / warm",
                f"{theirs_warm / ours_warm:.1f}x (best / best {min(warm['evidently']) / min(warm['churnops']):.1f}x)",
                f">= {GOAL_RATIO:g}x",
                theirs_warm / ours_warm >= GOAL_RATIO,
            )
        )
        rows.append(
            Row(
                "  Evidently / ChurnOps, cold / cold",
                f"{theirs_cold / ours_cold:.1f}x",
                f">= {GOAL_RATIO:g}x",
                theirs_cold / ours_cold >= GOAL_RATIO,
            )
        )
        cpu_ratio = float(np.median(thread_cpu["evidently"])) / float(np.median(thread_cpu["churnops"]))
        rows.append(Row("  the same in the calling thread's CPU time, warm / warm", f"{cpu_ratio:.1f}x", "for information"))
        agreement(work, results["churnops"], results["evidently"], rows)
    rows.append(Row("  load average during the speed runs", f"{load:.1f} on 2 cores", "ratios are same-run"))


def evidently_version() -> str:
    return importlib.metadata.version("evidently")


# --- 5: live cost per prediction ---------------------------------------------------------------------------


def percentiles(samples: np.ndarray) -> tuple[float, float, float]:
    """p50, p99, p99.9 in milliseconds."""
    p50, p99, p999 = np.percentile(samples * 1e3, [50, 99, 99.9])
    return float(p50), float(p99), float(p999)


def timed(fn: Callable[[int], object], n: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall-clock and thread CPU seconds of each call: CPU time is the code's own cost, wall time adds the machine's contention."""
    wall, cpu = np.empty(n), np.empty(n)
    for i in range(n):
        w, c = time.perf_counter(), time.thread_time()
        fn(i)
        cpu[i], wall[i] = time.thread_time() - c, time.perf_counter() - w
    return wall, cpu


def live_cost(reference: pd.DataFrame, pool: pd.DataFrame, model: Model, predictions: int, rows: list[Row]) -> None:
    profile = build_profile(reference, model.score(reference), NUMERIC, CATEGORICAL)
    order = NUMERIC + CATEGORICAL
    monitor = LiveDriftMonitor(profile, order, model="churn", version="1", window=LiveWindow())
    sample = pool.sample(min(predictions, len(pool)), random_state=2)
    n = len(sample)
    cells = sample[order].astype(object).to_numpy()
    cells[pd.isna(cells)] = None
    numbers = model.numbers(sample)
    booster = model.booster.booster_
    scores = model.score(sample)

    def predict(i: int) -> None:
        booster.predict(numbers[i : i + 1], num_threads=1)

    def observe(i: int) -> None:
        monitor.observe(cells[i : i + 1], scores[i : i + 1])

    def both(i: int) -> None:
        predict(i)
        observe(i)

    for i in range(min(500, n)):  # warm-up
        both(i)
    load = os.getloadavg()[0]  # sampled before timing: other work on the machine shows in wall-clock percentiles
    busy = load > 2.0  # this machine has two cores
    for _ in range(2):  # two rounds, the first one warms caches and clocks for all three; the second is kept
        obs_wall, obs_cpu = timed(observe, n)
        pred_wall, pred_cpu = timed(predict, n)
        both_wall, both_cpu = timed(both, n)
    scrape_wall, _ = timed(lambda i: monitor.snapshot(), 20)
    judged = obs_cpu if busy else obs_wall
    w50, w99, w999 = percentiles(obs_wall)
    c50, c99, c999 = percentiles(obs_cpu)
    basis = f"CPU time (load average {load:.1f} on 2 cores)" if busy else f"wall clock (load average {load:.1f})"
    rows.append(
        Row(
            f"live drift observe() per prediction ({n:,})",
            f"p50 {c50:.3f}  p99 {c99:.3f}  p99.9 {c999:.3f} ms CPU",
            "p99 <= 0.2 ms",
            float(np.percentile(judged * 1e3, 99)) <= 0.2,
        )
    )
    rows.append(Row("  the same, wall clock", f"p50 {w50:.3f}  p99 {w99:.3f}  p99.9 {w999:.3f} ms", f"verdict on {basis}"))
    for name, wall, cpu in (("without monitor (baseline)", pred_wall, pred_cpu), ("with monitor", both_wall, both_cpu)):
        p50, p99, _ = percentiles(cpu)
        q50, q99, _ = percentiles(wall)
        rows.append(Row(f"  one-row LightGBM predict {name}", f"p50 {p50:.3f}  p99 {p99:.3f} ms CPU; wall p50 {q50:.3f}  p99 {q99:.3f}"))
    added = percentiles(both_cpu)[0] - percentiles(pred_cpu)[0]
    rows.append(Row("  added to a prediction by the monitor", f"p50 {added:.3f} ms CPU"))
    s50, s99, _ = percentiles(scrape_wall)
    rows.append(Row(f"  scrape: snapshot of a {monitor.size:,}-prediction window", f"p50 {s50:.1f}  p99 {s99:.1f} ms"))


# --- main -----------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not the acceptance figures")
    parser.add_argument("--window", type=int, default=1_000, help="predictions per drift window")
    parser.add_argument("--windows", type=int, default=100, help="windows per scenario (at least 100 for the acceptance)")
    parser.add_argument("--reference-customers", type=int, default=10_000)
    parser.add_argument("--concept-customers", type=int, default=16_000)
    parser.add_argument("--speed-rows", type=int, default=100_000)
    parser.add_argument("--predictions", type=int, default=20_000, help="predictions timed for the live cost")
    parser.add_argument("--speed-runs", type=int, default=5, help="warm runs per side in the speed comparison (median reported)")
    parser.add_argument("--no-evidently", action="store_true", help="skip the Evidently baseline (slow)")
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="run these parts only (default: all)")
    parser.add_argument("--cold", nargs=2, metavar=("SIDE", "PATH"), help=argparse.SUPPRESS)  # the speed part's fresh-interpreter run
    args = parser.parse_args(argv)
    if args.cold:
        return cold_worker(*args.cold)
    if args.quick:
        args.windows, args.window, args.reference_customers, args.concept_customers = 20, 500, 4_000, 4_000
        args.speed_rows, args.predictions = 20_000, 3_000
    rows: list[Row] = []
    start = time.perf_counter()
    sections = set(args.only)
    model = concept_study(args.concept_customers, rows) if "concept" in sections else fit_model(MODEL_ONLY_CUSTOMERS)
    if not sections & {"alerts", "speed", "live"}:
        return report(rows, args.quick, start)

    per_customer = 3.3  # active rows per customer over the window snapshot days (measured)
    pool_customers = int(args.windows * args.window / per_customer * 1.1)
    log(f"[drift] generating the reference ({args.reference_customers:,} customers) and pools of {pool_customers:,} ...")
    t = time.perf_counter()
    reference = features_of(
        GeneratorConfig(n_customers=args.reference_customers, block_size=10_000, history_days=HISTORY, seed=21), WINDOW_DAYS
    )
    pool_cfg = GeneratorConfig(n_customers=pool_customers, block_size=10_000, history_days=HISTORY, seed=22)
    pools = {"no drift": features_of(pool_cfg, WINDOW_DAYS)}
    if "alerts" in sections:
        pools["covariate drift"] = features_of(with_drift(pool_cfg, "covariate", DRIFT_START), WINDOW_DAYS)
    log(f"[drift] {len(reference):,} reference rows, pools of {[len(p) for p in pools.values()]} rows in {time.perf_counter() - t:.0f}s")
    if "alerts" in sections:
        alert_rates(reference, model, pools, args.window, args.windows, rows)
    if "speed" in sections:
        speed(reference, pools["no drift"], model, args.speed_rows, args.speed_runs, not args.no_evidently, rows)
    if "live" in sections:
        live_cost(reference, pools["no drift"], model, args.predictions, rows)
    return report(rows, args.quick, start)


def report(rows: list[Row], quick: bool, start: float) -> int:
    """The table of every figure with its goal and verdict; 1 when a goal is missed."""
    width = max(len(r.name) for r in rows) + 2
    log("\nChurnOps monitoring benchmark" + (" (--quick: smoke sizes, not the acceptance figures)" if quick else ""))
    log(f"{'measure'.ljust(width)}{'result'.ljust(44)}{'goal'.ljust(20)}verdict")
    for r in rows:
        verdict = "" if r.ok is None else ("PASS" if r.ok else "MISS")
        log(f"{r.name.ljust(width)}{r.value.ljust(44)}{r.goal.ljust(20)}{verdict}")
    log(f"total {time.perf_counter() - start:.0f}s")
    return 0 if all(r.ok is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
