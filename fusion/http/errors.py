"""The one error renderer of the HTTP edge.

Every error a client sees leaves through here: a ``FusionError`` raised anywhere below a
route, FastAPI's validation errors, Starlette's 404/405, a body over the limit refused by
the middleware, and an error event inside an SSE stream. ``fusion.errors.ERROR_CODES`` is
the one table (code → status, OpenAI type); this module only chooses the shape:

- native routes: ``{"error": {"code", "message", "field"?, "request_id", ...}}``;
- OpenAI-compatible routes: OpenAI's ``{"error": {"message", "type", "param", "code"}}``
  (what the ``openai`` clients parse), with ``request_id`` beside them and the table's
  ``openai_status`` (OpenAI answers 400 where our native routes answer 422).

Keeping the shapes in one place is what stops the surfaces drifting apart (a 413 that was
a 422 on one route, a 404 with no request id on another).
"""

from __future__ import annotations

import logging
import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from fusion.errors import (
    ERROR_CODES,
    ERRORS_BY_CODE,
    BadInput,
    FusionError,
    MalformedBody,
    NotFound,
    Overloaded,
    RateLimited,
)

log = logging.getLogger("fusion.http.errors")

OPENAI_PATHS = ("/v1/embeddings", "/v1/images/generations", "/v1/audio/transcriptions",
                "/v1/audio/speech", "/v1/chat/completions", "/v1/completions")
_UNION_TAG = re.compile(r"^(str|int|float|bool|dict|list|none|[A-Z]\w*|function-.*|.*\[.*\])$")
INTERNAL_MESSAGE = "internal error; quote the request id when reporting it"


