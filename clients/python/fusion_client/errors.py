"""Typed errors raised by the SDK.

Every failure the gateway reports (an HTTP status with the error body of ``docs/api.md``, or an
``error`` event on a stream) and every transport failure becomes a :class:`FusionError`
subclass carrying ``status``, the server's ``message``, ``code``, ``field`` and ``request_id``.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base class of every SDK error.

    Attributes: ``status`` (HTTP status, or ``None`` when nothing came back from the server),
    ``message`` (the server's message), ``code`` (stable error code such as ``bad_input``),
    ``field`` (the request field at fault, e.g. ``inputs.image``) and ``request_id`` (quote it
    when reporting a problem; the gateway logs every failure under it).
    """

    default_code: str | None = None

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 field: str | None = None, request_id: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code if code is not None else self.default_code
        self.field = field
        self.request_id = request_id

    def __str__(self) -> str:
        parts = [self.message]
        details = []
        if self.field:
            details.append(f"field {self.field}")
        if self.status is not None:
            details.append(f"status {self.status}")
        if self.code:
            details.append(f"code {self.code}")
        if self.request_id:
            details.append(f"request id {self.request_id}")
        if details:
            parts.append(f"({', '.join(details)})")
        return " ".join(parts)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.message!r}, status={self.status!r}, "
                f"code={self.code!r}, field={self.field!r}, request_id={self.request_id!r})")

    def __reduce__(self):  # keep keyword attributes across pickling (multiprocessing, Ray)
        return (_rebuild, (type(self), self.message, self.status, self.code, self.field,
                           self.request_id))


def _rebuild(cls, message, status, code, field, request_id):
    return cls(message, status=status, code=code, field=field, request_id=request_id)


class BadRequest(FusionError):
    """The request was rejected as invalid (400 malformed, 413 too large, 422 bad input).

    Also raised before anything is sent when an input cannot be encoded (``status`` is then
    ``None``), e.g. an image path that does not exist.
    """

    default_code = "bad_input"


class Unauthorized(FusionError):
    """401: no API key, or an unknown one."""

    default_code = "unauthorized"


class Forbidden(FusionError):
    """403: the key is valid but not allowed here (e.g. an admin route)."""

    default_code = "forbidden"


class NotFound(FusionError):
    """404: unknown pipeline, model or task."""

    default_code = "not_found"


class Overloaded(FusionError):
    """503 (or 429): the gateway sheds load; retried automatically before this is raised."""

    default_code = "overloaded"


class RateLimited(Overloaded):
    """429: the API key is over its requests or tokens per minute or its concurrent requests.
    Not retried by the SDK: the `Retry-After` header of the answer says when to."""

    default_code = "rate_limited"


class QuotaExceeded(RateLimited):
    """429: the API key used its quota for the period (day or month); it resets later."""

    default_code = "quota_exceeded"


class Timeout(FusionError):
    """504 (a step timed out in the gateway) or the client's own timeout expired."""

    default_code = "step_timeout"


class ServerError(FusionError):
    """Any other 5xx, or a response the SDK cannot understand."""

    default_code = "internal_error"


class StepFailed(ServerError):
    """502: a model failed on valid input (a crash, out of memory); ``field`` names the step.
    Not retried: the same input would most likely fail the same way."""

    default_code = "step_failed"


class ConnectionFailed(FusionError):
    """The gateway could not be reached (refused, reset, DNS), after the configured retries."""

    default_code = "connection_failed"


# The gateway's error codes (its table is ``fusion.errors.ERROR_CODES``, also in
# ``docs/api.md``; a test in the gateway's suite compares the three).
ERROR_CODES: dict[str, tuple[type[FusionError], int]] = {
    "malformed_body": (BadRequest, 400),
    "unauthorized": (Unauthorized, 401),
    "forbidden": (Forbidden, 403),
    "not_found": (NotFound, 404),
    "payload_too_large": (BadRequest, 413),
    "bad_input": (BadRequest, 422),
    "unsupported_value": (BadRequest, 400),
    "internal_error": (ServerError, 500),
    "step_failed": (StepFailed, 502),
    "overloaded": (Overloaded, 503),
    "rate_limited": (RateLimited, 429),
    "quota_exceeded": (QuotaExceeded, 429),
    "step_timeout": (Timeout, 504),
}
# Codes the OpenAI-compatible routes answer with another status (OpenAI's 400 for invalid
# input); the gateway's table says the same (``ErrorCode.openai_status``).
OPENAI_STATUS: dict[str, int] = {"bad_input": 400}
_BY_CODE: dict[str, tuple[type[FusionError], int]] = {
    **ERROR_CODES,
    "bad_request": (BadRequest, 400),  # older gateways
    "timeout": (Timeout, 504),
}


def error_class_for_status(status: int) -> type[FusionError]:
    """The exception class for an HTTP status (the table in docs/api.md)."""
    if status in (400, 413, 422):
        return BadRequest
    if status == 401:
        return Unauthorized
    if status == 403:
        return Forbidden
    if status == 404:
        return NotFound
    if status == 429:
        return RateLimited
    if status == 503:
        return Overloaded
    if status == 504:
        return Timeout
    if status >= 500:
        return ServerError
    if 400 <= status < 500:
        return BadRequest
    return FusionError


def error_class_for_code(code: str | None) -> tuple[type[FusionError], int | None]:
    """The exception class and implied status for an error ``code`` (used for stream errors)."""
    if code in _BY_CODE:
        return _BY_CODE[code]
    return ServerError, None
