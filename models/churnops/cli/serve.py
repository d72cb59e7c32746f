"""``churnops serve`` (the online predictor) and ``churnops token`` (bearer tokens for it).

``serve`` extends KServe's own argument parser, so every ModelServer option
(``--http_port``, ``--workers``, ``--enable_docs_url`` …) works as documented by
KServe; ChurnOps' options come after. KServe parses ``sys.argv`` when imported,
so the parser is only built with it when ``serve`` is the command (``churnops
--help`` stays fast).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from churnops.cli.audit import add_key_args
from churnops.errors import ConfigError
from churnops.serving.auth import AuthConfig, JwksKeys, KeyDirectory, UnusableKeyError, issue_token, local_secret, usable_key
from churnops.serving.security import HttpLimits, Limits

SECRET_ENV = "CHURNOPS_JWT_SECRET"


def kserve_parser() -> argparse.ArgumentParser:
    from kserve import model_server  # see the module docstring

    parser: argparse.ArgumentParser = model_server.parser
    return parser


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser], with_kserve: bool) -> None:
    parents = [kserve_parser()] if with_kserve else []
    serve = sub.add_parser(
        "serve",
        parents=parents,
        help="run the online predictor (KServe ModelServer, V1 + V2)",
        description="Online predictor. KServe's ModelServer options are accepted too (see them with `churnops serve --help`).",
    )
    serve.add_argument(
        "--model",
        action="append",
        dest="models",
        help="alias, version or models:/ URI; repeat to serve several (default champion, none with --route)",
    )
    route = serve.add_argument_group("routed endpoint (the embedded rollout: a stable and a canary version behind one name)")
    route.add_argument(
        "--route", default=None, help="serve this endpoint (e.g. churn), split by the routing table that `churnops rollout` writes"
    )
    route.add_argument(
        "--routing-table", type=Path, default=None, help="the table to follow (default <data-dir>/rollout/<route>/routing.json)"
    )
    route.add_argument("--route-seed", type=int, default=None, help="seed of the per-request draws (a reproducible split)")
    serve.add_argument(
        "--port", dest="http_port", type=int, default=argparse.SUPPRESS, help="HTTP port (KServe's --http_port; default 8080)"
    )
    serve.add_argument("--host", default=None, help="address to bind (default 127.0.0.1 in embedded mode, 0.0.0.0 in cluster mode)")
    serve.add_argument(
        "--mode", choices=["embedded", "cluster"], default="embedded", help="online store: SQLite (embedded) or Redis (cluster)"
    )
    serve.add_argument("--tracking-uri", default=None, help="MLflow registry (default: embedded SQLite under --data-dir)")
    add_auth_args(serve)
    serve.add_argument("--insecure-no-auth", action="store_true", help="serve without authentication (local experiments only)")
    serve.add_argument("--on-store-failure", choices=["degrade", "reject"], default="degrade", help="answer flagged as degraded, or 503")
    serve.add_argument("--store-timeout-ms", type=float, default=50.0, help="online store budget per request")
    d = Limits()
    serve.add_argument("--max-body-bytes", type=int, default=d.max_body_bytes)
    serve.add_argument("--rate", type=float, default=d.rate_per_s, help="sustained requests/s per token subject")
    serve.add_argument("--burst", type=int, default=d.burst, help="burst size per token subject")
    add_http_args(serve, d)
    serve.add_argument("--audit-log", type=Path, default=None, help="audit log file (default <data-dir>/audit/predictions.jsonl)")
    serve.add_argument("--audit-dsn", default=None, help="PostgreSQL DSN for the audit trail (cluster); overrides --audit-log")
    serve.add_argument("--fsync", choices=["always", "interval", "never"], default="interval", help="when audit records reach the disk")
    serve.add_argument(
        "--privacy-store", type=Path, default=None, help="subject keys and erased customers (default <data-dir>/privacy/privacy.db)"
    )
    serve.add_argument("--privacy-dsn", default=None, help="PostgreSQL privacy store instead (cluster); overrides --privacy-store")
    add_key_args(serve, signing=True)
    serve.add_argument(
        "--audit-anchor-dsn", default=None, help="PostgreSQL for checkpoints of the audit log (a rollback to an earlier state shows)"
    )
    log = serve.add_argument_group("prediction log (monitoring: every prediction with its feature values)")
    log.add_argument("--prediction-log", type=Path, default=None, help="Parquet segments directory (default <data-dir>/predictions)")
    log.add_argument("--prediction-log-dsn", default=None, help="PostgreSQL instead (cluster); overrides --prediction-log")
    log.add_argument("--prediction-log-flush-s", type=float, default=1.0, help="flush interval: the most a crash can lose (default 1 s)")
    log.add_argument("--no-prediction-log", action="store_true", help="do not log predictions (monitoring sees none)")
    log.add_argument(
        "--drift-window", type=int, default=10_000, help="predictions in the live drift window (default 10,000; 0 turns live drift off)"
    )
    # KServe enables gRPC by default (this predictor speaks REST) and names every model "model" unless told
    serve.set_defaults(func=run_serve, enable_grpc=False, model_name=None)

    token = sub.add_parser("token", help="issue a JWT for the predictor (HMAC secret)")
    token.add_argument("--subject", required=True)
    token.add_argument("--role", action="append", dest="roles", required=True, help="viewer, predictor, deployer or admin")
    token.add_argument("--ttl-seconds", type=int, default=3600)
    add_auth_args(token)
    token.set_defaults(func=run_token)


def add_http_args(p: argparse.ArgumentParser, d: Limits) -> None:
    """Bounds a client cannot push past (see churnops.serving.http and .security); defaults fit behind a proxy."""
    h = HttpLimits()
    g = p.add_argument_group("HTTP limits (against hostile or broken clients)")
    g.add_argument("--max-header-bytes", type=int, default=h.max_header_bytes, help="request line + headers (431 beyond)")
    g.add_argument("--max-headers", type=int, default=h.max_headers, help="header fields per request (431 beyond)")
    g.add_argument("--header-timeout", type=float, default=h.header_timeout_s, help="seconds to send the headers (408, then close)")
    g.add_argument("--body-timeout", type=float, default=h.body_timeout_s, help="seconds to send the body after the headers (408)")
    g.add_argument(
        "--max-connections",
        type=int,
        default=None,
        help="open connections per worker, closed at once beyond (default 16,384 within ulimit -n)",
    )
    g.add_argument("--auth-failures", type=int, default=d.auth_failures, help="failed authentications per address and window (429)")
    g.add_argument("--auth-failure-window", type=float, default=d.auth_failure_window_s, help="window of --auth-failures, seconds")
    g.add_argument("--max-token-lifetime", type=float, default=24 * 3600.0, help="refuse tokens expiring later than this from now (s)")
    g.add_argument("--metrics-rate", type=float, default=d.metrics_rate_per_s, help="/metrics scrapes per second per address")
    g.add_argument("--metrics-burst", type=int, default=d.metrics_burst, help="/metrics scrape burst per address")
    g.add_argument("--metrics-max-age", type=float, default=1.0, help="seconds a /metrics rendering is reused (0: render each scrape)")


def add_auth_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("tokens (one key source; keys rotate without a restart with a key directory or JWKS)")
    g.add_argument(
        "--jwt-secret-file", type=Path, default=None, help=f"HMAC secret (default: ${SECRET_ENV}, else <data-dir>/secrets/jwt.key)"
    )
    g.add_argument("--jwt-public-key-file", type=Path, default=None, help="PEM public key for RS256/ES256 tokens from an identity provider")
    g.add_argument(
        "--jwt-keys-dir", type=Path, default=None, help="directory of keys named by 'kid' (a mounted Secret), re-read when it changes"
    )
    g.add_argument("--jwks-url", default=None, help="an OIDC issuer's JWKS endpoint (Dex, Keycloak, Cognito); keys picked by 'kid'")
    g.add_argument("--jwt-algorithm", default=None, help="pinned algorithm (default HS256 for a secret, RS256 otherwise)")
    g.add_argument("--jwt-issuer", default=None, help="required 'iss' claim")
    g.add_argument("--jwt-kid", default=None, help="'kid' header written into issued tokens (with a key directory: the key to sign with)")
    g.add_argument("--audience", default=AuthConfig.__dataclass_fields__["audience"].default)


def _key_file(path: Path, algorithm: str, flag: str) -> str:
    """A key file's text once it is a key ``algorithm`` can verify with; ConfigError naming ``flag`` otherwise."""
    try:
        data = path.read_bytes()
        usable_key(data, algorithm)
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror}", field=flag) from None
    except UnusableKeyError as e:
        raise ConfigError(f"{path} cannot verify {algorithm} tokens: {e}", field=flag) from None
    return data.decode("utf-8").strip()


