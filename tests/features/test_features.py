from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

from churnops.data.config import GeneratorConfig
from churnops.data.generator import generate_blocks
from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.features.catalog import DOMAINS, FEATURES, features_of
from churnops.features.engine import compute_block_features
from churnops.layout import Layout

CFG = GeneratorConfig(n_customers=800, block_size=800, seed=11)


def test_catalog_has_100_plus_documented_unique_features() -> None:
    names = [f.name for f in FEATURES]
    assert len(names) >= 100
    assert len(set(names)) == len(names)
    assert {f.domain for f in FEATURES} == set(DOMAINS)
    for f in FEATURES:
        assert f.description and f.lineage, f.name
        assert f.dtype in ("int64", "float64", "string")


def test_written_features_match_catalog(small_layout: Layout) -> None:
    for domain in DOMAINS:
        frame = pd.read_parquet(small_layout.features / f"{domain}.parquet")
        assert list(frame.columns) == [ENTITY, TIMESTAMP, *(f.name for f in features_of(domain))]
        assert not frame.duplicated([ENTITY, TIMESTAMP]).any()
        for spec in features_of(domain):
            if not spec.nullable:
                assert frame[spec.name].notna().all(), spec.name


def _shift_future(tables: dict[str, pd.DataFrame], ts: pd.Timestamp) -> dict[str, pd.DataFrame]:
    """Change every event at or after ``ts`` drastically; nothing before it."""
    t = {k: v.copy() for k, v in tables.items()}
    future = t["account_daily"]["date"] >= ts
    for col in ("active_users", "logins", "session_minutes", "api_calls", "reports_created"):
        t["account_daily"].loc[future, col] = t["account_daily"].loc[future, col] * 7 + 3
    t["account_daily"].loc[future, "mrr"] = 1.0
    tk = t["tickets"]
    tk.loc[tk["created_at"] >= ts, "severity"] = "critical"
    # a ticket opened before ts but resolved after it must not reveal its resolution time or CSAT
    open_at_ts = (tk["created_at"] < ts) & (tk["resolved_at"] >= ts)
    tk.loc[open_at_ts, "resolution_hours"] = 999.0
    tk.loc[open_at_ts, "csat"] = 1.0
    t["invoices"].loc[t["invoices"]["invoice_date"] >= ts, "status"] = "failed"
    t["nps"].loc[t["nps"]["responded_at"] >= ts, "score"] = 0
    extra = t["tickets"].head(50).copy()
    extra["created_at"] = ts + pd.Timedelta(hours=1)
    extra["resolved_at"] = ts + pd.Timedelta(hours=2)
    t["tickets"] = pd.concat([tk, extra], ignore_index=True)
    return t


def test_features_never_use_data_at_or_after_the_snapshot() -> None:
    """Point-in-time correctness: rewriting the future leaves a snapshot's features unchanged."""
    tables = next(generate_blocks(CFG)).tables
    day = CFG.calendar.snapshot_days()[1]
    ts = CFG.calendar.day_timestamp(day)
    before = compute_block_features(CFG.calendar, tables, [day])
    after = compute_block_features(CFG.calendar, _shift_future(tables, ts), [day])
    for domain in DOMAINS:
        pd.testing.assert_frame_equal(before[domain], after[domain])
    # and the perturbation is strong enough to change the *next* snapshot
    nxt = CFG.calendar.snapshot_days()[2]
    changed = compute_block_features(CFG.calendar, _shift_future(tables, ts), [nxt])["usage"]
    assert not changed.equals(compute_block_features(CFG.calendar, tables, [nxt])["usage"])


def test_window_features_match_a_direct_computation() -> None:
    tables = next(generate_blocks(CFG)).tables
    day = CFG.calendar.snapshot_days()[0]
    ts = CFG.calendar.day_timestamp(day)
    feats = compute_block_features(CFG.calendar, tables, [day])
    usage = feats["usage"].set_index(ENTITY)
    support = feats["support"].set_index(ENTITY)
    billing = feats["billing"].set_index(ENTITY)
    daily = tables["account_daily"]
    cid = int(usage.index[5])
    mine = daily[(daily[ENTITY] == cid) & (daily["date"] < ts)]
    last30 = mine[mine["date"] >= ts - pd.Timedelta(days=30)]
    assert usage.loc[cid, "logins_mean_30d"] == pytest.approx(last30["logins"].sum() / 30)
    assert usage.loc[cid, "active_days_30d"] == (last30["logins"] > 0).sum()
    with_logins = mine.loc[mine["logins"] > 0, "date"]
    assert usage.loc[cid, "days_since_last_login"] == (ts - with_logins.max()).days
    t = tables["tickets"]
    counts = t[t["created_at"] < ts].groupby(ENTITY).size()
    busiest = int(counts.sort_values().index.to_numpy()[-1])
    tk = t[(t[ENTITY] == busiest) & (t["created_at"] < ts) & (t["created_at"] >= ts - pd.Timedelta(days=90))]
    assert support.loc[busiest, "tickets_90d"] == len(tk)
    assert support.loc[busiest, "open_tickets"] == ((t[ENTITY] == busiest) & (t["created_at"] < ts) & (t["resolved_at"] >= ts)).sum()
    inv = tables["invoices"]
    mine_inv = inv[(inv[ENTITY] == busiest) & (inv["invoice_date"] < ts) & (inv["invoice_date"] >= ts - pd.Timedelta(days=90))]
    assert billing.loc[busiest, "failed_payments_90d"] == (mine_inv["status"] == "failed").sum()
    assert billing.loc[busiest, "amount_billed_90d"] == pytest.approx(mine_inv["amount"].sum())


def test_only_customers_active_at_the_snapshot_get_features() -> None:
    tables = next(generate_blocks(CFG)).tables
    day = CFG.calendar.snapshot_days()[-1]
    ts = CFG.calendar.day_timestamp(day)
    feats = compute_block_features(CFG.calendar, tables, [day])["demographic"]
    churn = tables["customers"].set_index(ENTITY)["churn_date"]
    present = churn.loc[feats[ENTITY]]
    assert (present.isna() | (present >= ts)).all()
    gone = churn[churn < ts].index
    assert not set(gone) & set(feats[ENTITY])


def test_block_size_does_not_change_the_feature_pipeline() -> None:
    """Features of a block depend only on that block's customers."""
    cfg = dataclasses.replace(CFG, n_customers=400, block_size=200)
    blocks = list(generate_blocks(cfg))
    day = cfg.calendar.snapshot_days()[0]
    separate = pd.concat([compute_block_features(cfg.calendar, b.tables, [day])["usage"] for b in blocks], ignore_index=True)
    merged_tables = {k: pd.concat([b.tables[k] for b in blocks], ignore_index=True) for k in blocks[0].tables}
    together = compute_block_features(cfg.calendar, merged_tables, [day])["usage"]
    pd.testing.assert_frame_equal(separate, together)
    assert np.isfinite(together.drop(columns=[ENTITY, TIMESTAMP]).to_numpy(float)).all()
