"""What the generator simulates: population size, calendar, seed and drift scenarios.

Plain dataclasses (no NumPy or pandas), so the CLI builds them without
loading the simulator.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace

from churnops.data.schema import Calendar
from churnops.errors import InvalidInputError


@dataclass(frozen=True)
class DriftConfig:
    """Shifts applied from ``start_day`` on, for monitoring scenarios.

    Covariate drift changes what is observed (usage, tickets, prices);
    concept drift changes how behaviour relates to churn.
    """

    start_day: int = 150
    usage_scale: float = 1.0  # multiplies the daily activity rate
    ticket_rate_scale: float = 1.0  # multiplies the support ticket rate
    price_increase_pct: float = 0.0  # list price rise applied to MRR
    payment_failure_scale: float = 1.0  # multiplies the payment failure probability
    engagement_weight_scale: float = 1.0  # concept drift: weight of engagement on churn
    payment_weight_scale: float = 1.0  # concept drift: weight of failed payments on churn


DRIFT_PRESETS: dict[str, DriftConfig | None] = {
    "none": None,
    "covariate": DriftConfig(usage_scale=0.75, ticket_rate_scale=1.6, price_increase_pct=12.0),
    "concept": DriftConfig(engagement_weight_scale=0.4, payment_weight_scale=2.5),
    "both": DriftConfig(
        usage_scale=0.75,
        ticket_rate_scale=1.6,
        price_increase_pct=12.0,
        engagement_weight_scale=0.4,
        payment_weight_scale=2.5,
    ),
}


@dataclass(frozen=True)
class GeneratorConfig:
    """What to generate. Defaults give the platform's reference data set."""

    n_customers: int = 50_000
    history_days: int = 180
    end_date: dt.date = dt.date(2026, 6, 30)
    seed: int = 42
    horizon_days: int = 30  # churn label horizon
    feature_window_days: int = 90  # longest feature window; first snapshot needs this much history
    snapshot_every_days: int = 30
    block_size: int = 50_000
    drift: DriftConfig | None = None
    id_offset: int = 100_000

    def __post_init__(self) -> None:
        if self.n_customers <= 0:
            raise InvalidInputError(f"n_customers must be positive, got {self.n_customers}")
        if self.block_size <= 0:
            raise InvalidInputError(f"block_size must be positive, got {self.block_size}")
        need = self.feature_window_days + self.horizon_days
        if self.history_days < need:
            raise InvalidInputError(
                f"history_days={self.history_days} is too short: the first snapshot needs "
                f"{self.feature_window_days} days of history and its label {self.horizon_days} more"
            )

    @property
    def start_date(self) -> dt.date:
        return self.end_date - dt.timedelta(days=self.history_days)

    @property
    def calendar(self) -> Calendar:
        """The raw tables' calendar: what the feature engine and the labels follow."""
        return Calendar(self.start_date, self.history_days, self.snapshot_every_days, self.feature_window_days, self.horizon_days)


def with_drift(cfg: GeneratorConfig, preset: str, start_day: int | None = None) -> GeneratorConfig:
    """Return ``cfg`` with a named drift preset applied (see ``DRIFT_PRESETS``)."""
    if preset not in DRIFT_PRESETS:
        raise InvalidInputError(f"unknown drift preset {preset!r}; choose one of {sorted(DRIFT_PRESETS)}")
    drift = DRIFT_PRESETS[preset]
    if drift is not None and start_day is not None:
        drift = replace(drift, start_day=start_day)
    return replace(cfg, drift=drift)