class ErrorDetail(BaseModel):
    """The native error body's ``error``; ``docs/api.md`` lists the codes."""

    code: str
    message: str
    field: str | None = None
    request_id: str
    retry_after_ms: int | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class OpenAIErrorDetail(BaseModel):
    """OpenAI's error object, with the gateway's ``request_id`` beside its fields."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None
    request_id: str


class OpenAIErrorBody(BaseModel):
    error: OpenAIErrorDetail


# what any keyed route may answer whatever it does: no key, a bug, still starting
COMMON = (401, 403, 500, 503)
# and a route that runs a model: its input, its size, its key's limits (429), its failures
# and the deadline
MODEL_CALL = (*COMMON, 400, 404, 413, 422, 429, 502, 504)


def responses(statuses: tuple[int, ...], openai: bool = False
              ) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status it can answer, with the error body's schema,
    so the OpenAPI document is the contract that clients and the fuzz test read."""
    model = OpenAIErrorBody if openai else ErrorBody
    if openai:  # OpenAI answers invalid input with 400: no 422 on these routes
        statuses = tuple(s for s in statuses if s != 422)
    meanings: dict[int, list[str]] = {}
    for row in ERROR_CODES:
        meanings.setdefault(row.openai_status if openai else row.status, []).append(row.code)
    meanings.setdefault(400, []).append("malformed_body")
    return {status: {"model": model, "description": ", ".join(
        dict.fromkeys(meanings.get(status, ["error"])))} for status in sorted(set(statuses))}


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes (which answer OpenAI's errors)."""
    return path.rstrip("/").endswith(OPENAI_PATHS)


def status_of(err: FusionError, openai: bool = False) -> int:
    """The HTTP status of ``err`` on a surface, from the one table."""
    row = ERRORS_BY_CODE.get(err.code)
    if row is None:
        return err.status
    return row.openai_status if openai else row.status


def error_body(err: FusionError, request_id: str, openai: bool = False,
               params: dict[str, str] | None = None) -> dict[str, Any]:
    """The JSON body for ``err``. On OpenAI routes ``params`` renames a model input to the
    request field it came from (``audio`` → ``file``), so ``param`` names what was sent."""
    if not openai:
        return {"error": {**err.to_dict(), "request_id": request_id}}
    code = "model_not_found" if isinstance(err, NotFound) and err.field == "model" else err.code
    param = (err.field or "").removeprefix("inputs.") or None
    param = (params or {}).get(param, param)
    row = ERRORS_BY_CODE.get(err.code)
    return {"error": {"message": err.message, "type": row.openai_type if row else "server_error",
                      "param": param, "code": code, "request_id": request_id}}


def retry_headers(err: FusionError) -> dict[str, str]:
    """``Retry-After`` (whole seconds, as HTTP says) and ``Retry-After-Ms`` (what the SDK and
    OpenAI's clients read first) for a refusal; nothing for other errors."""
    if not isinstance(err, Overloaded | RateLimited):
        return {}
    ms = max(1, round(err.retry_after_s * 1000))
    extra = err.headers if isinstance(err, RateLimited) else {}
    return {"Retry-After": str(max(1, -(-ms // 1000))), "Retry-After-Ms": str(ms), **extra}


def render(err: FusionError, request_id: str, path: str,
           params: dict[str, str] | None = None) -> JSONResponse:
    """The response for ``err`` on the route at ``path``."""
    openai = is_openai_path(path)
    return JSONResponse(error_body(err, request_id, openai, params),
                        status_code=status_of(err, openai), headers=retry_headers(err))


def sse_error(exc: BaseException, request_id: str, openai: bool = False) -> dict[str, Any]:
    """The data of a stream's error event: the same body the status line would have carried."""
    return error_body(as_fusion_error(exc, request_id), request_id, openai)


def as_fusion_error(exc: BaseException, request_id: str = "-") -> FusionError:
    """``exc`` itself if it is a client-facing error, else a logged 500."""
    if isinstance(exc, FusionError):
        return exc
    log.error("unhandled error in request %s", request_id, exc_info=exc)
    return FusionError(INTERNAL_MESSAGE)


def request_id(request: Request) -> str:
    """The id ``RequestIdMiddleware`` gave the request (``-`` outside it)."""
    return getattr(request.state, "request_id", "") or "-"


def _params(request: Request) -> dict[str, str] | None:
    return getattr(request.state, "openai_params", None)


def validation_error(err: RequestValidationError) -> BadInput:
    """FastAPI's first complaint as a ``BadInput`` naming the field the way the client wrote
    it (``messages[1].role``, not ``body -> messages -> 1 -> role``)."""
    first = err.errors()[0] if err.errors() else {}
    field = ""
    for part in first.get("loc", ()):
        if part in ("body", "query", "header", "path") and not field:
            continue
        if isinstance(part, int):
            field += f"[{part}]"
        elif _UNION_TAG.match(str(part)):
            continue  # pydantic's union branch tags (str, list[int], VoiceId): not a field
        else:
            field += f".{part}" if field else str(part)
    if first.get("type") == "json_invalid":  # its loc is a character offset
        return MalformedBody(f"body is not valid JSON ({first.get('msg', 'invalid')})",
                             field="body")
    return BadInput(f"{field or 'request'}: {first.get('msg', 'invalid')}", field=field or None)


def install(app: FastAPI) -> None:
    """Register the handlers that send every error through ``render``."""

    @app.exception_handler(FusionError)
    async def on_fusion_error(request: Request, err: FusionError) -> JSONResponse:
        if err.status >= 500:
            log.warning("request %s failed: %s", request_id(request), err.message)
        return render(err, request_id(request), request.url.path, _params(request))

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, err: RequestValidationError
                                  ) -> JSONResponse:
        return render(validation_error(err), request_id(request), request.url.path,
                      _params(request))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:  # no such route
            err: FusionError = NotFound(f"no route {request.url.path!r}", field="path")
        else:  # 405 and the like: the route exists, the method does not
            err = BadInput(f"{request.method} {exc.detail.lower()} here", field="method")
        response = render(err, request_id(request), request.url.path)
        response.status_code = exc.status_code
        response.headers.update(exc.headers or {})
        return response

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        err = as_fusion_error(exc, request_id(request))
        response = render(err, request_id(request), request.url.path)
        # Starlette answers this one outside every middleware, ours included: the id is
        # added here, unless a proxy in front (Serve's) adds it itself
        if not getattr(request.app.state, "proxy_sets_request_id", False):
            response.headers["X-Request-Id"] = request_id(request)
        return response
