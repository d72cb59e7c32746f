"""Pure decision code of the predictor: input validation, JWT, roles, rate limits, circuit breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx
import jwt
import pytest

from churnops.errors import BadRequestError, ChurnOpsError, ConfigError, InvalidInputError
from churnops.serving.auth import AuthConfig, Role, authenticate, issue_token
from churnops.serving.inputs import FeatureSchema, parse_v1, parse_v2
from churnops.serving.scoring import Breaker, risk_band
from churnops.serving.security import (
    GuardMiddleware,
    Limits,
    RateLimiter,
    Receive,
    Scope,
    Send,
    check_request_id,
    decode_subject,
    json_problem,
    required_role,
)

SCHEMA = FeatureSchema(("tenure_days", "plan"), frozenset({"plan"}), frozenset({"mrr"}))
KEY = "k" * 40
CFG = AuthConfig(key=KEY)


def test_v1_accepts_ids_records_and_extra_catalog_features() -> None:
    req = parse_v1(
        SCHEMA,
        {"instances": [{"customer_id": 3}, {"features": {"tenure_days": None, "plan": "pro", "mrr": 10}}], "parameters": {"top_k": 2}},
    )
    assert req.top_k == 2
    assert req.instances[0].customer_id == 3 and req.instances[0].features is None
    assert req.instances[1].features == {"tenure_days": None, "plan": "pro"}


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"instances": [{"features": {"tenure_days": float("nan"), "plan": None}}]}, "instances[0].features.tenure_days"),
        ({"instances": [{"features": {"tenure_days": 1e39, "plan": None}}]}, "instances[0].features.tenure_days"),
        ({"instances": [{"features": {"tenure_days": "3", "plan": None}}]}, "instances[0].features.tenure_days"),
        ({"instances": [{"features": {"tenure_days": 3, "plan": 7}}]}, "instances[0].features.plan"),
        ({"instances": [{"features": {"tenure_days": 3}}]}, "instances[0].features.plan"),
        ({"instances": [{"features": {"tenure_days": 3, "plan": "x", "colour": 1}}]}, "instances[0].features.colour"),
        ({"instances": [{"customer_id": -4}]}, "instances[0].customer_id"),
        ({"instances": [{"customer_id": 2**63}]}, "instances[0].customer_id"),
        ({"instances": [5]}, "instances[0]"),
        ({"instances": [{"customer_id": 1}] * 1001}, "instances"),
        ({"instances": [{"customer_id": 1}], "parameters": {"top_k": 3}}, "parameters.top_k"),
        ([1, 2], "body"),
    ],
)
def test_v1_errors_name_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidInputError) as e:
        parse_v1(SCHEMA, body)
    assert e.value.field == field and e.value.status == 422


def test_v2_columns_become_instances() -> None:
    req = parse_v2(SCHEMA, [("tenure_days", [2], [1.0, None]), ("plan", [2, 1], ["a", "b"]), ("customer_id", [2], [7, 8])], {})
    assert [i.customer_id for i in req.instances] == [7, 8]
    assert req.instances[1].features == {"tenure_days": None, "plan": "b"}
    with pytest.raises(InvalidInputError, match="same length"):
        parse_v2(SCHEMA, [("tenure_days", [2], [1.0, 2.0]), ("plan", [1], ["a"])], {})
    with pytest.raises(InvalidInputError, match="does not match"):
        parse_v2(SCHEMA, [("customer_id", [3], [1])], {})


def _problem(body: bytes) -> tuple[int, str] | None:
    e = json_problem(body)
    return None if e is None else (e.status, e.detail)


def test_json_problems_name_the_field() -> None:
    assert _problem(b'{"a": [1, 2]}') is None
    assert _problem(b'{"instances": [{"x": NaN}]}') == (
        422,
        "instances[0].x: NaN, Infinity and numbers beyond float range are not valid JSON numbers",
    )
    status, message = _problem(b'{"a": -1e999}') or (0, "")
    assert status == 422 and message.startswith("a:")
    status, message = _problem(b"{'a': 1}") or (0, "")
    assert status == 400 and "not valid JSON" in message


def _claims(**over: object) -> dict[str, object]:
    return {"sub": "ann", "aud": "churnops", "exp": int(time.time()) + 60, "roles": ["deployer"], **over}


def test_authenticate_takes_the_strongest_known_role() -> None:
    tok = jwt.encode(_claims(roles=["viewer", "deployer", "wizard"]), KEY, algorithm="HS256")
    principal = authenticate(CFG, f"Bearer {tok}")
    assert principal.subject == "ann" and principal.role is Role.deployer
    assert authenticate(CFG, f"Bearer {issue_token(CFG, 'bob', ['viewer'])}").role is Role.viewer


def _bearer(claims: dict[str, object], key: str | None = "k" * 40, algorithm: str = "HS256") -> str:
    return "Bearer " + jwt.encode(claims, key, algorithm=algorithm)  # type: ignore[arg-type]


# tokens are built when each test runs, so a long suite never turns them into expired ones
REJECTED: list[tuple[str, Callable[[], str | None], int, str]] = [
    ("no header", lambda: None, 401, "missing bearer token"),
    ("basic scheme", lambda: "Basic abc", 401, "Bearer"),
    ("none algorithm", lambda: _bearer(_claims(), None, "none"), 401, "invalid token"),
    ("expired", lambda: _bearer(_claims(exp=int(time.time()) - 60)), 401, "expired"),
    ("wrong audience", lambda: _bearer(_claims(aud="x")), 401, "audience"),
    ("no exp", lambda: _bearer({"sub": "a", "aud": "churnops"}), 401, "'exp'"),
    ("other algorithm", lambda: _bearer(_claims(), algorithm="HS512"), 401, "invalid token"),  # the algorithm is pinned
    ("no roles", lambda: _bearer(_claims(roles=[])), 403, "roles"),
]


@pytest.mark.parametrize(("case", "header", "status", "message"), REJECTED, ids=[r[0] for r in REJECTED])
def test_authenticate_rejects(case: str, header: Callable[[], str | None], status: int, message: str) -> None:
    with pytest.raises(ChurnOpsError) as e:
        authenticate(CFG, header())
    assert e.value.status == status and message in e.value.message


def test_weak_or_none_configuration_is_refused() -> None:
    with pytest.raises(ConfigError, match="none"):
        AuthConfig(key="k" * 40, algorithm="none")
    with pytest.raises(ConfigError, match="at least 32"):
        AuthConfig(key="short")
    with pytest.raises(InvalidInputError, match="unknown role"):
        issue_token(CFG, "x", ["root"])


def test_route_policy() -> None:
    assert required_role("GET", "/v2/health/live") is None
    assert required_role("GET", "/metrics") is None
    assert required_role("POST", "/v1/models/champion:predict") is Role.predictor
    assert required_role("POST", "/v2/models/champion/versions/3/infer") is Role.predictor
    assert required_role("GET", "/v2/models/champion") is Role.viewer
    assert required_role("POST", "/v2/repository/models/champion/load") is Role.deployer
    assert required_role("DELETE", "/anything") is Role.admin


def test_token_bucket_per_subject() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=2.0, burst=3, clock=lambda: now[0])
    assert [limiter.acquire("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("a") == pytest.approx(0.5)
    assert limiter.acquire("b") == 0.0
    now[0] = 0.5
    assert limiter.acquire("a") == 0.0


def test_rate_limiter_forgets_idle_subjects() -> None:
    now = [0.0]
    limiter = RateLimiter(rate=10.0, burst=5, clock=lambda: now[0], max_subjects=3)
    for s in ("a", "b", "c"):
        limiter.acquire(s)
    now[0] = 1.0  # all three buckets have refilled
    limiter.acquire("d")
    assert set(limiter._buckets) == {"d"}


def test_breaker_opens_then_lets_a_probe_through() -> None:
    now = [10.0]
    changes: list[bool] = []
    breaker = Breaker(cooldown_s=2.0, clock=lambda: now[0], on_change=changes.append)
    assert breaker.allow()
    breaker.failure()
    breaker.failure()
    assert not breaker.allow() and breaker.retry_after() == 2
    assert changes == [False]  # one report per outage, not one per failed read
    now[0] = 12.0
    assert breaker.allow()
    breaker.success()
    assert breaker.allow() and breaker.up
    assert changes == [False, True]


def test_risk_bands() -> None:
    assert [risk_band(p, 0.4) for p in (0.1, 0.2, 0.39, 0.4, 0.9)] == ["low", "medium", "medium", "high", "high"]


async def _echo(scope: Scope, receive: Receive, send: Send) -> None:
    """The wrapped app: answers 200 with the body it received and the subject the guard passed on."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    subject = dict(scope["headers"]).get(b"x-churnops-subject", b"")
    await send({"type": "http.response.start", "status": 200, "headers": [(b"x-subject", subject)]})
    await send({"type": "http.response.body", "body": body})


