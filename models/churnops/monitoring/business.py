"""Business metrics from the prediction log: churn rate, revenue at risk, campaign value, satisfaction.

What the customer-success team acts on, per model version, segment and
period. Figures computed from the scores alone are *estimated* (they hold if
the scores are calibrated); figures from arrived outcomes are *measured* and
cover only the labelled predictions. Risk bands are the ones the predictor
logged with each prediction (one rule, in serving), not recomputed here.

Campaign rule: contact every customer scored at or above the threshold, but
at most ``max_contact_share`` of the customers (the team's capacity), the
highest scores first. A contacted churner stays with probability
``save_rate`` and is then worth ``months_saved`` months of revenue.
Expected saved revenue is save_rate x months_saved x sum(p x monthly revenue)
over the contacted; measured, the sum runs over contacted customers who did
churn. ROI is (saved - cost) / cost.

Satisfaction: mean CSAT (``csat_mean_90d``, 1-5) and the Net Promoter Score
of the latest NPS answers (``nps_last``: % promoters 9-10 minus % detractors
0-6), from the feature values logged with each prediction; customers without
an answer are left out and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd

from churnops.errors import InvalidInputError
from churnops.monitoring.performance import LABEL, Columns, groups, threshold_of
from churnops.monitoring.profile import check_scores
from churnops_contract.metric_names import SOURCE_ESTIMATED, SOURCE_MEASURED

BAND_ORDER = ("low", "medium", "high")
ALL_BANDS = "all"


@dataclass(frozen=True)
class CampaignConfig:
    """Economics of a retention campaign (the training gates use the same numbers)."""

    contact_cost: float = 1_000.0
    save_rate: float = 0.25
    months_saved: float = 6.0
    max_contact_share: float = 0.25

    def __post_init__(self) -> None:
        if self.contact_cost < 0 or self.months_saved < 0:
            raise InvalidInputError("contact_cost and months_saved must not be negative", field="campaign")
        if not 0 <= self.save_rate <= 1:
            raise InvalidInputError(f"must be in [0, 1], got {self.save_rate}", field="campaign.save_rate")
        if not 0 < self.max_contact_share <= 1:
            raise InvalidInputError(f"must be in (0, 1], got {self.max_contact_share}", field="campaign.max_contact_share")


@dataclass(frozen=True)
class BusinessColumns:
    revenue: str = "mrr"  # monthly recurring revenue
    csat: str = "csat_mean_90d"
    nps: str = "nps_last"


@dataclass(frozen=True)
class BusinessFigure:
    version: str
    segment: str
    metric: str
    source: str  # measured or estimated
    value: float | None
    rows: int
    band: str = ALL_BANDS
    note: str | None = None
    period: str | None = None


@dataclass(frozen=True)
class BusinessReport:
    figures: tuple[BusinessFigure, ...]
    campaign: CampaignConfig

    def get(
        self, metric: str, source: str, version: str, segment: str = "all", band: str = ALL_BANDS, period: str | None = None
    ) -> BusinessFigure:
        for f in self.figures:
            if (f.metric, f.source, f.version, f.segment, f.band, f.period) == (metric, source, version, segment, band, period):
                return f
        raise InvalidInputError(f"no {source} {metric} for version {version!r}, segment {segment!r}, band {band!r}", field="metric")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- pure figures on arrays --------------------------------------------------------------------------


def contacted(p: np.ndarray, threshold: float, max_share: float) -> np.ndarray:
    """Who the campaign contacts: scores at or above the threshold, at most max_share of all rows, highest first."""
    p = np.asarray(p, dtype=float)
    chosen = p >= threshold
    capacity = int(np.floor(max_share * p.size))
    if chosen.sum() > capacity:
        order = np.argsort(-p, kind="stable")[:capacity]
        chosen = np.zeros(p.size, bool)
        chosen[order] = True
    return chosen


def campaign_value(
    p: np.ndarray, revenue: np.ndarray, threshold: float, cfg: CampaignConfig, churned: np.ndarray | None = None
) -> dict[str, float | None]:
    """Contacted count, cost, saved revenue, net savings and ROI; expected from p, or measured when ``churned`` is given."""
    chosen = contacted(p, threshold, cfg.max_contact_share)
    cost = float(chosen.sum()) * cfg.contact_cost
    at_stake = revenue * (p if churned is None else churned)
    saved = cfg.save_rate * cfg.months_saved * float(at_stake[chosen].sum())
    return {
        "contacted": float(chosen.sum()),
        "campaign_cost": cost,
        "saved_revenue": saved,
        "net_savings": saved - cost,
        "roi": (saved - cost) / cost if cost > 0 else None,
    }


def net_promoter_score(answers: np.ndarray) -> float | None:
    """% promoters (9-10) minus % detractors (0-6), from -100 to 100; None without answers."""
    a = np.asarray(answers, dtype=float)
    a = a[~np.isnan(a)]
    if a.size == 0:
        return None
    return float(100 * ((a >= 9).mean() - (a <= 6).mean()))


# --- the report ----------------------------------------------------------------------------------------


def _figures_of(
    rows: pd.DataFrame,
    version: str,
    segment: str,
    period: str | None,
    threshold: float,
    cfg: CampaignConfig,
    c: Columns,
    bc: BusinessColumns,
) -> list[BusinessFigure]:
    out: list[BusinessFigure] = []

    def add(metric: str, source: str, value: float | None, n: int, band: str = ALL_BANDS, note: str | None = None) -> None:
        out.append(BusinessFigure(version, segment, metric, source, value, n, band, note if value is None else None, period))

    p = rows[c.score].to_numpy(dtype=float)
    revenue = pd.to_numeric(rows[bc.revenue], errors="coerce").to_numpy(dtype=float)
    has_rev = ~np.isnan(revenue)
    y = rows[LABEL].to_numpy(dtype=float) if LABEL in rows.columns else np.full(len(rows), np.nan)
    labelled = ~np.isnan(y)
    add("churn_rate", SOURCE_ESTIMATED, float(p.mean()), len(rows))
    add(
        "churn_rate",
        SOURCE_MEASURED,
        float(y[labelled].mean()) if labelled.any() else None,
        int(labelled.sum()),
        note="no outcome has arrived yet",
    )
    no_rev = f"no revenue value ({int((~has_rev).sum())} of {len(rows)} rows lack {bc.revenue!r})"
    bands = rows[c.band].astype("string").fillna("(missing)").to_numpy()
    for band in [ALL_BANDS, *sorted(set(bands), key=lambda b: (BAND_ORDER.index(b) if b in BAND_ORDER else 99, b))]:
        in_band = np.ones(len(rows), bool) if band == ALL_BANDS else bands == band
        sel = in_band & has_rev
        add("revenue_at_risk", SOURCE_ESTIMATED, float((p[sel] * revenue[sel]).sum()) if sel.any() else None, int(sel.sum()), band, no_rev)
        add("customers", SOURCE_MEASURED, float(in_band.sum()), int(in_band.sum()), band)
        _satisfaction(rows, in_band, band, bc, add)
    if has_rev.any():
        expected = campaign_value(p[has_rev], revenue[has_rev], threshold, cfg)
        for metric, value in expected.items():
            add(metric, SOURCE_ESTIMATED, value, int(has_rev.sum()), note="nobody to contact: no cost, no ROI")
    sel = has_rev & labelled
    if sel.any():
        measured = campaign_value(p[sel], revenue[sel], threshold, cfg, churned=y[sel])
        for metric, value in measured.items():
            add(metric, SOURCE_MEASURED, value, int(sel.sum()), note="nobody to contact: no cost, no ROI")
    return out


def _satisfaction(rows: pd.DataFrame, in_band: np.ndarray, band: str, bc: BusinessColumns, add: Callable[..., None]) -> None:
    csat = pd.to_numeric(rows[bc.csat], errors="coerce").to_numpy(dtype=float)[in_band]
    nps = pd.to_numeric(rows[bc.nps], errors="coerce").to_numpy(dtype=float)[in_band]
    answered_csat, answered_nps = int((~np.isnan(csat)).sum()), int((~np.isnan(nps)).sum())
    add("csat", SOURCE_MEASURED, float(np.nanmean(csat)) if answered_csat else None, answered_csat, band, "no CSAT answer")
    add("nps", SOURCE_MEASURED, net_promoter_score(nps), answered_nps, band, "no NPS answer")


def business_report(
    predictions: pd.DataFrame,
    thresholds: float | Mapping[str, float],
    campaign: CampaignConfig | None = None,
    *,
    by_segment: bool = True,
    period: str | None = None,
    columns: Columns | None = None,
    business_columns: BusinessColumns | None = None,
) -> BusinessReport:
    """Business figures per model version, segment (and "all"), risk band and period.

    ``predictions`` are rows of the prediction log, optionally with the
    ``label`` column of ``performance.join_labels`` for measured figures.
    """
    c, bc, cfg = columns or Columns(), business_columns or BusinessColumns(), campaign or CampaignConfig()
    needed = [c.score, c.version, c.band, bc.revenue, bc.csat, bc.nps] + ([c.time] if period else [])
    missing = [col for col in needed if col not in predictions.columns]
    if missing:
        raise InvalidInputError(f"required columns are missing: {missing}", field="predictions")
    if len(predictions) == 0:
        raise InvalidInputError("no predictions to report on", field="predictions")
    check_scores(predictions[c.score].to_numpy(), f"predictions.{c.score}")
    figures: list[BusinessFigure] = []
    for version, segment, pk, rows in groups(predictions, c, by_segment, period):
        figures += _figures_of(rows, version, segment, pk, threshold_of(thresholds, version), cfg, c, bc)
    return BusinessReport(tuple(figures), cfg)
