"""Feast objects of the churn feature store.

Every feature's name, type and description come from the catalog in
``churnops.features.catalog``; this module only says how they are grouped,
where they are stored and which model version uses which set.

Batch sources differ between the embedded store (Parquet files) and the
cluster store (PostgreSQL tables), so feature views are built from a mapping
of domain -> source by ``build_objects``; the entity, request source and
service names do not depend on the deployment.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import pandas as pd
from feast import Entity, FeatureService, FeatureView, Field, FileSource, RequestSource
from feast.data_source import DataSource
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres_source import PostgreSQLSource
from feast.on_demand_feature_view import OnDemandFeatureView, on_demand_feature_view
from feast.types import Float64, Int64, PrimitiveFeastType, String
from feast.value_type import ValueType

from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.errors import InvalidInputError
from churnops.features.catalog import DOMAINS, features_of

OWNER = "ml-platform@churnops.io"
TAGS = {"team": "ml-platform", "product": "churn"}
# Snapshots are 30 days apart; a row stays valid until the next one plus slack.
FEATURE_TTL = timedelta(days=45)
# Feature service used to train and serve each model version (one per version).
TRAINING_SERVICE = "churn_v1"
LIVE_SERVICE = "churn_v1_live"
LIVE_VIEW = "live_usage"

_FEAST_TYPES: dict[str, PrimitiveFeastType] = {"int64": Int64, "float64": Float64, "string": String}

customer = Entity(
    name="customer",
    join_keys=[ENTITY],
    value_type=ValueType.INT64,
    description="A paying customer account (company), keyed by its numeric id",
    owner=OWNER,
    tags=TAGS,
)

# Values known only at request time, sent by the caller (product telemetry).
live_context = RequestSource(
    name="live_context",
    schema=[Field(name="active_users_today", dtype=Int64, description="Distinct users active so far today")],
    description="Request-time product telemetry",
    owner=OWNER,
    tags=TAGS,
)


LIVE_FEATURES = {
    "live_seat_utilization": "Active users today per purchased seat (request-time)",
    "live_activity_ratio": "Active users today relative to the 7-day mean of daily active users (request-time)",
}


def view_name(domain: str) -> str:
    return f"customer_{domain}"


def table_name(domain: str) -> str:
    """PostgreSQL table holding one domain's feature rows (cluster mode)."""
    return f"churn_features_{domain}"


def file_sources(features_dir: Path) -> dict[str, DataSource]:
    return {
        d: FileSource(
            name=f"{d}_file",
            path=str((features_dir / f"{d}.parquet").resolve()),
            timestamp_field=TIMESTAMP,
            description=f"Point-in-time {d} feature snapshots (Parquet)",
            owner=OWNER,
            tags=TAGS,
        )
        for d in DOMAINS
    }


def postgres_sources() -> dict[str, DataSource]:
    return {
        d: PostgreSQLSource(
            name=f"{d}_postgres",
            table=table_name(d),
            timestamp_field=TIMESTAMP,
            description=f"Point-in-time {d} feature snapshots (PostgreSQL)",
            owner=OWNER,
            tags=TAGS,
        )
        for d in DOMAINS
    }


def feature_view(domain: str, source: DataSource) -> FeatureView:
    return FeatureView(
        name=view_name(domain),
        entities=[customer],
        ttl=FEATURE_TTL,
        schema=[Field(name=f.name, dtype=_FEAST_TYPES[f.dtype], description=f.description) for f in features_of(domain)],
        source=source,
        online=True,
        description=f"Customer {domain} features, computed point-in-time at each snapshot",
        owner=OWNER,
        tags={**TAGS, "domain": domain},
    )


def live_usage_view(billing: FeatureView, usage: FeatureView) -> OnDemandFeatureView:
    """Request-time utilization, comparing today's activity with stored features."""

    @on_demand_feature_view(  # type: ignore[untyped-decorator]  # Feast's decorator is untyped
        name=LIVE_VIEW,
        sources=[billing[["seats_purchased"]], usage[["active_users_mean_7d"]], live_context],
        schema=[
            # Feast compares these with the inferred output schema, descriptions included,
            # so they are documented in LIVE_FEATURES instead.
            Field(name="live_seat_utilization", dtype=Float64),
            Field(name="live_activity_ratio", dtype=Float64),
        ],
        mode="pandas",
        description="Request-time usage compared with the stored snapshot",
        owner=OWNER,
        tags=TAGS,
    )
    def live_usage(inputs: pd.DataFrame) -> pd.DataFrame:
        today = inputs["active_users_today"].astype("float64")
        seats = inputs["seats_purchased"].astype("float64").clip(lower=1.0)
        return pd.DataFrame(
            {
                "live_seat_utilization": today / seats,
                "live_activity_ratio": today / (inputs["active_users_mean_7d"].astype("float64") + 1.0),
            }
        )

    view: OnDemandFeatureView = live_usage
    return view


@dataclass(frozen=True)
class FeastObjects:
    entity: Entity
    views: dict[str, FeatureView]
    on_demand: OnDemandFeatureView
    services: dict[str, FeatureService]

    def all(self) -> list[object]:
        return [self.entity, live_context, *self.views.values(), self.on_demand, *self.services.values()]


def build_objects(sources: Mapping[str, DataSource]) -> FeastObjects:
    missing = set(DOMAINS) - set(sources)
    if missing:
        raise InvalidInputError(f"no batch source for domain(s) {sorted(missing)}")
    views = {d: feature_view(d, sources[d]) for d in DOMAINS}
    live = live_usage_view(views["billing"], views["usage"])
    services = {
        TRAINING_SERVICE: FeatureService(
            name=TRAINING_SERVICE,
            features=list(views.values()),
            description="All batch features of churn model v1 (training and serving)",
            owner=OWNER,
            tags={**TAGS, "model_version": "v1"},
        ),
        LIVE_SERVICE: FeatureService(
            name=LIVE_SERVICE,
            features=[*views.values(), live],
            description="churn_v1 plus request-time usage (needs active_users_today in the request)",
            owner=OWNER,
            tags={**TAGS, "model_version": "v1"},
        ),
    }
    return FeastObjects(entity=customer, views=views, on_demand=live, services=services)