def _call(guard: GuardMiddleware, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=guard), base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_guard_without_auth_limits_per_client_and_still_validates() -> None:
    guard = GuardMiddleware(_echo, auth=None, limits=Limits(max_body_bytes=100, rate_per_s=0.01, burst=2))
    path = "/v1/models/m:predict"
    ok = _call(guard, "POST", path, content=b'{"a": 1}', headers={"Content-Type": "application/json", "x-churnops-subject": "forged"})
    assert ok.status_code == 200 and ok.content == b'{"a": 1}'
    assert ok.headers["x-subject"].startswith("anonymous@")  # a caller cannot choose its subject
    assert _call(guard, "POST", path, content=b'{"a": NaN}', headers={"Content-Type": "application/json"}).status_code == 422
    limited = _call(guard, "POST", path, content=b"{}", headers={"Content-Type": "application/json"})
    assert limited.status_code == 429 and int(limited.headers["retry-after"]) >= 60
    assert _call(guard, "GET", "/v2/health/live").status_code == 200  # probes are never limited


def test_guard_size_and_header_checks() -> None:
    guard = GuardMiddleware(_echo, auth=CFG, limits=Limits(max_body_bytes=10))
    bearer = {"Authorization": f"Bearer {issue_token(CFG, 'ann', ['predictor'])}", "Content-Type": "application/json"}
    assert _call(guard, "POST", "/v1/models/m:predict", content=b"x" * 11, headers=bearer).status_code == 413
    bad_length = _call(guard, "POST", "/v1/models/m:predict", content=b"{}", headers={**bearer, "Content-Length": "ten"})
    assert bad_length.status_code == 400
    unauthenticated = _call(guard, "POST", "/v1/models/m:predict", content=b"{}")
    assert unauthenticated.status_code == 401 and unauthenticated.headers["www-authenticate"].startswith("Bearer")


