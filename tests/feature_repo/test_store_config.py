from __future__ import annotations

import pytest
from feast.infra.offline_stores.contrib.postgres_offline_store.postgres import PostgreSQLOfflineStoreConfig
from feast.infra.online_stores.redis import RedisOnlineStoreConfig
from feast.infra.online_stores.sqlite import SqliteOnlineStoreConfig

from churnops.errors import ConfigError
from churnops_feast.store import expand_env, load_config


def test_expand_env_uses_values_then_defaults() -> None:
    assert expand_env("a=${A:-1} b=${B:-two}", {"A": "x"}) == "a=x b=two"
    assert expand_env("${EMPTY:-fallback}", {"EMPTY": ""}) == "fallback"


def test_expand_env_names_a_missing_variable() -> None:
    with pytest.raises(ConfigError, match="SECRET_TOKEN"):
        expand_env("token: ${SECRET_TOKEN}", {})


def test_embedded_config_is_sqlite_and_files() -> None:
    cfg = load_config("embedded", {"CHURNOPS_DATA_DIR": "/srv/churn"})
    assert isinstance(cfg.online_store, SqliteOnlineStoreConfig)
    assert cfg.online_store.path == "/srv/churn/feast/online_store.db"
    assert cfg.offline_store.type == "file"


def test_cluster_config_reads_the_environment() -> None:
    env = {
        "CHURNOPS_REDIS": "redis.churn:6379",
        "CHURNOPS_PG_HOST": "pg.churn",
        "CHURNOPS_PG_PASSWORD": "s3cret",
        "CHURNOPS_PG_SSLMODE": "require",
    }
    cfg = load_config("cluster", env)
    assert isinstance(cfg.online_store, RedisOnlineStoreConfig)
    assert cfg.online_store.connection_string == "redis.churn:6379"
    assert isinstance(cfg.offline_store, PostgreSQLOfflineStoreConfig)
    assert (cfg.offline_store.host, cfg.offline_store.password, cfg.offline_store.sslmode) == ("pg.churn", "s3cret", "require")
    assert cfg.registry.path.startswith("postgresql+psycopg://postgres:s3cret@pg.churn:5432/churnops")


def test_cluster_defaults_work_without_environment() -> None:
    cfg = load_config("cluster", {})
    assert cfg.offline_store.password == ""
    assert cfg.offline_store.sslmode == "disable"


def test_a_password_with_url_characters_is_encoded_in_the_registry_url_only() -> None:
    cfg = load_config("cluster", {"CHURNOPS_PG_PASSWORD": "p@ss:w/rd%"})
    assert cfg.registry.path.startswith("postgresql+psycopg://postgres:p%40ss%3Aw%2Frd%25@127.0.0.1:5432/")
    assert cfg.offline_store.password == "p@ss:w/rd%"


def test_redis_connection_string_options_reach_the_serving_client() -> None:
    from churnops.serving.server import redis_options  # noqa: PLC0415 - imports the serving stack

    assert redis_options("cache.aws:6380,password=tok,ssl=true,db=2") == {
        "host": "cache.aws",
        "port": 6380,
        "password": "tok",
        "ssl": True,
        "db": 2,
    }
    with pytest.raises(ConfigError, match="CHURNOPS_REDIS: unknown setting 'sentinel'"):
        redis_options("h:1,sentinel=x")
