"""Errors to HTTP responses: the predictor's one mapping, for every layer that answers a client.

The guard middleware, the server's exception handlers and the HTTP protocol
(which answers 408 and 431 before any application code runs) all build their
responses here, so a client sees one shape everywhere: ``{"error": "<field>:
<message>"}`` with the status of the ``ChurnOpsError`` subclass, ``Retry-After``
when the error carries one and ``WWW-Authenticate`` on a 401. Error bodies never
echo what the client sent beyond a bounded field name: a hostile client must
not get its bytes reflected back, and logs keep ids and counts only.

This module imports nothing from KServe; the handlers import Starlette's
``Response`` when called (only ``serve`` installs them).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import orjson

from churnops.errors import ChurnOpsError, InvalidInputError, UnauthorizedError

log = logging.getLogger(__name__)

Headers = list[tuple[bytes, bytes]]
MAX_FIELD_CHARS = 64  # a field path in an error body is cut to this: it comes from the client's document


def error_response(error: ChurnOpsError) -> tuple[int, bytes, Headers]:
    """The response (status, JSON body, headers) for ``error``."""
    # a field path may hold the client's own keys (an unknown feature's name): cut, so nothing long is reflected
    detail = f"{error.field[:MAX_FIELD_CHARS]}: {error.message}" if error.field else error.message
    body = orjson.dumps({"error": detail})
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    if isinstance(error, UnauthorizedError):
        headers.append((b"www-authenticate", b'Bearer realm="churnops"'))
    return error.status, body, headers


def raw_response(error: ChurnOpsError) -> bytes:
    """``error`` as a complete HTTP/1.1 response that closes the connection (for the protocol layer)."""
    status, body, headers = error_response(error)
    reason = {400: b"Bad Request", 408: b"Request Timeout", 431: b"Request Header Fields Too Large"}.get(status, b"Error")
    lines = [b"HTTP/1.1 %d %s" % (status, reason), *(k + b": " + v for k, v in headers), b"connection: close"]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def field_path(location: Sequence[Any]) -> str:
    """A validation error's location as a bounded path (``body.inputs[0].shape``), without the client's values."""
    path = ""
    for part in location:
        path += f"[{part}]" if isinstance(part, int) else (f".{part}" if path else str(part))
    return path[:MAX_FIELD_CHARS]


def _starlette_response(error: ChurnOpsError) -> Any:
    from starlette.responses import Response  # noqa: PLC0415 - comes with KServe, installed by serve() only

    status, body, headers = error_response(error)
    return Response(body, status_code=status, headers={k.decode(): v.decode() for k, v in headers if k != b"content-length"})


async def error_handler(_: Any, exc: ChurnOpsError) -> Any:
    """Every ChurnOpsError becomes its status and a JSON body naming the problem."""
    if exc.status < 500:
        log.info("%s %s", exc.status, exc.detail)  # a client's mistake: one line, no traceback
    return _starlette_response(exc)


async def validation_error_handler(_: Any, exc: Any) -> Any:
    """A request document of the wrong shape (FastAPI's validation): 422 naming the first field, never its value.

    FastAPI's own answer lists the offending input verbatim, which reflects whatever the client sent.
    """
    errors = exc.errors() if callable(getattr(exc, "errors", None)) else []
    first = errors[0] if errors else {}
    where = field_path(first.get("loc", ("body",)))
    message = str(first.get("msg", "invalid request document"))[:200]
    return await error_handler(None, InvalidInputError(message, field=where or "body"))