def auth_config(args: argparse.Namespace, env: Mapping[str, str]) -> AuthConfig:
    """Exactly one key source: a JWKS URL, a key directory, a public key, or an HMAC secret (the embedded default)."""
    given = [o for o in ("jwks_url", "jwt_keys_dir", "jwt_public_key_file", "jwt_secret_file") if getattr(args, o) is not None]
    if len(given) > 1:
        names = ", ".join("--" + o.replace("_", "-") for o in given)
        raise ConfigError(f"give one key source, not {names}", field="--" + given[1].replace("_", "-"))
    common: dict[str, Any] = {"audience": args.audience, "issuer": args.jwt_issuer, "signing_kid": args.jwt_kid}
    if args.jwks_url is not None:
        return AuthConfig(keys=JwksKeys(args.jwks_url), algorithm=args.jwt_algorithm or "RS256", **common)
    if args.jwt_keys_dir is not None:
        if not args.jwt_keys_dir.is_dir():
            raise ConfigError(f"{args.jwt_keys_dir} is not a directory", field="--jwt-keys-dir")
        algorithm = args.jwt_algorithm or "HS256"
        keys = KeyDirectory(args.jwt_keys_dir, algorithm=algorithm)
        keys.check()  # no usable key: refuse to start rather than answer every request 503
        # the key to sign with, for `churnops token` against a directory of HMAC secrets
        signing = keys.key_for(args.jwt_kid) if args.jwt_kid and algorithm.startswith("HS") else None
        return AuthConfig(key=signing, keys=keys, algorithm=algorithm, **common)
    if args.jwt_public_key_file is not None:
        algorithm = args.jwt_algorithm or "RS256"
        return AuthConfig(key=_key_file(args.jwt_public_key_file, algorithm, "--jwt-public-key-file"), algorithm=algorithm, **common)
    if args.jwt_secret_file is not None:
        key = _key_file(args.jwt_secret_file, args.jwt_algorithm or "HS256", "--jwt-secret-file")
    elif env.get(SECRET_ENV):
        key = env[SECRET_ENV]
        try:
            usable_key(key, args.jwt_algorithm or "HS256")
        except UnusableKeyError as e:
            raise ConfigError(f"cannot verify tokens: {e}", field=f"${SECRET_ENV}") from None
    else:
        key = local_secret(args.data_dir / "secrets" / "jwt.key")
    return AuthConfig(key=key, algorithm=args.jwt_algorithm or "HS256", **common)


