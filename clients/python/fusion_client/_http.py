"""The HTTP messages the sans-IO operations exchange, and how a gateway answer becomes a
typed error (:mod:`fusion_client.errors`): one place for the gateway's, OpenAI's and
FastAPI's error bodies and for transport failures, used by both clients and the chat helpers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import httpx

from fusion_client.errors import (
    ERROR_CODES,
    OPENAI_STATUS,
    ConnectionFailed,
    FusionError,
    ServerError,
    Timeout,
    error_class_for_code,
    error_class_for_status,
)

REQUEST_ID_HEADER = "x-request-id"


@dataclass
class Request:
    method: str
    path: str
    params: dict[str, str] | None = None
    json: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Response:
    status: int
    headers: Mapping[str, str]
    body: Any  # decoded JSON (None for an empty body)

    @property
    def request_id(self) -> str | None:
        return self.headers.get(REQUEST_ID_HEADER)



def _json_or_none(content: bytes) -> Any:
    if not content:
        return None
    try:
        return json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return None


def error_from_body(body: Any, *, status: int | None, request_id: str | None,
                    fallback_text: str = "") -> FusionError:
    """Build the typed error from a gateway error body (ours, OpenAI's or FastAPI's)."""
    message, code, field_, rid = None, None, None, None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        message = err.get("message")
        code = err.get("code") if isinstance(err.get("code"), str) else None
        field_ = err.get("field") or err.get("param")
        rid = err.get("request_id")
    elif isinstance(body, dict) and "detail" in body:  # FastAPI's own errors
        detail = body["detail"]
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):
            first = detail[0]
            loc = [str(p) for p in first.get("loc", []) if p != "body"]
            field_ = ".".join(loc) or None
            message = first.get("msg")
        elif isinstance(detail, str):
            message = detail
    if status is not None:
        cls = error_class_for_status(status)
        if code in ERROR_CODES and ERROR_CODES[code][1] == status:
            cls = ERROR_CODES[code][0]  # the gateway's own code: its exact class (StepFailed)
    else:
        cls, status = error_class_for_code(code)
        if isinstance(body, dict) and "type" in (body.get("error") or {}):  # OpenAI-shaped
            status = OPENAI_STATUS.get(code or "", status)
    if not message:
        message = fallback_text.strip()[:500] or (f"HTTP {status}" if status else "error")
    return cls(str(message), status=status, code=code, field=field_ if field_ else None,
               request_id=rid or request_id)


def check_response(status: int, headers: Mapping[str, str], content: bytes) -> Response:
    """Decode a complete response; raise the typed error for a non-2xx status."""
    rid = headers.get(REQUEST_ID_HEADER)
    body = _json_or_none(content)
    if status >= 400:
        text = content.decode("utf-8", "replace") if body is None else ""
        raise error_from_body(body, status=status, request_id=rid, fallback_text=text)
    if content and body is None:
        raise ServerError(f"the gateway answered {status} with a body that is not JSON",
                          status=status, request_id=rid)
    return Response(status, headers, body)


def transport_error(exc: httpx.TransportError, timeout: float | None) -> FusionError:
    """Map an httpx transport failure to ``Timeout`` or ``ConnectionFailed``."""
    if isinstance(exc, httpx.TimeoutException) and not isinstance(
            exc, httpx.ConnectTimeout | httpx.PoolTimeout):
        return Timeout(f"no response within the client timeout ({timeout} s): {exc}",
                       code="client_timeout")
    return ConnectionFailed(f"cannot reach the gateway: {exc or type(exc).__name__}")

