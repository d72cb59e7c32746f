"""What the demo knows that production only learns later: the customers' outcomes, and a model that learned nothing.

The served population is the last labelled snapshot of the simulation, so each
served customer's 30-day outcome is known. The demo releases those outcomes
into ``<data-dir>/labels/`` only after it has predicted for a while ("labels
arrive late"), stamped with the start of the observation window they close, in
the layout ``churnops monitor performance`` and the rollout runner read.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import numpy as np
import pandas as pd

from churnops.data.raw import read_calendar, read_raw
from churnops.data.schema import ENTITY, TARGET, TIMESTAMP
from churnops.training.automl import build_pipeline, positive_proba
from churnops.training.dataset import DatasetSpec, xy
from churnops.training.ensemble import ChurnEnsemble, Combiner, fit_calibrator


def served_outcomes(raw_dir: Path, serve_day: int) -> pd.DataFrame:
    """(customer_id, churned_30d) of every customer in the served snapshot."""
    labels = read_raw(raw_dir, "labels")
    at = read_calendar(raw_dir).day_timestamp(serve_day)
    served = labels.loc[labels[TIMESTAMP] == at, [ENTITY, TARGET]]
    return served.reset_index(drop=True)


def release(outcomes: pd.DataFrame, window_start: dt.datetime, labels_dir: Path, name: str) -> Path:
    """Write outcomes as observed for the 30-day window starting at ``window_start`` (atomically: readers poll)."""
    labels_dir.mkdir(parents=True, exist_ok=True)
    frame = outcomes.assign(**{TIMESTAMP: pd.Timestamp(window_start)})[[ENTITY, TIMESTAMP, TARGET]]
    path = labels_dir / f"{name}.parquet"
    tmp = labels_dir / f".{name}.parquet.tmp"
    frame.to_parquet(tmp, index=False)
    tmp.replace(path)
    return path


def learned_nothing(frame: pd.DataFrame, spec: DatasetSpec, seed: int) -> ChurnEnsemble:
    """A logistic regression fitted on permuted labels: a deliberately worse model for the rollout to catch.

    It is registered without its gates (they would refuse it), the way a broken
    pipeline or a hand-pushed model reaches the registry in real life.
    """
    x, y = xy(frame, spec)
    permuted = np.random.default_rng(seed).permutation(y)
    # strong regularisation: on permuted labels any larger coefficient is fitted noise
    pipeline = build_pipeline(spec, "logistic_regression", {"C": 1e-4}, seed=seed).fit(x, permuted)
    p = positive_proba(pipeline, x)
    combiner = Combiner("single", weights=np.ones(1))
    calibrator = fit_calibrator(combiner.combine(p.reshape(-1, 1)), permuted)
    return ChurnEnsemble([pipeline], ["logistic_regression"], combiner, calibrator, list(spec.features), list(spec.categorical))
