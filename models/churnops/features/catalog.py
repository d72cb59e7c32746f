"""The feature catalog: the single definition of each feature.

Name, domain, type, description and lineage of all 116 point-in-time
features. The feature engine computes them, validation bounds them, and the
Feast repository and the catalog document (``feature_repo/FEATURES.md``) are
built from this list.
"""

from __future__ import annotations

from dataclasses import dataclass

from churnops.data.schema import DAILY_METRICS, PRODUCT_FEATURES, TICKET_CATEGORIES

DOMAINS = ("demographic", "billing", "usage", "support", "engagement")
WINDOWS = (7, 30, 90)
USAGE_METRICS = DAILY_METRICS
RECENCY_CAP_DAYS = 365  # "never seen in the history" is reported as this many days


@dataclass(frozen=True)
class FeatureSpec:
    name: str
    domain: str
    dtype: str  # "int64" | "float64" | "string"
    description: str
    lineage: str
    nullable: bool = False


def _usage_specs() -> list[FeatureSpec]:
    specs: list[FeatureSpec] = []
    for m in USAGE_METRICS:
        label = m.replace("_", " ")
        for w in WINDOWS:
            specs.append(
                FeatureSpec(
                    f"{m}_mean_{w}d",
                    "usage",
                    "float64",
                    f"Mean daily {label} over the last {w} days",
                    f"account_daily.{m}: mean over days [ts-{w}d, ts)",
                )
            )
        specs.append(
            FeatureSpec(
                f"{m}_trend_7_30",
                "usage",
                "float64",
                f"Ratio of the 7-day to the 30-day mean of daily {label} (below 1: declining)",
                f"account_daily.{m}: mean 7d / mean 30d",
            )
        )
        specs.append(
            FeatureSpec(
                f"{m}_trend_30_90",
                "usage",
                "float64",
                f"Ratio of the 30-day to the 90-day mean of daily {label}",
                f"account_daily.{m}: mean 30d / mean 90d",
            )
        )
    for m in ("logins", "active_users"):
        specs.append(
            FeatureSpec(
                f"{m}_std_30d",
                "usage",
                "float64",
                f"Standard deviation of daily {m.replace('_', ' ')} over 30 days",
                f"account_daily.{m}: std over [ts-30d, ts)",
            )
        )
    for m, col in (("login", "logins"), ("report", "reports_created"), ("api_call", "api_calls")):
        specs.append(
            FeatureSpec(
                f"days_since_last_{m}",
                "usage",
                "int64",
                f"Days since the last day with any {m.replace('_', ' ')} (capped at {RECENCY_CAP_DAYS})",
                f"account_daily.{col} > 0: last day before ts",
            )
        )
    for w in WINDOWS:
        specs.append(
            FeatureSpec(
                f"seat_utilization_{w}d",
                "usage",
                "float64",
                f"Mean daily active users per purchased seat over {w} days",
                f"account_daily.active_users / seats_purchased, mean over {w}d",
            )
        )
    for w in WINDOWS:
        specs.append(
            FeatureSpec(
                f"active_days_{w}d",
                "usage",
                "int64",
                f"Days with at least one login in the last {w} days",
                f"account_daily.logins > 0, count over {w}d",
            )
        )
    specs += [
        FeatureSpec(
            "active_users_max_30d", "usage", "float64", "Peak daily active users over 30 days", "account_daily.active_users: max over 30d"
        ),
        FeatureSpec(
            "weekend_login_share_30d",
            "usage",
            "float64",
            "Share of 30-day logins made on weekends",
            "account_daily.logins on Sat/Sun / all logins, 30d",
        ),
        FeatureSpec(
            "active_users_slope_30d",
            "usage",
            "float64",
            "Least-squares slope of daily active users over 30 days, relative to their mean (per day)",
            "account_daily.active_users: OLS slope / mean, 30d",
        ),
    ]
    return specs


_DEMOGRAPHIC = [
    FeatureSpec("segment", "demographic", "string", "Customer segment (smb, mid_market, enterprise)", "customers.segment"),
    FeatureSpec("plan", "demographic", "string", "Subscription plan", "customers.plan"),
    FeatureSpec("region", "demographic", "string", "Sales region", "customers.region"),
    FeatureSpec("industry", "demographic", "string", "Industry of the customer company", "customers.industry"),
    FeatureSpec("contract_type", "demographic", "string", "Contract type (monthly, annual, multi_year)", "customers.contract_type"),
    FeatureSpec("payment_method", "demographic", "string", "Payment method (card, invoice, ach)", "customers.payment_method"),
    FeatureSpec("acquisition_channel", "demographic", "string", "Channel that acquired the customer", "customers.acquisition_channel"),
    FeatureSpec("company_size", "demographic", "int64", "Number of employees of the customer company", "customers.company_size"),
    FeatureSpec("log_company_size", "demographic", "float64", "Natural log of the number of employees", "log(customers.company_size)"),
    FeatureSpec("tenure_days", "demographic", "int64", "Days since signup", "ts - customers.signup_date"),
    FeatureSpec("tenure_months", "demographic", "float64", "Months since signup", "(ts - customers.signup_date) / 30.44d"),
    FeatureSpec("is_new_customer", "demographic", "int64", "1 when the customer signed up less than 180 days ago", "tenure_days < 180"),
    FeatureSpec(
        "has_dedicated_csm", "demographic", "int64", "1 when a customer success manager is assigned", "customers.has_dedicated_csm"
    ),
    FeatureSpec("onboarding_completed", "demographic", "int64", "1 when onboarding was completed", "customers.onboarding_completed"),
    FeatureSpec("auto_renew", "demographic", "int64", "1 when the contract renews automatically", "customers.auto_renew"),
    FeatureSpec(
        "days_to_renewal", "demographic", "int64", "Days until the next contract renewal", "customers.renewal_date, contract_length_days"
    ),
    FeatureSpec("renewal_within_30d", "demographic", "int64", "1 when the contract renews within 30 days", "days_to_renewal < 30"),
    FeatureSpec("renewal_within_90d", "demographic", "int64", "1 when the contract renews within 90 days", "days_to_renewal < 90"),
]

