"""Data for the monitoring statistics tests: generated customers with and without drift, small synthetic frames."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from churnops.data.config import GeneratorConfig, with_drift
from churnops.data.generator import generate_blocks
from churnops.features.catalog import FEATURES
from churnops.features.engine import compute_block_features
from churnops.monitoring.profile import ReferenceProfile

NUMERIC = tuple(f.name for f in FEATURES if f.dtype != "string")
CATEGORICAL = tuple(f.name for f in FEATURES if f.dtype == "string")
SNAPSHOTS = (210, 240)  # late enough that covariate drift from day 150 reaches every feature window


def generated_features(n_customers: int, seed: int, preset: str = "none", snapshots: tuple[int, ...] = SNAPSHOTS) -> pd.DataFrame:
    """All catalog features of generated customers at the given snapshot days, one frame."""
    cfg = with_drift(GeneratorConfig(n_customers=n_customers, block_size=n_customers, history_days=240, seed=seed), preset, 150)
    frames = []
    for block in generate_blocks(cfg):
        by_domain = compute_block_features(cfg.calendar, block.tables, snapshot_days=snapshots)
        merged: pd.DataFrame | None = None
        for frame in by_domain.values():
            merged = frame if merged is None else merged.merge(frame, on=["customer_id", "event_timestamp"])
        assert merged is not None
        frames.append(merged)
    return pd.concat(frames, ignore_index=True)


def pseudo_scores(frame: pd.DataFrame) -> np.ndarray:
    """A deterministic score that depends on usage and support features, so score drift follows feature drift."""
    z = -1.5 - 0.02 * frame["logins_mean_30d"].fillna(0).to_numpy() ** 0.5 + 0.15 * frame["tickets_30d"].fillna(0).to_numpy()
    out: np.ndarray = 1 / (1 + np.exp(-z))
    return out


@dataclass(frozen=True)
class Generated:
    reference: pd.DataFrame
    profile: ReferenceProfile
    same: pd.DataFrame  # other customers, same process
    covariate: pd.DataFrame  # the same other customers under the covariate drift preset


def small_frame(n: int, seed: int, shift: float = 0.0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    rating = rng.integers(0, 11, n).astype(float)
    rating[rng.random(n) < 0.2] = np.nan
    frame = pd.DataFrame(
        {
            "amount": rng.lognormal(3 + shift, 0.5, n),
            "visits": rng.poisson(4 + 4 * shift, n).astype(float),
            "rating": rating,
            "plan": rng.choice(["basic", "pro", "team"], n, p=[0.5, 0.3, 0.2]),
        }
    )
    scores = np.clip(rng.beta(2, 8, n) + 0.2 * shift, 0, 1)
    return frame, scores


SmallFrame = Callable[..., tuple[pd.DataFrame, np.ndarray]]
