"""Opening, filling and reading the Feast feature store (embedded or cluster)."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from importlib import resources
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import pandas as pd
import psycopg
import pyarrow.parquet as pq
import yaml
from feast import FeatureStore, RepoConfig
from feast.errors import FeatureServiceNotFoundException

from churnops.data.schema import ENTITY, TIMESTAMP
from churnops.errors import ConfigError, InvalidInputError, NotFoundError
from churnops.features.catalog import DOMAINS, features_of
from churnops_feast.definitions import FeastObjects, build_objects, file_sources, postgres_sources, table_name

log = logging.getLogger(__name__)

Mode = Literal["embedded", "cluster"]
CONFIG_FILES: dict[str, str] = {"embedded": "feature_store.yaml", "cluster": "feature_store.cluster.yaml"}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_PG_TYPES = {"int64": "BIGINT", "float64": "DOUBLE PRECISION", "string": "TEXT"}


def expand_env(text: str, env: Mapping[str, str]) -> str:
    """Expand ``${VAR}`` and ``${VAR:-default}``; an unset variable without default is an error."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if name in env and env[name] != "":
            return env[name]
        if default is None:
            raise ConfigError(f"feature store config needs the environment variable {name}", field=name)
        return default

    return _VAR.sub(sub, text)


def config_text(mode: Mode, repo_dir: Path | None = None) -> str:
    """The store configuration of ``mode``: from ``repo_dir`` when given, else the one installed with this package."""
    name = CONFIG_FILES[mode]
    if repo_dir is not None:
        path = repo_dir / name
        if not path.exists():
            raise ConfigError(f"{path} not found", field="--feature-repo")
        return path.read_text()
    return resources.files("churnops_feast").joinpath(name).read_text()


def load_config(mode: Mode, env: Mapping[str, str], repo_dir: Path | None = None) -> RepoConfig:
    # the registry is a URL: a password with '@', ':' or '/' must be percent-encoded there (and only there)
    env = {**env, "CHURNOPS_PG_PASSWORD_URLENCODED": quote(env.get("CHURNOPS_PG_PASSWORD", ""), safe="")}
    raw: dict[str, Any] = yaml.safe_load(expand_env(config_text(mode, repo_dir), env))
    config = RepoConfig(**raw)
    # Feast resolves relative paths against the repository; ours are absolute (from CHURNOPS_DATA_DIR).
    config.repo_path = repo_dir or Path(str(resources.files("churnops_feast")))
    return config


def open_store(mode: Mode, env: Mapping[str, str], data_dir: Path, repo_dir: Path | None = None) -> FeatureStore:
    """A FeatureStore for ``mode``; embedded files go under ``data_dir/feast``."""
    env = {**env, "CHURNOPS_DATA_DIR": str(data_dir.resolve())}
    if mode == "embedded":
        (data_dir / "feast").mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=load_config(mode, env, repo_dir))


def objects_for(mode: Mode, features_dir: Path) -> FeastObjects:
    return build_objects(file_sources(features_dir) if mode == "embedded" else postgres_sources())


def apply(store: FeatureStore, objects: FeastObjects) -> None:
    """Register (or update) all objects; running it again is a no-op."""
    store.apply(objects.all())  # type: ignore[arg-type]


def pg_dsn(env: Mapping[str, str]) -> str:
    def get(k: str, d: str) -> str:
        return env.get(k) or d

    return (
        f"host={get('CHURNOPS_PG_HOST', '127.0.0.1')} port={get('CHURNOPS_PG_PORT', '5432')} "
        f"dbname={get('CHURNOPS_PG_DATABASE', 'churnops')} user={get('CHURNOPS_PG_USER', 'postgres')} "
        f"password={get('CHURNOPS_PG_PASSWORD', '')} sslmode={get('CHURNOPS_PG_SSLMODE', 'disable')} connect_timeout=10"
    )


def load_into_postgres(dsn: str, features_dir: Path, batch_rows: int = 50_000) -> dict[str, int]:
    """(Re)create one table per domain and COPY the Parquet feature rows into it.

    The tables are replaced inside one transaction, so readers never see a half-loaded table.
    """
    counts: dict[str, int] = {}
    with psycopg.connect(dsn) as conn, conn.cursor() as cur:
        for domain in DOMAINS:
            table = table_name(domain)
            cols = [f"{ENTITY} BIGINT NOT NULL", f"{TIMESTAMP} TIMESTAMPTZ NOT NULL"]
            cols += [f'"{f.name}" {_PG_TYPES[f.dtype]}' for f in features_of(domain)]
            cur.execute(f"DROP TABLE IF EXISTS {table}")
            cur.execute(f"CREATE TABLE {table} ({', '.join(cols)})")
            names = [ENTITY, TIMESTAMP, *(f.name for f in features_of(domain))]
            counts[domain] = 0
            parquet = pq.ParquetFile(features_dir / f"{domain}.parquet")
            with cur.copy(f"COPY {table} ({', '.join(chr(34) + n + chr(34) for n in names)}) FROM STDIN WITH (FORMAT csv)") as copy:
                for batch in parquet.iter_batches(batch_size=batch_rows, columns=names):
                    frame = batch.to_pandas()
                    buf = io.StringIO()
                    frame.to_csv(buf, header=False, index=False, date_format="%Y-%m-%d %H:%M:%S%z")
                    copy.write(buf.getvalue())
                    counts[domain] += len(frame)
            cur.execute(f"CREATE INDEX ON {table} ({ENTITY}, {TIMESTAMP})")
        conn.commit()
    return counts


def materialize(store: FeatureStore, start: datetime, end: datetime) -> None:
    """Backfill the online store with the latest row per customer in ``[start, end]``."""
    store.materialize(start_date=start, end_date=end)


def materialize_incremental(store: FeatureStore, end: datetime) -> None:
    """Load what arrived since the last materialization (the first run starts at now - ttl)."""
    store.materialize_incremental(end_date=end)


def online_features(
    store: FeatureStore, customer_ids: Sequence[int], service: str, extra: Mapping[str, Sequence[Any]] | None = None
) -> dict[str, list[Any]]:
    rows: dict[str, Sequence[Any]] = {ENTITY: list(customer_ids), **(extra or {})}
    return store.get_online_features(features=store.get_feature_service(service), entity_rows=rows).to_dict()


def historical_features(store: FeatureStore, entity_df: pd.DataFrame, service: str) -> pd.DataFrame:
    """Point-in-time join of ``entity_df`` (customer_id, event_timestamp, ...) with a service's features."""
    for col in (ENTITY, TIMESTAMP):
        if col not in entity_df.columns:
            raise InvalidInputError(f"entity_df needs a {col!r} column")
    try:
        features = store.get_feature_service(service)
    except FeatureServiceNotFoundException:
        raise NotFoundError(f"feature service {service!r} is not in the feature store; run `churnops features publish` first") from None
    job = store.get_historical_features(entity_df=entity_df, features=features)
    frame = job.to_df()
    # The PostgreSQL store returns naive UTC timestamps, the file store aware ones: always return UTC-aware.
    if frame[TIMESTAMP].dt.tz is None:
        frame[TIMESTAMP] = frame[TIMESTAMP].dt.tz_localize("UTC")
    return frame