_BILLING = [
    FeatureSpec("mrr", "billing", "float64", "Monthly recurring revenue on the last day before the snapshot", "account_daily.mrr at ts-1d"),
    FeatureSpec("arr", "billing", "float64", "Annual recurring revenue (12 x MRR)", "12 * mrr"),
    FeatureSpec("seats_purchased", "billing", "int64", "Seats under contract", "account_daily.seats_purchased at ts-1d"),
    FeatureSpec("list_price_per_seat", "billing", "float64", "List price per seat of the plan", "customers.list_price_per_seat"),
    FeatureSpec("discount_pct", "billing", "float64", "Contract discount in percent", "customers.discount_pct"),
    FeatureSpec("price_per_seat_paid", "billing", "float64", "MRR per purchased seat", "mrr / seats_purchased"),
    FeatureSpec("mrr_per_employee", "billing", "float64", "MRR per employee of the customer", "mrr / company_size"),
    FeatureSpec("mrr_change_30d", "billing", "float64", "Relative change of MRR over 30 days", "mrr(ts-1d) / mrr(ts-31d) - 1"),
    FeatureSpec("invoices_90d", "billing", "int64", "Invoices issued in the last 90 days", "invoices: count over 90d"),
    FeatureSpec("failed_payments_30d", "billing", "int64", "Failed payments in the last 30 days", "invoices.status == failed, 30d"),
    FeatureSpec("failed_payments_90d", "billing", "int64", "Failed payments in the last 90 days", "invoices.status == failed, 90d"),
    FeatureSpec(
        "failed_payment_rate_90d", "billing", "float64", "Share of invoices that failed in 90 days", "failed_payments_90d / invoices_90d"
    ),
    FeatureSpec(
        "days_since_last_failed_payment",
        "billing",
        "int64",
        f"Days since the last failed payment (capped at {RECENCY_CAP_DAYS})",
        "invoices.status == failed: last before ts",
    ),
    FeatureSpec("avg_days_late_90d", "billing", "float64", "Mean days late of paid invoices in 90 days", "invoices.days_late, paid, 90d"),
    FeatureSpec("max_days_late_90d", "billing", "int64", "Maximum days late of an invoice in 90 days", "invoices.days_late: max over 90d"),
    FeatureSpec("amount_billed_90d", "billing", "float64", "Amount invoiced in 90 days", "invoices.amount: sum over 90d"),
    FeatureSpec(
        "amount_failed_90d", "billing", "float64", "Amount of failed invoices in 90 days", "invoices.amount where failed: sum over 90d"
    ),
    FeatureSpec(
        "billed_to_mrr_ratio_90d", "billing", "float64", "Amount billed in 90 days relative to 3 x MRR", "amount_billed_90d / (3 * mrr)"
    ),
]

