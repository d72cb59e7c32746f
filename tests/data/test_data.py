from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from churnops.data.config import DRIFT_PRESETS, GeneratorConfig, with_drift
from churnops.data.generator import generate_blocks, load_manifest
from churnops.data.raw import read_raw
from churnops.errors import InvalidInputError
from churnops.layout import Layout

CFG = GeneratorConfig(n_customers=1_500, block_size=1_500, seed=3)


def _first_block(cfg: GeneratorConfig) -> dict[str, pd.DataFrame]:
    return next(generate_blocks(cfg)).tables


def test_same_seed_gives_identical_tables() -> None:
    a, b = _first_block(CFG), _first_block(CFG)
    for name in a:
        pd.testing.assert_frame_equal(a[name], b[name])


def test_other_seed_gives_other_data() -> None:
    a, b = _first_block(CFG), _first_block(dataclasses.replace(CFG, seed=4))
    assert not a["customers"]["mrr"].equals(b["customers"]["mrr"])


def test_churn_rate_is_realistic_and_revenue_is_known(small_layout: Layout) -> None:
    labels = read_raw(small_layout.raw, "labels")
    rates = labels.groupby("event_timestamp")["churned_30d"].mean()
    assert ((rates > 0.10) & (rates < 0.25)).all(), rates
    assert (labels["mrr"] > 0).all()


def test_labels_follow_churn_dates_and_horizon(small_layout: Layout) -> None:
    cfg = load_manifest(small_layout.raw)
    customers = read_raw(small_layout.raw, "customers").set_index("customer_id")
    labels = read_raw(small_layout.raw, "labels")
    churn = customers.loc[labels["customer_id"], "churn_date"].reset_index(drop=True)
    ts = labels["event_timestamp"]
    horizon = pd.Timedelta(days=cfg.horizon_days)
    # nobody in a snapshot has churned before it; the label is exactly "churns within the horizon"
    assert not (churn < ts).any()
    expected = (churn.notna() & (churn < ts + horizon)).astype(int)
    assert (labels["churned_30d"] == expected).all()
    assert labels["churned_30d"].sum() > 0
    assert set(labels["event_timestamp"]) == {cfg.calendar.day_timestamp(d) for d in cfg.calendar.labelled_snapshot_days()}


def test_usage_declines_before_churn(small_layout: Layout) -> None:
    """The signal is realistic: churners use the product less in their last month."""
    daily = read_raw(small_layout.raw, "account_daily")
    customers = read_raw(small_layout.raw, "customers")
    churned = customers.loc[customers["churn_date"].notna(), ["customer_id", "churn_date"]]
    d = daily.merge(churned, on="customer_id")
    util = d["active_users"] / d["seats_purchased"]
    last_month = util[(d["churn_date"] - d["date"]).dt.days.between(0, 30)].mean()
    retained = daily[~daily["customer_id"].isin(churned["customer_id"])]
    assert last_month < 0.8 * (retained["active_users"] / retained["seats_purchased"]).mean()


@pytest.mark.parametrize("preset", ["covariate", "concept", "both"])
def test_drift_leaves_history_before_start_unchanged(preset: str) -> None:
    start = 130
    base = _first_block(CFG)["account_daily"]
    drifted = _first_block(with_drift(CFG, preset, start_day=start))["account_daily"]
    cut = CFG.calendar.day_timestamp(start)
    pd.testing.assert_frame_equal(base[base["date"] < cut].reset_index(drop=True), drifted[drifted["date"] < cut].reset_index(drop=True))


def test_covariate_drift_shifts_usage_and_prices() -> None:
    start = 120
    base = _first_block(CFG)
    drifted = _first_block(with_drift(CFG, "covariate", start_day=start))
    cut = CFG.calendar.day_timestamp(start)

    def after(t: dict[str, pd.DataFrame]) -> pd.DataFrame:
        d = t["account_daily"]
        return d[d["date"] >= cut]

    util_base = (after(base)["active_users"] / after(base)["seats_purchased"]).mean()
    util_drift = (after(drifted)["active_users"] / after(drifted)["seats_purchased"]).mean()
    assert util_drift < 0.85 * util_base
    assert after(drifted)["mrr"].sum() / len(after(drifted)) > after(base)["mrr"].sum() / len(after(base))
    tickets_base = (base["tickets"]["created_at"] >= cut).sum()
    tickets_drift = (drifted["tickets"]["created_at"] >= cut).sum()
    assert tickets_drift > 1.2 * tickets_base


def test_unknown_drift_preset_is_rejected() -> None:
    with pytest.raises(InvalidInputError, match="unknown drift preset 'typo'"):
        with_drift(CFG, "typo")
    assert set(DRIFT_PRESETS) == {"none", "covariate", "concept", "both"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_customers": 0}, "n_customers must be positive"),
        ({"history_days": 100}, "history_days=100 is too short"),
        ({"block_size": -1}, "block_size"),
    ],
)
def test_bad_generator_config_is_rejected(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(InvalidInputError, match=message):
        GeneratorConfig(**kwargs)  # type: ignore[arg-type]


def test_manifest_round_trips(small_layout: Layout) -> None:
    cfg = load_manifest(small_layout.raw)
    assert cfg.n_customers == 2_000 and cfg.seed == 7 and cfg.block_size == 1_000
    assert len(read_raw(small_layout.raw, "customers")) == 2_000
