"""Point-in-time feature engineering from the raw event tables.

Every feature of a snapshot at time ``ts`` is computed from events strictly
before ``ts``: daily rows of days ``< ts``, tickets created (and, for
resolution time and CSAT, resolved) before ``ts``, invoices and NPS answers
dated before ``ts``. Windows of 7/30/90 days end just before ``ts``.

The engine knows the raw-table contract (``churnops.data.schema``) and a
calendar, not how the tables were made: generated tables and a user's own
tables in that schema give the same features.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from churnops.data.parquet import read_parquet
from churnops.data.schema import ENTITY, EVENT_TABLES, PRODUCT_FEATURES, TICKET_CATEGORIES, TIMESTAMP, Calendar, check_columns
from churnops.errors import InvalidInputError, NotFoundError
from churnops.features.catalog import DOMAINS, RECENCY_CAP_DAYS, USAGE_METRICS, WINDOWS, features_of
from churnops.parallel.runner import Engine, InProcess

EPS = 1e-9


class _Cube:
    """Per-customer daily matrices of one block, with cumulative sums for O(1) windows."""

    def __init__(self, n: int, days: int) -> None:
        self.n, self.days = n, days
        self.cs: dict[str, np.ndarray] = {}
        self.raw: dict[str, np.ndarray] = {}

    def add(self, name: str, matrix: np.ndarray, keep_raw: bool = False) -> None:
        self.cs[name] = np.concatenate([np.zeros((self.n, 1)), np.cumsum(matrix, axis=1)], axis=1)
        if keep_raw:
            self.raw[name] = matrix

    def wsum(self, name: str, s: int, w: int) -> np.ndarray:
        """Sum over days [s-w, s)."""
        out: np.ndarray = self.cs[name][:, s] - self.cs[name][:, max(s - w, 0)]
        return out


@dataclass(frozen=True)
class _Events:
    """Positions and day indices of event rows, for features that are not window sums."""

    tpos: np.ndarray
    tday: np.ndarray
    rday: np.ndarray
    resolution_hours: np.ndarray
    ipos: np.ndarray
    iday: np.ndarray
    days_late: np.ndarray


def _bin(pos: np.ndarray, day: np.ndarray, n: int, days: int, weights: np.ndarray | None = None) -> np.ndarray:
    """Scatter event values into an (n, days) matrix; events outside the history are ignored."""
    ok = (day >= 0) & (day < days) & (pos >= 0)
    flat = pos[ok] * days + day[ok]
    w = None if weights is None else weights[ok]
    return np.bincount(flat, weights=w, minlength=n * days).reshape(n, days).astype(float)


def _last_day(matrix: np.ndarray) -> np.ndarray:
    """For each (customer, day): the last day <= day with a non-zero value, or -1."""
    marks = np.where(matrix > 0, np.arange(matrix.shape[1])[None, :], -1)
    return np.maximum.accumulate(marks, axis=1)


def _days_since(last: np.ndarray, s: int) -> np.ndarray:
    lastd = last[:, s - 1]
    return np.where(lastd < 0, RECENCY_CAP_DAYS, np.minimum(s - lastd, RECENCY_CAP_DAYS)).astype(np.int64)


def _ratio(a: np.ndarray, b: np.ndarray, default: float = 0.0) -> np.ndarray:
    return np.where(np.abs(b) > EPS, a / np.where(np.abs(b) > EPS, b, 1.0), default)


def _day_index(ts: pd.Series, day0: pd.Timestamp) -> np.ndarray:
    return np.floor((ts - day0).dt.total_seconds().to_numpy() / 86_400).astype(np.int64)


def compute_block_features(
    calendar: Calendar, tables: dict[str, pd.DataFrame], snapshot_days: Iterable[int] | None = None
) -> dict[str, pd.DataFrame]:
    """Features of every customer active at each snapshot (default: the calendar's), one frame per domain.

    ``tables`` holds the event tables of a set of customers (whole histories);
    a customer is active at a snapshot unless its ``churn_date`` is earlier.
    """
    for table in EVENT_TABLES:
        if table not in tables:
            raise InvalidInputError(f"the feature engine needs the raw table {table!r}")
        check_columns(table, tables[table])
    snapshot_days = calendar.snapshot_days() if snapshot_days is None else list(snapshot_days)
    cust = tables["customers"].reset_index(drop=True)
    n, days = len(cust), calendar.history_days
    day0 = pd.Timestamp(calendar.start_date, tz="UTC")
    index = pd.Index(cust["customer_id"])

    cube = _Cube(n, days)
    daily = tables["account_daily"]
    dpos = index.get_indexer(daily["customer_id"])
    dday = _day_index(daily["date"], day0)
    for m in USAGE_METRICS:
        cube.add(
            m,
            _bin(dpos, dday, n, days, daily[m].to_numpy(float)),
            keep_raw=m in ("active_users", "logins", "features_used", "reports_created", "api_calls"),
        )
    cube.add("logins_sq", cube.raw["logins"] ** 2)
    cube.add("active_users_sq", cube.raw["active_users"] ** 2)
    cube.add("active_day", (cube.raw["logins"] > 0).astype(float))
    weekend = np.array([(day0 + pd.Timedelta(days=d)).dayofweek >= 5 for d in range(days)])
    cube.add("weekend_logins", cube.raw["logins"] * weekend[None, :])
    mrr_m = np.zeros((n, days))
    seats_m = np.zeros((n, days))
    mrr_m[dpos, dday] = daily["mrr"].to_numpy(float)
    seats_m[dpos, dday] = daily["seats_purchased"].to_numpy(float)

    t = tables["tickets"]
    tpos = index.get_indexer(t["customer_id"])
    tday = _day_index(t["created_at"], day0)
    rday = _day_index(t["resolved_at"], day0)
    sev = t["severity"].to_numpy()
    csat = t["csat"].to_numpy(float)
    has_csat = ~np.isnan(csat)
    cube.add("tickets", _bin(tpos, tday, n, days), keep_raw=True)
    cube.add("high_sev", _bin(tpos, tday, n, days, np.isin(sev, ("high", "critical")).astype(float)))
    cube.add("critical", _bin(tpos, tday, n, days, (sev == "critical").astype(float)))
    cube.add("escalated", _bin(tpos, tday, n, days, t["escalated"].to_numpy(float)))
    for c in TICKET_CATEGORIES:
        cube.add(f"cat_{c}", _bin(tpos, tday, n, days, (t["category"].to_numpy() == c).astype(float)))
    # Resolution time and CSAT are only known once a ticket is resolved: bin them by resolution day.
    cube.add("resolved", _bin(tpos, rday, n, days))
    cube.add("resolution_h", _bin(tpos, rday, n, days, t["resolution_hours"].to_numpy(float)))
    cube.add("csat_n", _bin(tpos, rday, n, days, has_csat.astype(float)))
    cube.add("csat_sum", _bin(tpos, rday, n, days, np.nan_to_num(csat)))
    cube.add("csat_low", _bin(tpos, rday, n, days, (has_csat & (csat <= 2)).astype(float)))

    inv = tables["invoices"]
    ipos = index.get_indexer(inv["customer_id"])
    iday = _day_index(inv["invoice_date"], day0)
    failed = (inv["status"].to_numpy() == "failed").astype(float)
    amount = inv["amount"].to_numpy(float)
    late = inv["days_late"].to_numpy(float)
    cube.add("invoices", _bin(ipos, iday, n, days))
    cube.add("failed", _bin(ipos, iday, n, days, failed), keep_raw=True)
    cube.add("amount", _bin(ipos, iday, n, days, amount))
    cube.add("amount_failed", _bin(ipos, iday, n, days, amount * failed))
    cube.add("paid", _bin(ipos, iday, n, days, 1 - failed))
    cube.add("late_sum", _bin(ipos, iday, n, days, late * (1 - failed)))

    nps = tables["nps"]
    npos = index.get_indexer(nps["customer_id"])
    nday = _day_index(nps["responded_at"], day0)
    cube.add("nps_n", _bin(npos, nday, n, days), keep_raw=True)
    cube.add("nps_sum", _bin(npos, nday, n, days, nps["score"].to_numpy(float)))
    nps_score_m = np.full((n, days), np.nan)
    ok = (nday >= 0) & (nday < days)
    nps_score_m[npos[ok], nday[ok]] = nps["score"].to_numpy(float)[ok]

    events = _Events(tpos, tday, rday, t["resolution_hours"].to_numpy(float), ipos, iday, late)
    last = {k: _last_day(cube.raw[k]) for k in ("logins", "reports_created", "api_calls", "failed", "tickets", "nps_n")}
    block = _Block(cust, cube, mrr_m, seats_m, last, nps_score_m, events)
    churn = cust["churn_date"]
    out: dict[str, list[pd.DataFrame]] = {d: [] for d in DOMAINS}
    for s in snapshot_days:
        ts = day0 + pd.Timedelta(days=s)
        active = (churn.isna() | (churn >= ts)).to_numpy()
        cols = _snapshot_columns(block, s, ts)
        base = pd.DataFrame({ENTITY: cust[ENTITY].to_numpy()[active], TIMESTAMP: ts})
        for domain in DOMAINS:
            frame = base.copy()
            for spec in features_of(domain):
                frame[spec.name] = _cast(cols[spec.name][active], spec.dtype)
            out[domain].append(frame)
    return {d: pd.concat(frames, ignore_index=True) for d, frames in out.items()}


def _cast(values: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "string":
        return values.astype(object)
    if dtype == "int64":
        return np.asarray(values).astype(np.int64)
    return np.asarray(values, dtype=np.float64)


def _window_max(values: np.ndarray, pos: np.ndarray, day: np.ndarray, *, n: int, lo: int, hi: int) -> np.ndarray:
    out = np.zeros(n)
    ok = (day >= lo) & (day < hi) & (pos >= 0)
    np.maximum.at(out, pos[ok], values[ok])
    return out


@dataclass(frozen=True)
class _Block:
    """Everything about one block of customers that snapshot features are read from."""

    cust: pd.DataFrame
    cube: _Cube
    mrr: np.ndarray  # (customer, day) MRR
    seats: np.ndarray  # (customer, day) purchased seats
    last: dict[str, np.ndarray]  # (customer, day) -> last day with activity of a kind
    nps_score: np.ndarray  # (customer, day) NPS answer or NaN
    events: _Events


def _snapshot_columns(block: _Block, s: int, ts: pd.Timestamp) -> dict[str, np.ndarray]:
    cust, cube, mrr_m, seats_m, last, nps_score_m, ev = (
        block.cust,
        block.cube,
        block.mrr,
        block.seats,
        block.last,
        block.nps_score,
        block.events,
    )
    n = cube.n
    c: dict[str, np.ndarray] = {}
    # Demographic / firmographic
    for col in ("segment", "plan", "region", "industry", "contract_type", "payment_method", "acquisition_channel"):
        c[col] = cust[col].to_numpy()
    size = cust["company_size"].to_numpy(float)
    c["company_size"] = size
    c["log_company_size"] = np.log(size)
    tenure = (ts - cust["signup_date"]).dt.days.to_numpy()
    c["tenure_days"] = tenure
    c["tenure_months"] = tenure / 30.44
    c["is_new_customer"] = tenure < 180
    for col in ("has_dedicated_csm", "onboarding_completed", "auto_renew"):
        c[col] = cust[col].to_numpy()
    to_renewal = (cust["renewal_date"] - ts).dt.days.to_numpy() % cust["contract_length_days"].to_numpy()
    c["days_to_renewal"] = to_renewal
    c["renewal_within_30d"] = to_renewal < 30
    c["renewal_within_90d"] = to_renewal < 90

    # Billing
    mrr = mrr_m[:, s - 1]
    seats = np.maximum(seats_m[:, s - 1], 1)
    c["mrr"] = mrr
    c["arr"] = 12 * mrr
    c["seats_purchased"] = seats
    c["list_price_per_seat"] = cust["list_price_per_seat"].to_numpy(float)
    c["discount_pct"] = cust["discount_pct"].to_numpy(float)
    c["price_per_seat_paid"] = mrr / seats
    c["mrr_per_employee"] = mrr / size
    c["mrr_change_30d"] = _ratio(mrr, mrr_m[:, s - 31], 1.0) - 1
    inv90 = cube.wsum("invoices", s, 90)
    c["invoices_90d"] = inv90
    c["failed_payments_30d"] = cube.wsum("failed", s, 30)
    c["failed_payments_90d"] = cube.wsum("failed", s, 90)
    c["failed_payment_rate_90d"] = _ratio(c["failed_payments_90d"], inv90)
    c["days_since_last_failed_payment"] = _days_since(last["failed"], s)
    c["avg_days_late_90d"] = _ratio(cube.wsum("late_sum", s, 90), cube.wsum("paid", s, 90))
    c["max_days_late_90d"] = _window_max(ev.days_late, ev.ipos, ev.iday, n=n, lo=s - 90, hi=s)
    c["amount_billed_90d"] = cube.wsum("amount", s, 90)
    c["amount_failed_90d"] = cube.wsum("amount_failed", s, 90)
    c["billed_to_mrr_ratio_90d"] = _ratio(c["amount_billed_90d"], 3 * mrr)

    # Usage
    means = {(m, w): cube.wsum(m, s, w) / w for m in USAGE_METRICS for w in WINDOWS}
    for m in USAGE_METRICS:
        for w in WINDOWS:
            c[f"{m}_mean_{w}d"] = means[(m, w)]
        c[f"{m}_trend_7_30"] = _ratio(means[(m, 7)], means[(m, 30)], 1.0)
        c[f"{m}_trend_30_90"] = _ratio(means[(m, 30)], means[(m, 90)], 1.0)
    for m in ("logins", "active_users"):
        var = cube.wsum(f"{m}_sq", s, 30) / 30 - means[(m, 30)] ** 2
        c[f"{m}_std_30d"] = np.sqrt(np.maximum(var, 0))
    c["days_since_last_login"] = _days_since(last["logins"], s)
    c["days_since_last_report"] = _days_since(last["reports_created"], s)
    c["days_since_last_api_call"] = _days_since(last["api_calls"], s)
    for w in WINDOWS:
        c[f"seat_utilization_{w}d"] = means[("active_users", w)] / seats
        c[f"active_days_{w}d"] = cube.wsum("active_day", s, w)
    au30 = cube.raw["active_users"][:, s - 30 : s]
    c["active_users_max_30d"] = au30.max(axis=1)
    c["weekend_login_share_30d"] = _ratio(cube.wsum("weekend_logins", s, 30), cube.wsum("logins", s, 30))
    x = np.arange(30) - 14.5
    c["active_users_slope_30d"] = _ratio((au30 * x).sum(axis=1) / (x**2).sum(), means[("active_users", 30)])

    # Support
    for w in WINDOWS:
        c[f"tickets_{w}d"] = cube.wsum("tickets", s, w)
    for w in (30, 90):
        c[f"high_severity_tickets_{w}d"] = cube.wsum("high_sev", s, w)
    c["critical_tickets_90d"] = cube.wsum("critical", s, 90)
    c["avg_resolution_hours_30d"] = _ratio(cube.wsum("resolution_h", s, 30), cube.wsum("resolved", s, 30), np.nan)
    c["avg_resolution_hours_90d"] = _ratio(cube.wsum("resolution_h", s, 90), cube.wsum("resolved", s, 90), np.nan)
    c["max_resolution_hours_90d"] = _window_max(ev.resolution_hours, ev.tpos, ev.rday, n=n, lo=s - 90, hi=s)
    c["escalations_90d"] = cube.wsum("escalated", s, 90)
    c["open_tickets"] = np.bincount(ev.tpos[(ev.tday < s) & (ev.rday >= s) & (ev.tpos >= 0)], minlength=n)
    c["csat_responses_90d"] = cube.wsum("csat_n", s, 90)
    c["csat_mean_90d"] = _ratio(cube.wsum("csat_sum", s, 90), c["csat_responses_90d"], np.nan)
    c["low_csat_90d"] = cube.wsum("csat_low", s, 90)
    c["days_since_last_ticket"] = _days_since(last["tickets"], s)
    c["ticket_trend_30_90"] = _ratio(c["tickets_30d"], c["tickets_90d"] / 3, 1.0)
    c["tickets_per_seat_90d"] = c["tickets_90d"] / seats
    for cat in TICKET_CATEGORIES:
        c[f"{cat}_tickets_90d"] = cube.wsum(f"cat_{cat}", s, 90)

    # Engagement
    nps_hist = nps_score_m[:, :s]
    has_nps = last["nps_n"][:, s - 1] >= 0
    last_idx = np.maximum(last["nps_n"][:, s - 1], 0)
    nps_last = np.where(has_nps, nps_hist[np.arange(n), last_idx], np.nan)
    c["nps_last"] = nps_last
    c["nps_responses_90d"] = cube.wsum("nps_n", s, 90)
    c["nps_mean_90d"] = _ratio(cube.wsum("nps_sum", s, 90), c["nps_responses_90d"], np.nan)
    c["days_since_last_nps"] = _days_since(last["nps_n"], s)
    c["is_nps_detractor"] = np.nan_to_num(nps_last <= 6, nan=0.0)
    c["is_nps_promoter"] = np.nan_to_num(nps_last >= 9, nan=0.0)
    fu = cube.raw["features_used"]
    fmax30 = fu[:, s - 30 : s].max(axis=1)
    c["features_used_max_30d"] = fmax30
    c["feature_adoption_rate_30d"] = fmax30 / float(PRODUCT_FEATURES)
    c["feature_breadth_trend_30_90"] = _ratio(fmax30, fu[:, s - 90 : s].max(axis=1), 1.0)
    au_sum30 = cube.wsum("active_users", s, 30)
    c["logins_per_active_user_30d"] = _ratio(cube.wsum("logins", s, 30), au_sum30)
    c["minutes_per_login_30d"] = _ratio(cube.wsum("session_minutes", s, 30), cube.wsum("logins", s, 30))
    c["reports_per_active_user_30d"] = _ratio(cube.wsum("reports_created", s, 30), au_sum30)
    c["api_calls_per_seat_30d"] = means[("api_calls", 30)] / seats
    c["inactive_streak_days"] = np.minimum(s - 1 - last["logins"][:, s - 1], RECENCY_CAP_DAYS)
    c["engagement_score"] = 100 * (
        0.35 * np.clip(c["seat_utilization_30d"] / 0.6, 0, 1)
        + 0.25 * c["feature_adoption_rate_30d"]
        + 0.25 * np.clip(1 - c["days_since_last_login"] / 14, 0, 1)
        + 0.15 * np.where(np.isnan(nps_last), 0.5, np.nan_to_num(nps_last) / 10)
    )
    return c


def feature_schema(domain: str) -> pa.Schema:
    types = {"int64": pa.int64(), "float64": pa.float64(), "string": pa.string()}
    fields = [pa.field(ENTITY, pa.int64(), nullable=False), pa.field(TIMESTAMP, pa.timestamp("us", tz="UTC"), nullable=False)]
    fields += [pa.field(f.name, types[f.dtype], nullable=f.nullable) for f in features_of(domain)]
    return pa.schema(fields)


@dataclass(frozen=True)
class FeatureTask:
    """One partition of the feature build: a raw part, which holds whole customer histories."""

    calendar: Calendar
    raw_dir: Path
    part: str


def part_tables(raw_dir: Path, part: str) -> dict[str, pd.DataFrame]:
    return {t: read_parquet(raw_dir / t / part) for t in EVENT_TABLES}


def compute_part(task: FeatureTask) -> tuple[int, dict[str, pa.Table]]:
    """The features of one raw part as Arrow tables (what an engine task returns), and its number of customers."""
    tables = part_tables(task.raw_dir, task.part)
    frames = compute_block_features(task.calendar, tables)
    out = {d: pa.Table.from_pandas(frames[d], schema=feature_schema(d), preserve_index=False) for d in DOMAINS}
    return len(tables["customers"]), out


def build_features(
    calendar: Calendar,
    raw_dir: Path,
    out_dir: Path,
    progress: Callable[[int], object] | None = None,
    engine: Engine | None = None,
) -> dict[str, int]:
    """Compute all snapshots' features part by part into ``out_dir/<domain>.parquet``.

    Each raw part (whole customer histories) is one task on ``engine`` (default: this process), so memory
    per task stays bounded by the part size whatever the number of customers. Results are written in the
    parts' order, so every engine writes the same files.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    parts = sorted((raw_dir / "customers").glob("part-*.parquet"))
    if not parts:
        raise NotFoundError(f"no raw data under {raw_dir}; run `churnops data generate` first")
    tasks = [FeatureTask(calendar, raw_dir, p.name) for p in parts]
    writers = {d: pq.ParquetWriter(out_dir / f"{d}.parquet", feature_schema(d)) for d in DOMAINS}
    rows = dict.fromkeys(DOMAINS, 0)
    try:
        for customers, tables in (engine or InProcess()).map(compute_part, tasks):
            for domain, table in tables.items():
                writers[domain].write_table(table)
                rows[domain] += table.num_rows
            if progress is not None:
                progress(customers)
    finally:
        for w in writers.values():
            w.close()
    return rows
