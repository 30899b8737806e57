"""Errors that cross the gateway's boundaries.

Every error a client can cause is a ``FusionError`` with an HTTP status and, where one
exists, the request field at fault. They must survive pickling because Ray ships a
replica's exception to the caller; ``__reduce__`` keeps the extra attributes.
"""

from __future__ import annotations

from dataclasses import dataclass


class FusionError(Exception):
    """Base class: an error with an HTTP status, a stable code and an optional field."""

    status: int = 500
    code: str = "internal_error"

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field

    def __reduce__(self):  # keep ``field`` across Ray's pickling
        return (type(self), (self.message, self.field))

    def to_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return body


class BadInput(FusionError):
    """The client sent something the model cannot use (undecodable, wrong type, empty)."""

    status = 422
    code = "bad_input"


class MalformedBody(BadInput):
    """The body is not what its content type says (JSON that does not parse)."""

    status = 400
    code = "malformed_body"


class Unsupported(BadInput):
    """A well-formed value this model does not offer (a voice, an audio format, shortened
    embeddings): 400 as OpenAI answers it, the message listing what the model does offer."""

    status = 400
    code = "unsupported_value"


class PayloadTooLarge(BadInput):
    status = 413
    code = "payload_too_large"


class NotFound(FusionError):
    status = 404
    code = "not_found"


class Unauthorized(FusionError):
    status = 401
    code = "unauthorized"


class Forbidden(FusionError):
    status = 403
    code = "forbidden"


class Overloaded(FusionError):
    """Busy: retry after ``retry_after_s`` (sent as ``Retry-After`` and ``Retry-After-Ms``),
    computed from how fast the queue drains. Refused at admission, before any step ran, where
    the router knows; a step that meets a full queue itself is named in the message."""

    status = 503
    code = "overloaded"

    def __init__(self, message: str, field: str | None = None,
                 retry_after_s: float = 1.0) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s

    def __reduce__(self):
        return (type(self), (self.message, self.field, self.retry_after_s))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "retry_after_ms": round(self.retry_after_s * 1000)}


class RateLimited(FusionError):
    """A key is over one of its rate limits (requests or tokens per minute, concurrency):
    429 with ``Retry-After`` and the ``x-ratelimit-*`` headers OpenAI's clients read."""

    status = 429
    code = "rate_limited"

    def __init__(self, message: str, field: str | None = None, retry_after_s: float = 1.0,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message, field)
        self.retry_after_s = retry_after_s
        self.headers = headers or {}

    def __reduce__(self):
        return (type(self), (self.message, self.field, self.retry_after_s, self.headers))

    def to_dict(self) -> dict:
        return {**super().to_dict(), "retry_after_ms": round(self.retry_after_s * 1000)}


class QuotaExceeded(RateLimited):
    """A key used its quota (requests, tokens or compute seconds) of the period (UTC day or
    month): refused until the period resets, which ``Retry-After`` says."""

    code = "quota_exceeded"


class StepTimeout(FusionError):
    status = 504
    code = "step_timeout"


class StepFailed(FusionError):
    """A model failed on valid input (a bug or a crashed replica): the client is not at fault."""

    status = 502
    code = "step_failed"


class SpecError(FusionError):
    """A pipeline spec or app config is invalid: the application refuses to start."""

    code = "invalid_spec"


@dataclass(frozen=True)
class ErrorCode:
    """One row of the error table: what a code means on each surface."""

    code: str
    status: int
    openai_type: str  # the ``type`` of OpenAI's error body on the OpenAI-compatible routes
    sdk_exception: str  # the class ``fusion_client`` raises for it
    meaning: str
    # the status on the OpenAI-compatible routes, where OpenAI answers invalid input with 400
    openai_status_override: int | None = None

    @property
    def openai_status(self) -> int:
        return self.openai_status_override or self.status


# The one table of error codes a client can see. The server's error classes, the OpenAI
# routes' ``type``, ``docs/api.md`` and the SDK's code table all follow it
# (tests/unit/test_error_table.py compares them), so a new code cannot reach one surface only.
ERROR_CODES: tuple[ErrorCode, ...] = (
    ErrorCode("malformed_body", 400, "invalid_request_error", "BadRequest",
              "the body does not parse as its content type says (JSON)"),
    ErrorCode("unauthorized", 401, "authentication_error", "Unauthorized",
              "no API key, or an unknown one"),
    ErrorCode("forbidden", 403, "permission_error", "Forbidden",
              "the key may not use this route (admin routes), or this model, task or "
              "pipeline (its allow-list); `field` names which"),
    ErrorCode("not_found", 404, "invalid_request_error", "NotFound",
              "unknown pipeline, model or task"),
    ErrorCode("payload_too_large", 413, "invalid_request_error", "BadRequest",
              "the body is over `limits.max_body_bytes`"),
    ErrorCode("bad_input", 422, "invalid_request_error", "BadRequest",
              "an input is missing, of the wrong type, undecodable or over a limit; "
              "`field` names it (400 on the OpenAI routes, as OpenAI answers it)", 400),
    ErrorCode("unsupported_value", 400, "invalid_request_error", "BadRequest",
              "a value the model does not offer (voice, response_format, dimensions, "
              "timestamp granularity); `field` names it and the message lists the choices"),
    ErrorCode("rate_limited", 429, "rate_limit_error", "RateLimited",
              "the key is over its requests or tokens per minute or its concurrent requests; "
              "retry after `Retry-After` (`x-ratelimit-*` headers say the limits)"),
    ErrorCode("quota_exceeded", 429, "insufficient_quota", "QuotaExceeded",
              "the key used its quota of requests, tokens or compute seconds for the period; "
              "`Retry-After` says when the period resets"),
    ErrorCode("internal_error", 500, "server_error", "ServerError",
              "a bug in the gateway; quote the request id"),
    ErrorCode("step_failed", 502, "server_error", "StepFailed",
              "a model failed on valid input (crash, out of memory); `field` names the step"),
    ErrorCode("overloaded", 503, "server_error", "Overloaded",
              "refused before any step ran: over the router's in-flight limit, a model the "
              "request may call at its queue limit, or the gateway still starting. A step can "
              "still meet a full queue or no live replica when it calls its model: then the "
              "message names the step, and the steps before it have run (with the cache on, a "
              "retry does not compute them again); retry after `Retry-After`"),
    ErrorCode("step_timeout", 504, "server_error", "Timeout",
              "a step ran past its `timeout_s` or the request's `X-Request-Timeout`; "
              "`field` names the step"),
)
ERRORS_BY_CODE = {e.code: e for e in ERROR_CODES}


def unwrap(exc: BaseException) -> BaseException:
    """Return the original exception under Ray's ``RayTaskError`` wrappers, if any."""
    seen = 0
    while seen < 8:
        cause = getattr(exc, "cause", None)
        if cause is None or cause is exc or not isinstance(cause, BaseException):
            return exc
        exc = cause
        seen += 1
    return exc
