"""One error model for the whole platform.

Every expected failure is a ``ChurnOpsError`` subclass. Each subclass says
what went wrong in one word and carries the HTTP status the predictor answers
with and the exit code the CLI ends with; one handler in the server and one in
the CLI turn them into responses and messages (as KServe's ``errors.py`` does).
Anything else is a bug: the server answers 500 without internals, the CLI
prints a traceback.

CLI exit codes: 0 success, 1 unexpected error, 2 invalid input or
configuration, 3 not found, 4 rejected by a check (data validation, quality
gates, integrity), 5 a dependency is unavailable or busy.
"""

from __future__ import annotations

from typing import ClassVar


class ChurnOpsError(Exception):
    """Base class; ``field`` names the offending input (a JSON path or an option) when there is one."""

    status: ClassVar[int] = 500
    exit_code: ClassVar[int] = 1

    def __init__(self, message: str, *, field: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.message = message
        self.field = field
        self.retry_after = retry_after

    @property
    def detail(self) -> str:
        """The message as clients see it (with the field's path in front)."""
        return str(self)


class InvalidInputError(ChurnOpsError):
    """A value the caller sent or configured is not acceptable; the message names it."""

    status = 422
    exit_code = 2


class BadRequestError(InvalidInputError):
    """The request cannot be read at all (not JSON, nested too deeply, wrong shape)."""

    status = 400


class ConfigError(InvalidInputError):
    """The configuration cannot be built (a missing setting, an unknown option)."""


class UnauthorizedError(ChurnOpsError):
    """No, or no valid, credentials."""

    status = 401
    exit_code = 2


class ForbiddenError(ChurnOpsError):
    """Valid credentials without the needed role."""

    status = 403
    exit_code = 2


class NotFoundError(ChurnOpsError):
    """A model, customer, file or table that does not exist."""

    status = 404
    exit_code = 3


class PayloadTooLargeError(InvalidInputError):
    status = 413


class UnsupportedMediaTypeError(InvalidInputError):
    status = 415


class RequestTimeoutError(BadRequestError):
    """The client did not send its headers or body within the server's read timeout."""

    status = 408


class HeadersTooLargeError(BadRequestError):
    """The request's headers are larger, or more numerous, than the server accepts."""

    status = 431


class RateLimitedError(ChurnOpsError):
    status = 429
    exit_code = 5


class CheckFailedError(ChurnOpsError):
    """Input was read but failed a check: data validation, a quality gate, an integrity check."""

    status = 422
    exit_code = 4


class DataValidationError(CheckFailedError):
    """Data failed its expectations; the message is the report."""


class IntegrityError(CheckFailedError):
    """An artifact or a log does not match the digest recorded for it."""

    status = 500  # for a server, a tampered artifact is its own failure, not the client's


class NotImplementedInModelError(ChurnOpsError):
    """The model cannot do what was asked (e.g. exact reasons for a model without a margin)."""

    status = 501
    exit_code = 2


class UnavailableError(ChurnOpsError):
    """A dependency is down or not ready (model not loaded, online store, audit trail); retry later."""

    status = 503
    exit_code = 5


class ConflictError(ChurnOpsError):
    """The resource is held by someone else (e.g. another writer on the same audit log)."""

    status = 409
    exit_code = 5
