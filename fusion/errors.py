"""Errors that cross the gateway's boundaries.

Every error a client can cause is a ``FusionError`` with an HTTP status and, where one
exists, the request field at fault. They must survive pickling because Ray ships a
replica's exception to the caller; ``__reduce__`` keeps the extra attributes.
"""

from __future__ import annotations


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
    status = 503
    code = "overloaded"


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