async def _crash(scope: Scope, receive: Receive, send: Send) -> None:
    raise RecursionError("maximum recursion depth exceeded in /secret/path/module.py")


def test_an_unexpected_error_is_a_counted_500_without_internals() -> None:
    seen: list[tuple[str, int]] = []
    guard = GuardMiddleware(_crash, auth=None, limits=Limits(), on_error=lambda path, status: seen.append((path, status)))
    r = _call(guard, "POST", "/v1/models/m:predict", content=b"{}", headers={"Content-Type": "application/json"})
    assert r.status_code == 500
    assert r.json()["error"].startswith("internal error (incident ") and "secret" not in r.text and "Recursion" not in r.text
    assert seen == [("/v1/models/m:predict", 500)]


def test_media_type_is_normalised_for_the_wrapped_app() -> None:
    seen: list[bytes] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(dict(scope["headers"])[b"content-type"])
        await _echo(scope, receive, send)

    guard = GuardMiddleware(app, auth=None, limits=Limits())
    for media in ("application/json; charset=utf-8", "Application/JSON"):
        assert _call(guard, "POST", "/v1/models/m:predict", content=b"{}", headers={"Content-Type": media}).status_code == 200
    assert seen == [b"application/json", b"application/json"]
    assert _call(guard, "POST", "/v1/models/m:predict", content=b"{}", headers={"Content-Type": "text/plain"}).status_code == 415


def test_subject_travels_as_utf8() -> None:
    guard = GuardMiddleware(_echo, auth=CFG, limits=Limits())
    bearer = {"Authorization": f"Bearer {issue_token(CFG, 'Zoë', ['predictor'])}", "Content-Type": "application/json"}
    r = _call(guard, "POST", "/v1/models/m:predict", content=b"{}", headers=bearer)
    assert decode_subject(r.headers["x-subject"]) == "Zoë"


def test_request_ids_and_paths_with_a_trailing_newline_are_refused() -> None:
    from churnops.serving.predictor import _client_id  # noqa: PLC0415 - imports KServe

    assert check_request_id(b"ok") == "ok" and _client_id("ok") == "ok"
    with pytest.raises(BadRequestError) as header:
        check_request_id(b"ok\n")  # ``$`` matches before a final newline: it would reach the audit trail
    with pytest.raises(BadRequestError) as body:
        _client_id("ok\n")
    assert (header.value.field, body.value.field) == ("X-Request-Id", "id")
    assert required_role("GET", "/metrics\n") is not None  # an open route only by its exact path


@pytest.mark.parametrize("big", [2**63, 2**64 - 1, -(2**63) - 1, 10**20])
def test_integer_feature_values_become_floats_whatever_their_size(big: int) -> None:
    req = parse_v1(SCHEMA, {"instances": [{"features": {"tenure_days": big, "plan": None}}]})
    value = (req.instances[0].features or {})["tenure_days"]
    assert isinstance(value, float) and value == float(big)  # an int past int64 would drop the prediction log's record
