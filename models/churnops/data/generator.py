"""Synthetic B2B SaaS customer data with a realistic, learnable churn signal.

The generator simulates every customer day by day, vectorised over customers:
a latent engagement level drifts (some accounts start to decline at a random
onset), and the observable behaviour (daily usage, support tickets, invoices,
NPS answers) is drawn from it. The daily churn hazard depends non-linearly on
recent *observable* behaviour and on contract terms, with interactions and
noise, so that a model trained on point-in-time features can learn it but not
memorise it.

Customers are generated in independent blocks, each seeded from the run seed
and its block index: the same seed and block size give the same data, and
1,000,000 customers stream to disk without holding the whole history in memory.
Drift only rescales parameters (the random draws are the same), so with drift
the history before the drift start day equals the history without drift.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnops.data.config import DriftConfig, GeneratorConfig
from churnops.data.raw import write_calendar
from churnops.data.schema import (
    CHANNELS,
    CONTRACTS,
    DAILY_METRICS,
    INDUSTRIES,
    PAYMENT_METHODS,
    PLANS,
    PRODUCT_FEATURES,
    RAW_TABLES,
    REGIONS,
    SEGMENTS,
    SEVERITIES,
    TICKET_CATEGORIES,
)
from churnops.errors import NotFoundError
from churnops.parallel.runner import Engine, InProcess

LIST_PRICE = {"starter": 25.0, "growth": 45.0, "business": 80.0, "enterprise": 120.0}

HAZARD_INTERCEPT = -7.5  # with the risk terms, gives a 10-25 % 30-day churn rate
HAZARD_SHARPNESS = 1.4


@dataclass
class CustomerBlock:
    """All raw tables of one block of customers."""

    customers: pd.DataFrame
    account_daily: pd.DataFrame
    tickets: pd.DataFrame
    invoices: pd.DataFrame
    nps: pd.DataFrame
    labels: pd.DataFrame
    tables: dict[str, pd.DataFrame] = field(init=False)

    def __post_init__(self) -> None:
        self.tables = {
            "customers": self.customers,
            "account_daily": self.account_daily,
            "tickets": self.tickets,
            "invoices": self.invoices,
            "nps": self.nps,
            "labels": self.labels,
        }


@dataclass
class _Trace:
    """What the day-by-day simulation observed, collected per day and stacked at the end."""

    daily: dict[str, list[np.ndarray]] = field(default_factory=lambda: {k: [] for k in DAILY_METRICS})
    day_rows: list[np.ndarray] = field(default_factory=list)  # (customer position, day) per daily row
    mrr: list[np.ndarray] = field(default_factory=list)
    tickets: list[dict[str, np.ndarray]] = field(default_factory=list)
    invoices: list[dict[str, np.ndarray]] = field(default_factory=list)
    nps: list[dict[str, np.ndarray]] = field(default_factory=list)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return np.asarray(1.0 / (1.0 + np.exp(-x)), dtype=float)


def _choice(rng: np.random.Generator, options: tuple[str, ...], probs: np.ndarray) -> np.ndarray:
    """Row-wise categorical draw: ``probs`` has one row of probabilities per customer."""
    cum = np.cumsum(probs, axis=1)
    u = rng.random((probs.shape[0], 1))
    idx = np.minimum((u > cum).sum(axis=1), len(options) - 1)
    out: np.ndarray = np.asarray(options, dtype=object)[idx]
    return out


def _static_attributes(rng: np.random.Generator, n: int, cfg: GeneratorConfig, ids: np.ndarray) -> pd.DataFrame:
    seg = _choice(rng, SEGMENTS, np.tile([0.55, 0.30, 0.15], (n, 1)))
    is_ent = seg == "enterprise"
    is_mid = seg == "mid_market"
    size_mu = np.where(is_ent, 7.5, np.where(is_mid, 5.3, 3.3))
    employees = np.maximum(2, np.round(np.exp(rng.normal(size_mu, 0.6)))).astype(np.int64)

    plan_p = np.where(
        is_ent[:, None],
        [0.0, 0.1, 0.35, 0.55],
        np.where(is_mid[:, None], [0.1, 0.4, 0.4, 0.1], [0.55, 0.35, 0.10, 0.0]),
    )
    plan = _choice(rng, PLANS, plan_p)
    contract_p = np.where(is_ent[:, None], [0.05, 0.55, 0.40], np.where(is_mid[:, None], [0.30, 0.55, 0.15], [0.70, 0.27, 0.03]))
    contract = _choice(rng, CONTRACTS, contract_p)
    payment_p = np.where(is_ent[:, None], [0.1, 0.7, 0.2], np.where(is_mid[:, None], [0.45, 0.35, 0.2], [0.85, 0.05, 0.1]))
    payment = _choice(rng, PAYMENT_METHODS, payment_p)

    seat_share = np.clip(rng.beta(2, 5, n), 0.02, 1.0)
    seats = np.maximum(1, np.round(employees * seat_share)).astype(np.int64)
    price = np.vectorize(LIST_PRICE.__getitem__, otypes=[float])(plan)
    discount = np.round(np.clip(rng.gamma(2.0, np.where(is_ent, 8.0, np.where(is_mid, 5.0, 2.5))), 0, 45), 1)
    mrr = np.round(seats * price * (1 - discount / 100.0), 2)

    tenure0 = np.round(rng.gamma(1.6, 260, n)).astype(np.int64) + 1
    contract_len = np.where(contract == "multi_year", 1095, 365)
    # days from the start of history until the next renewal (monthly contracts renew every 30 days)
    renewal_offset = np.where(contract == "monthly", 30 - tenure0 % 30, contract_len - tenure0 % contract_len)

    return pd.DataFrame(
        {
            "customer_id": ids,
            "signup_date": pd.Timestamp(cfg.start_date, tz="UTC") - pd.to_timedelta(tenure0, unit="D"),
            "segment": seg,
            "plan": plan,
            "region": _choice(rng, REGIONS, np.tile([0.45, 0.30, 0.18, 0.07], (n, 1))),
            "industry": _choice(rng, INDUSTRIES, np.tile([0.25, 0.15, 0.12, 0.14, 0.14, 0.10, 0.10], (n, 1))),
            "company_size": employees,
            "contract_type": contract,
            "payment_method": payment,
            "acquisition_channel": _choice(rng, CHANNELS, np.tile([0.35, 0.25, 0.20, 0.20], (n, 1))),
            "seats_purchased": seats,
            "list_price_per_seat": price,
            "discount_pct": discount,
            "mrr": mrr,
            "auto_renew": rng.random(n) < np.where(contract == "monthly", 0.9, 0.6),
            "has_dedicated_csm": (is_ent & (rng.random(n) < 0.8)) | (is_mid & (rng.random(n) < 0.25)),
            "onboarding_completed": rng.random(n) < 0.82,
            "billing_day": rng.integers(0, 28, n),
            "_renewal_offset": renewal_offset.astype(np.int64),
            "_contract_len": np.where(contract == "monthly", 30, contract_len).astype(np.int64),
        }
    )


def _simulate_block(cfg: GeneratorConfig, block_index: int, first: int, n: int) -> CustomerBlock:
    """Simulate ``n`` customers day by day; returns the raw tables of this block."""
    rng = np.random.default_rng([cfg.seed, block_index])
    ids = np.arange(cfg.id_offset + first, cfg.id_offset + first + n, dtype=np.int64)
    cust = _static_attributes(rng, n, cfg, ids)
    horizon = cfg.history_days
    drift = cfg.drift

    seats = cust["seats_purchased"].to_numpy()
    seg_idx = pd.Categorical(cust["segment"], categories=SEGMENTS).codes
    plan_idx = pd.Categorical(cust["plan"], categories=PLANS).codes
    contract = cust["contract_type"].to_numpy()
    csm = cust["has_dedicated_csm"].to_numpy()
    onboarded = cust["onboarding_completed"].to_numpy()
    discount = cust["discount_pct"].to_numpy()
    tenure0 = (pd.Timestamp(cfg.start_date, tz="UTC") - cust["signup_date"]).dt.days.to_numpy()
    renewal_offset = cust["_renewal_offset"].to_numpy()
    contract_len = cust["_contract_len"].to_numpy()
    billing_day = cust["billing_day"].to_numpy()
    is_card = (cust["payment_method"] == "card").to_numpy()

    # Latent state: product fit, a slowly moving engagement level and a decline onset.
    fit = rng.normal(0, 1, n) + 0.4 * onboarded - 0.3 * (seg_idx == 0)
    engagement = 0.6 * fit + rng.normal(0, 0.5, n)
    declining = rng.random(n) < 0.22 + 0.10 * (fit < -0.5)
    onset = rng.integers(0, horizon, n)
    decline_rate = rng.uniform(0.01, 0.04, n)
    distress = rng.random(n) < 0.06 + 0.06 * is_card  # financial trouble raises payment failures
    frailty = rng.normal(0, 0.3, n)  # unobserved per-customer churn propensity
    integrations = rng.poisson(np.where(plan_idx >= 2, 3.0, 1.0))

    churn_day = np.full(n, -1, dtype=np.int64)
    alive = np.ones(n, dtype=bool)
    recent_fail = np.zeros(n)  # exponentially decayed count of failed payments (about 30 days)
    recent_sev = np.zeros(n)  # exponentially decayed count of high/critical tickets
    last_nps = np.full(n, np.nan)

    trace = _Trace()
    mrr_base = cust["mrr"].to_numpy()
    day0 = pd.Timestamp(cfg.start_date, tz="UTC")

    for d in range(horizon):
        drifting = drift is not None and d >= drift.start_day
        usage_scale = drift.usage_scale if drift is not None and drifting else 1.0
        ticket_scale = drift.ticket_rate_scale if drift is not None and drifting else 1.0
        price_factor = 1 + (drift.price_increase_pct / 100.0 if drift is not None and drifting else 0.0)
        pay_scale = drift.payment_failure_scale if drift is not None and drifting else 1.0
        w_eng = drift.engagement_weight_scale if drift is not None and drifting else 1.0
        w_pay = drift.payment_weight_scale if drift is not None and drifting else 1.0

        engagement += rng.normal(0, 0.03, n) - np.where(declining & (d >= onset), decline_rate, 0.0)
        engagement += 0.004 * (0.6 * fit - engagement)  # mean reversion toward product fit
        idx = np.flatnonzero(alive)
        m = idx.size
        e = engagement[idx]
        weekend = (day0 + pd.Timedelta(days=d)).dayofweek >= 5

        # Daily product usage.
        p_active = _sigmoid(0.2 + 1.3 * e) * (0.35 if weekend else 1.0) * usage_scale
        active = rng.binomial(seats[idx], np.clip(p_active, 0, 1))
        logins = rng.poisson(active * 1.6)
        minutes = np.round(rng.gamma(2.0, 9.0 * (1 + 0.3 * np.tanh(e)), m) * logins, 1)
        api = rng.poisson(integrations[idx] * 40 * _sigmoid(e) * (active > 0))
        features_used = rng.binomial(PRODUCT_FEATURES, np.clip(_sigmoid(-1.0 + 1.1 * e + 0.3 * plan_idx[idx]), 0, 1)) * (active > 0)
        reports = rng.poisson(0.15 * active * _sigmoid(e))
        for key, arr in zip(DAILY_METRICS, (active, logins, minutes, api, features_used, reports), strict=True):
            trace.daily[key].append(arr)
        trace.day_rows.append(np.column_stack([idx, np.full(m, d)]))
        trace.mrr.append(np.round(mrr_base[idx] * price_factor, 2))

        # Support tickets: more, and more severe, when engagement is poor.
        rate = ticket_scale * 0.004 * np.sqrt(seats[idx]) * (1 + 1.5 * _sigmoid(-2 * e))
        k = rng.poisson(rate)
        if k.sum():
            t_idx = np.repeat(idx, k)
            t_e = np.repeat(e, k)
            sev_p = np.column_stack([0.45 + 0 * t_e, 0.33 + 0 * t_e, 0.16 + 0.10 * _sigmoid(-2 * t_e), 0.04 + 0.06 * _sigmoid(-2 * t_e)])
            sev = _choice(rng, SEVERITIES, sev_p / sev_p.sum(axis=1, keepdims=True))
            severe = np.isin(sev, ("high", "critical"))
            res_h = np.round(rng.gamma(1.5, np.where(severe, 20.0, 10.0) * np.where(csm[t_idx], 0.6, 1.0)), 1)
            csat_given = rng.random(t_idx.size) < 0.55
            csat = np.clip(np.round(4.2 + 0.6 * t_e - 0.02 * res_h + rng.normal(0, 0.7, t_idx.size)), 1, 5)
            cat_p = np.tile([0.2, 0.35, 0.35, 0.10], (t_idx.size, 1))
            trace.tickets.append(
                {
                    "_idx": t_idx,
                    "created_at": (day0 + pd.Timedelta(days=d) + pd.to_timedelta(rng.integers(0, 86_400, t_idx.size), unit="s")).to_numpy(),
                    "category": _choice(rng, TICKET_CATEGORIES, cat_p),
                    "severity": sev,
                    "resolution_hours": res_h,
                    "escalated": severe & (rng.random(t_idx.size) < 0.3),
                    "csat": np.where(csat_given, csat, np.nan),
                }
            )
            np.add.at(recent_sev, t_idx, severe.astype(float))
        recent_sev *= np.exp(-1 / 30)

        # Monthly invoices on each customer's billing day.
        bill = idx[billing_day[idx] == d % 28]
        if bill.size:
            fail_p = np.clip(
                pay_scale * (0.02 + 0.30 * distress[bill] + 0.04 * is_card[bill] + 0.05 * _sigmoid(-2 * engagement[bill])), 0, 0.95
            )
            failed = rng.random(bill.size) < fail_p
            trace.invoices.append(
                {
                    "_idx": bill,
                    "invoice_date": np.full(bill.size, day0 + pd.Timedelta(days=d)),
                    "amount": np.round(mrr_base[bill] * price_factor, 2),
                    "status": np.where(failed, "failed", "paid"),
                    "days_late": np.where(failed, 0, np.round(rng.exponential(np.where(distress[bill], 9.0, 1.5)))).astype(np.int64),
                }
            )
            np.add.at(recent_fail, bill[failed], 1.0)
        recent_fail *= np.exp(-1 / 30)

        # NPS surveys, roughly once a quarter.
        asked = idx[rng.random(m) < 1 / 90]
        if asked.size:
            score = np.clip(np.round(7.2 + 1.8 * engagement[asked] - 1.2 * recent_sev[asked] + rng.normal(0, 1.4, asked.size)), 0, 10)
            trace.nps.append(
                {"_idx": asked, "responded_at": np.full(asked.size, day0 + pd.Timedelta(days=d)), "score": score.astype(np.int64)}
            )
            last_nps[asked] = score

        # Churn hazard from observable behaviour, contract terms and interactions.
        to_renewal = (renewal_offset[idx] - d) % contract_len[idx]
        at_renewal = to_renewal <= 14
        util = active / np.maximum(seats[idx], 1) / (0.35 if weekend else 1.0)
        risk = (
            w_eng * 3.0 * np.logaddexp(0.0, -1.6 * e)  # soft threshold on disengagement
            + 0.9 * (util < 0.15)
            + w_pay * 0.9 * np.minimum(recent_fail[idx], 3)
            + 0.45 * np.minimum(recent_sev[idx], 4) * np.where(csm[idx], 0.3, 1.0)
            + 0.8 * np.nan_to_num(last_nps[idx] <= 6, nan=0.0) * (seg_idx[idx] < 2)
            + np.where(contract[idx] == "monthly", 0.9, np.where(at_renewal, 1.8, -1.6))
            + 0.6 * (tenure0[idx] + d < 180)
            + 0.02 * discount[idx] * (seg_idx[idx] == 0)
            - 0.35 * np.minimum(integrations[idx], 4) * _sigmoid(e)
            + frailty[idx]
        )
        # Sharpness > 1 spreads risk between customers: churn is driven by behaviour more than by luck.
        churned = rng.random(m) < _sigmoid(HAZARD_INTERCEPT + HAZARD_SHARPNESS * risk)
        churn_day[idx[churned]] = d
        alive[idx[churned]] = False

    return _assemble_block(cfg, cust, ids, churn_day, trace)


def _stack(parts: list[dict[str, np.ndarray]], columns: list[str]) -> dict[str, np.ndarray]:
    if not parts:
        return {}
    return {c: np.concatenate([p[c] for p in parts]) for c in columns}


def _assemble_block(
    cfg: GeneratorConfig,
    cust: pd.DataFrame,
    ids: np.ndarray,
    churn_day: np.ndarray,
    trace: _Trace,
) -> CustomerBlock:
    day0 = pd.Timestamp(cfg.start_date, tz="UTC")
    rows = np.concatenate(trace.day_rows)
    daily = pd.DataFrame(
        {
            "customer_id": ids[rows[:, 0]],
            "date": day0 + pd.to_timedelta(rows[:, 1], unit="D"),
            "seats_purchased": cust["seats_purchased"].to_numpy()[rows[:, 0]],
            "mrr": np.concatenate(trace.mrr),
            **{k: np.concatenate(v) for k, v in trace.daily.items()},
        }
    )
    ticket_cols = ["_idx", "created_at", "category", "severity", "resolution_hours", "escalated", "csat"]
    t = _stack(trace.tickets, ticket_cols)
    ticket_df = pd.DataFrame({c: t.get(c, np.array([])) for c in ticket_cols})
    ticket_df.insert(0, "customer_id", ids[ticket_df.pop("_idx").to_numpy(dtype=np.int64)])
    ticket_df["created_at"] = pd.to_datetime(ticket_df["created_at"], utc=True)
    ticket_df["resolved_at"] = ticket_df["created_at"] + pd.to_timedelta(ticket_df["resolution_hours"], unit="h")
    ticket_df.insert(0, "ticket_id", [f"T{cfg.seed}-{cid}-{i}" for i, cid in enumerate(ticket_df["customer_id"])])

    inv_cols = ["_idx", "invoice_date", "amount", "status", "days_late"]
    v = _stack(trace.invoices, inv_cols)
    inv_df = pd.DataFrame({c: v.get(c, np.array([])) for c in inv_cols})
    inv_df.insert(0, "customer_id", ids[inv_df.pop("_idx").to_numpy(dtype=np.int64)])
    inv_df["invoice_date"] = pd.to_datetime(inv_df["invoice_date"], utc=True)

    nps_cols = ["_idx", "responded_at", "score"]
    s = _stack(trace.nps, nps_cols)
    nps_df = pd.DataFrame({c: s.get(c, np.array([])) for c in nps_cols})
    nps_df.insert(0, "customer_id", ids[nps_df.pop("_idx").to_numpy(dtype=np.int64)])
    nps_df["responded_at"] = pd.to_datetime(nps_df["responded_at"], utc=True)

    churn_date = pd.Series(pd.NaT, index=cust.index, dtype="datetime64[ns, UTC]")
    has_churned = churn_day >= 0
    churn_date[has_churned] = day0 + pd.to_timedelta(churn_day[has_churned], unit="D")
    customers = cust.drop(columns=["_renewal_offset", "_contract_len"]).assign(churn_date=churn_date)
    customers["renewal_date"] = day0 + pd.to_timedelta(cust["_renewal_offset"], unit="D")
    customers["contract_length_days"] = cust["_contract_len"]

    return CustomerBlock(
        customers=customers,
        account_daily=daily,
        tickets=ticket_df,
        invoices=inv_df,
        nps=nps_df,
        labels=make_labels(cfg, customers),
    )


def make_labels(cfg: GeneratorConfig, customers: pd.DataFrame) -> pd.DataFrame:
    """One row per (customer active at a snapshot, labelled snapshot).

    ``churned_30d`` is 1 when the customer churns in ``[snapshot, snapshot + horizon)``.
    Customers that churned before a snapshot are not in it.
    """
    frames = []
    churn = customers["churn_date"]
    calendar = cfg.calendar
    for day in calendar.labelled_snapshot_days():
        ts = calendar.day_timestamp(day)
        active = churn.isna() | (churn >= ts)
        horizon_end = ts + pd.Timedelta(days=cfg.horizon_days)
        sub = customers.loc[active, ["customer_id", "mrr"]]
        frames.append(
            pd.DataFrame(
                {
                    "customer_id": sub["customer_id"].to_numpy(),
                    "event_timestamp": ts,
                    "churned_30d": (churn[active] < horizon_end).fillna(False).astype(np.int64).to_numpy(),
                    "mrr": sub["mrr"].to_numpy(),
                }
            )
        )
    return pd.concat(frames, ignore_index=True)


def generate_blocks(cfg: GeneratorConfig) -> Iterator[CustomerBlock]:
    """Yield the raw tables block by block (deterministic for a given seed and block size)."""
    for block_index, first in enumerate(range(0, cfg.n_customers, cfg.block_size)):
        yield _simulate_block(cfg, block_index, first, min(cfg.block_size, cfg.n_customers - first))


@dataclass(frozen=True)
class BlockTask:
    """One partition of the generation: block ``index`` (customers ``first`` .. ``first + n``), written as parts."""

    cfg: GeneratorConfig
    out_dir: Path
    index: int
    first: int
    n: int


def write_block(task: BlockTask) -> tuple[int, dict[str, int]]:
    """Simulate one block and write each raw table's ``part-<index>``; returns (customers, rows per table)."""
    block = _simulate_block(task.cfg, task.index, task.first, task.n)
    rows = {}
    for table, frame in block.tables.items():
        pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), task.out_dir / table / f"part-{task.index:05d}.parquet")
        rows[table] = len(frame)
    return task.n, rows