def run_serve(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    from churnops.serving.server import ServeConfig, serve

    cfg = ServeConfig(
        data_dir=args.data_dir,
        models=tuple(args.models or ([] if args.route else ["champion"])),  # a route alone serves only what its table names
        tracking_uri=args.tracking_uri,
        feature_mode=args.mode,
        http_port=args.http_port,
        host=args.host or ("0.0.0.0" if args.mode == "cluster" else "127.0.0.1"),  # in a pod: the pod network
        auth=None if args.insecure_no_auth else replace(auth_config(args, env), max_lifetime_s=args.max_token_lifetime or None),
        limits=Limits(
            max_body_bytes=args.max_body_bytes,
            rate_per_s=args.rate,
            burst=args.burst,
            auth_failures=args.auth_failures,
            auth_failure_window_s=args.auth_failure_window,
            metrics_rate_per_s=args.metrics_rate,
            metrics_burst=args.metrics_burst,
        ),
        http_limits=HttpLimits(args.max_header_bytes, args.max_headers, args.header_timeout, args.body_timeout),
        max_connections=args.max_connections,
        metrics_max_age_s=args.metrics_max_age,
        on_store_failure=args.on_store_failure,
        store_timeout_s=args.store_timeout_ms / 1000,
        audit_log=args.audit_log,
        audit_dsn=args.audit_dsn,
        audit_signing_key=args.audit_signing_key,
        audit_public_keys=args.audit_public_keys,
        audit_anchor_dsn=args.audit_anchor_dsn,
        fsync=args.fsync,
        privacy_store=args.privacy_store,
        privacy_dsn=args.privacy_dsn,
        prediction_log_enabled=not args.no_prediction_log,
        prediction_log=args.prediction_log,
        prediction_log_dsn=args.prediction_log_dsn,
        prediction_log_flush_s=args.prediction_log_flush_s,
        drift_window=args.drift_window,
        kserve_options={k: v for k, v in vars(args).items() if k != "model_name"},
        model_name=getattr(args, "model_name", None),
        route=args.route,
        routing_table=args.routing_table,
        route_seed=args.route_seed,
    )
    serve(cfg, env)
    return 0


def run_token(args: argparse.Namespace, env: Mapping[str, str]) -> int:
    print(issue_token(auth_config(args, env), args.subject, args.roles, args.ttl_seconds))
    return 0