_SUPPORT = (
    [
        FeatureSpec(
            f"tickets_{w}d", "support", "int64", f"Support tickets opened in the last {w} days", f"tickets.created_at in [ts-{w}d, ts)"
        )
        for w in WINDOWS
    ]
    + [
        FeatureSpec(
            f"high_severity_tickets_{w}d",
            "support",
            "int64",
            f"High or critical tickets opened in the last {w} days",
            f"tickets.severity in (high, critical), {w}d",
        )
        for w in (30, 90)
    ]
    + [
        FeatureSpec("critical_tickets_90d", "support", "int64", "Critical tickets opened in 90 days", "tickets.severity == critical, 90d"),
        FeatureSpec(
            "avg_resolution_hours_30d",
            "support",
            "float64",
            "Mean resolution time of tickets resolved in 30 days",
            "tickets.resolution_hours, resolved_at in 30d",
            nullable=True,
        ),
        FeatureSpec(
            "avg_resolution_hours_90d",
            "support",
            "float64",
            "Mean resolution time of tickets resolved in 90 days",
            "tickets.resolution_hours, resolved_at in 90d",
            nullable=True,
        ),
        FeatureSpec(
            "max_resolution_hours_90d",
            "support",
            "float64",
            "Longest resolution time of a ticket resolved in 90 days (0 when none)",
            "tickets.resolution_hours: max, resolved_at in 90d",
        ),
        FeatureSpec("escalations_90d", "support", "int64", "Escalated tickets opened in 90 days", "tickets.escalated, 90d"),
        FeatureSpec("open_tickets", "support", "int64", "Tickets open at the snapshot", "tickets.created_at < ts <= tickets.resolved_at"),
        FeatureSpec(
            "csat_mean_90d",
            "support",
            "float64",
            "Mean CSAT (1-5) of tickets resolved in 90 days",
            "tickets.csat, resolved_at in 90d",
            nullable=True,
        ),
        FeatureSpec("csat_responses_90d", "support", "int64", "CSAT answers on tickets resolved in 90 days", "tickets.csat not null, 90d"),
        FeatureSpec("low_csat_90d", "support", "int64", "CSAT answers of 1 or 2 in 90 days", "tickets.csat <= 2, 90d"),
        FeatureSpec(
            "days_since_last_ticket",
            "support",
            "int64",
            f"Days since the last ticket (capped at {RECENCY_CAP_DAYS})",
            "tickets.created_at: last before ts",
        ),
        FeatureSpec(
            "ticket_trend_30_90",
            "support",
            "float64",
            "Tickets in 30 days relative to a third of the tickets in 90 days",
            "tickets_30d / (tickets_90d / 3)",
        ),
        FeatureSpec("tickets_per_seat_90d", "support", "float64", "Tickets in 90 days per purchased seat", "tickets_90d / seats_purchased"),
    ]
    + [
        FeatureSpec(f"{c}_tickets_90d", "support", "int64", f"Tickets of category {c} in 90 days", f"tickets.category == {c}, 90d")
        for c in TICKET_CATEGORIES
    ]
)

_ENGAGEMENT = [
    FeatureSpec("nps_last", "engagement", "float64", "Latest NPS answer (0-10)", "nps.score: last before ts", nullable=True),
    FeatureSpec("nps_mean_90d", "engagement", "float64", "Mean NPS answer in 90 days", "nps.score: mean over 90d", nullable=True),
    FeatureSpec("nps_responses_90d", "engagement", "int64", "NPS answers in 90 days", "nps: count over 90d"),
    FeatureSpec(
        "days_since_last_nps",
        "engagement",
        "int64",
        f"Days since the latest NPS answer (capped at {RECENCY_CAP_DAYS})",
        "nps.responded_at: last before ts",
    ),
    FeatureSpec("is_nps_detractor", "engagement", "int64", "1 when the latest NPS answer is 0-6", "nps_last <= 6"),
    FeatureSpec("is_nps_promoter", "engagement", "int64", "1 when the latest NPS answer is 9-10", "nps_last >= 9"),
    FeatureSpec(
        "features_used_max_30d",
        "engagement",
        "float64",
        "Most product features used on one day in 30 days",
        "account_daily.features_used: max over 30d",
    ),
    FeatureSpec(
        "feature_adoption_rate_30d",
        "engagement",
        "float64",
        "Share of the product's features used at peak in 30 days",
        f"features_used_max_30d / {PRODUCT_FEATURES}",
    ),
    FeatureSpec(
        "feature_breadth_trend_30_90",
        "engagement",
        "float64",
        "Peak features used in 30 days relative to 90 days",
        "max 30d / max 90d of account_daily.features_used",
    ),
    FeatureSpec(
        "logins_per_active_user_30d", "engagement", "float64", "Logins per active user-day in 30 days", "sum logins / sum active_users, 30d"
    ),
    FeatureSpec(
        "minutes_per_login_30d", "engagement", "float64", "Session minutes per login in 30 days", "sum session_minutes / sum logins, 30d"
    ),
    FeatureSpec(
        "reports_per_active_user_30d",
        "engagement",
        "float64",
        "Reports created per active user-day in 30 days",
        "sum reports_created / sum active_users, 30d",
    ),
    FeatureSpec(
        "api_calls_per_seat_30d", "engagement", "float64", "API calls per seat per day in 30 days", "mean api_calls 30d / seats_purchased"
    ),
    FeatureSpec(
        "inactive_streak_days",
        "engagement",
        "int64",
        f"Consecutive days without logins up to the snapshot (capped at {RECENCY_CAP_DAYS})",
        "account_daily.logins == 0 streak ending at ts-1d",
    ),
    FeatureSpec(
        "engagement_score",
        "engagement",
        "float64",
        "Composite health score 0-100 from utilization, adoption, recency and NPS",
        "seat_utilization_30d, feature_adoption_rate_30d, days_since_last_login, nps_last",
    ),
]

FEATURES: tuple[FeatureSpec, ...] = tuple(_DEMOGRAPHIC + _BILLING + _usage_specs() + _SUPPORT + _ENGAGEMENT)
FEATURES_BY_NAME = {f.name: f for f in FEATURES}


def features_of(domain: str) -> list[FeatureSpec]:
    return [f for f in FEATURES if f.domain == domain]