def write_raw(
    cfg: GeneratorConfig, out_dir: Path, progress: Callable[[int], object] | None = None, engine: Engine | None = None
) -> dict[str, int]:
    """Generate and write each raw table as ``out_dir/<table>/part-NNNNN.parquet``, one block per task on
    ``engine`` (default: this process); blocks are seeded by their index, so every engine writes the same parts.

    Returns the number of rows written per table.
    """
    counts = dict.fromkeys(RAW_TABLES, 0)
    for table in RAW_TABLES:
        (out_dir / table).mkdir(parents=True, exist_ok=True)
        for old in (out_dir / table).glob("part-*.parquet"):
            old.unlink()
    starts = range(0, cfg.n_customers, cfg.block_size)
    tasks = [BlockTask(cfg, out_dir, i, first, min(cfg.block_size, cfg.n_customers - first)) for i, first in enumerate(starts)]
    for customers, rows in (engine or InProcess()).map(write_block, tasks):
        for table, n in rows.items():
            counts[table] += n
        if progress is not None:
            progress(customers)
    write_calendar(out_dir, cfg.calendar)
    return counts


MANIFEST = "manifest.json"


def save_manifest(cfg: GeneratorConfig, out_dir: Path, counts: dict[str, int]) -> None:
    """Record how the raw data was generated (for lineage and for re-generating it)."""
    doc = {"config": _config_to_dict(cfg), "rows": counts}
    (out_dir / MANIFEST).write_text(json.dumps(doc, indent=2, default=str) + "\n")


def load_manifest(raw_dir: Path) -> GeneratorConfig:
    path = raw_dir / MANIFEST
    if not path.exists():
        raise NotFoundError(f"{path} not found; run `churnops data generate` first")
    raw = json.loads(path.read_text())["config"]
    drift = DriftConfig(**raw.pop("drift")) if raw.get("drift") else None
    raw.pop("drift", None)
    raw["end_date"] = dt.date.fromisoformat(raw["end_date"])
    return GeneratorConfig(**raw, drift=drift)


def _config_to_dict(cfg: GeneratorConfig) -> dict[str, object]:
    return asdict(cfg)
