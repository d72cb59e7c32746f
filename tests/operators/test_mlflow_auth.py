"""The operator's MLflow client sends HTTP Basic auth when MLflow's credential variables are set.

MLflow's basic-auth app (``mlflow server --app-name basic-auth``) answers 401 to a request without a valid
``Authorization: Basic`` header; the server here does the same, on a real socket.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import ClassVar

import pytest

from churnops_operator.http import ExternalError
from churnops_operator.main import build_config, parse_args
from churnops_operator.mlflow import MLflow

USER, PASSWORD = "churnops-operator", "s3cret-for-the-test"  # a test credential, not a secret


class BasicAuthMLflow(BaseHTTPRequestHandler):
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
    seen: ClassVar[list[str | None]] = []

    def do_GET(self) -> None:
        self.seen.append(self.headers.get("Authorization"))
        if self.headers.get("Authorization") != self.expected:
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
            self.end_headers()
            self.wfile.write(b"You are not authenticated.")
            return
        body = json.dumps({"model_version": {"version": "7"}}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    BasicAuthMLflow.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), BasicAuthMLflow)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()


def alias(client: MLflow) -> str | None:
    async def go() -> str | None:
        try:
            return await client.version_by_alias("churn", "champion")
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_credentials_from_mlflows_variables_are_sent(server: str, caplog: pytest.LogCaptureFixture) -> None:
    env = {"MLFLOW_TRACKING_USERNAME": USER, "MLFLOW_TRACKING_PASSWORD": PASSWORD}
    cfg = build_config(parse_args(["--mlflow-url", server]), env)
    caplog.set_level(logging.DEBUG)
    assert alias(MLflow(cfg.mlflow_url, 2.0, username=cfg.mlflow_username, password=cfg.mlflow_password)) == "7"
    assert BasicAuthMLflow.seen == [BasicAuthMLflow.expected]
    assert PASSWORD not in caplog.text and PASSWORD not in repr(cfg)


def test_without_credentials_the_401_is_an_error_that_names_no_secret(server: str) -> None:
    cfg = build_config(parse_args(["--mlflow-url", server]), {"MLFLOW_TRACKING_USERNAME": USER})  # a password is needed too
    assert cfg.mlflow_username == USER and cfg.mlflow_password is None
    with pytest.raises(ExternalError) as e:
        alias(MLflow(cfg.mlflow_url, 2.0, username=cfg.mlflow_username, password=cfg.mlflow_password))
    assert e.value.status == 401 and BasicAuthMLflow.seen == [None]
