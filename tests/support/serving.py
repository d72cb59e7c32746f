"""Helpers for the serving tests: small fitted ensembles, registration, and a live predictor process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from churnops.layout import Layout
from churnops.processes import free_port, wait_for_http
from churnops.serving.auth import AuthConfig, issue_token
from churnops.training import registry
from churnops.training.automl import build_pipeline, positive_proba
from churnops.training.dataset import churn_spec, xy
from churnops.training.ensemble import ChurnEnsemble, Combiner, _logit, fit_calibrator

SECRET = "test-secret-that-is-long-enough-for-hs256-0123456789"
AUTH = AuthConfig(key=SECRET)
FAST_PARAMS = {
    "xgboost": {
        "n_estimators": 40,
        "learning_rate": 0.1,
        "max_depth": 4,
        "min_child_weight": 5.0,
        "colsample_bytree": 0.7,
        "reg_lambda": 1.0,
    },
    "lightgbm": {
        "n_estimators": 40,
        "learning_rate": 0.1,
        "num_leaves": 15,
        "min_child_samples": 40,
        "colsample_bytree": 0.7,
        "reg_lambda": 1.0,
    },
    "logistic_regression": {"C": 0.1},
    "random_forest": {"n_estimators": 20, "max_depth": 6, "min_samples_leaf": 10, "max_features": 0.3},
}


def fit_ensemble(table: pd.DataFrame, families: list[str], kind: str) -> ChurnEnsemble:
    """A small but real ensemble: members fitted on ``table``, a combiner and a calibrator."""
    spec = churn_spec()
    x, y = xy(table, spec)
    members = [build_pipeline(spec, f, FAST_PARAMS[f], seed=0).fit(x, y) for f in families]
    probas = np.column_stack([positive_proba(m, x) for m in members])
    if kind == "stack":
        combiner = Combiner("stack", stacker=LogisticRegression(max_iter=1000).fit(_logit(probas), y))
    elif kind == "blend":
        combiner = Combiner("blend", weights=np.full(len(members), 1 / len(members)))
    else:
        combiner = Combiner("single", weights=np.ones(1))
    calibrator = fit_calibrator(combiner.combine(probas), y)
    return ChurnEnsemble(members, families, combiner, calibrator, list(spec.features), list(spec.categorical))


@dataclass(frozen=True)
class Registered:
    cfg: registry.RegistryConfig
    champion: str  # xgboost single
    challenger: str  # lightgbm + xgboost + logistic regression stack
    corrupted: str  # a copy of the champion whose artifact was altered after registration


def register(cfg: registry.RegistryConfig, model: ChurnEnsemble, example: pd.DataFrame, threshold: float) -> str:
    return registry.log_and_register(cfg, model, example, {"threshold": threshold}, {}, {}, {}).version


def token(subject: str = "tester", roles: tuple[str, ...] = ("predictor",), ttl_s: int = 600) -> str:
    return issue_token(AUTH, subject, list(roles), ttl_s)


@dataclass
class Server:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path
    audit_log: Path

    def client(self, subject: str = "tester", roles: tuple[str, ...] = ("predictor",)) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {token(subject, roles)}"}, timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_server(
    layout: Layout, tracking_uri: str | None, models: list[str], tmp: Path, extra: list[str], env: dict[str, str] | None = None
) -> Server:
    """Run `churnops serve` as its own process (KServe holds process-wide state) and wait until it is live.

    Without ``tracking_uri`` the server uses the embedded registry under the layout's data directory.
    """
    port = free_port()
    tmp.mkdir(parents=True, exist_ok=True)
    secret = tmp / "jwt.key"
    secret.write_text(SECRET)
    audit_log = tmp / "audit" / "predictions.jsonl"
    cmd = [str(Path(sys.executable).parent / "churnops"), "--data-dir", str(layout.data_dir), "serve", "--port", str(port)]
    cmd += ["--tracking-uri", tracking_uri] if tracking_uri else []
    if not {"--jwks-url", "--jwt-keys-dir", "--jwt-public-key-file", "--insecure-no-auth"} & set(extra):
        cmd += ["--jwt-secret-file", str(secret)]
    cmd += ["--audit-log", str(audit_log)]
    # tests read counters right after their requests: a fresh /metrics rendering each time, no scrape limit
    # and a store budget no read misses on a loaded test machine (one slow read would open the store's breaker and
    # turn the next answers into degraded ones); the tests of the budget itself pass their own
    defaults = (("--metrics-max-age", "0"), ("--metrics-rate", "100000"), ("--metrics-burst", "100000"), ("--store-timeout-ms", "1000"))
    for flag, value in defaults:
        cmd += [] if flag in extra else [flag, value]
    for m in models:
        cmd += ["--model", m]
    log = tmp / "server.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            cmd + extra, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, **(env or {}), "OMP_NUM_THREADS": "1"}
        )
    server = Server(f"http://127.0.0.1:{port}", proc, log, audit_log)
    try:
        wait_for_http(f"{server.url}/v2/health/live", proc, 180)
    except RuntimeError as e:
        server.stop()
        raise RuntimeError(f"predictor did not start ({e}):\n{log.read_text()[-3000:]}") from None
    return server
