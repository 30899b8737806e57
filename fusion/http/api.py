"""The HTTP surface: a FastAPI app over a ``Gateway``, with no Ray in sight.

``create_api(get_gateway)`` is served by the Serve ingress in production and driven
in-process with httpx in tests. Errors are JSON with the request id; a client's mistake is
always a 4xx naming the field, and an unexpected exception a 500 logged with its trace.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fusion import __version__
from fusion.config import LimitsConfig
from fusion.core.executor import CachePolicy, RunResult
from fusion.core.gateway import Gateway
from fusion.errors import BadInput, FusionError, MalformedBody, PayloadTooLarge
from fusion.http import errors
from fusion.http.admin import add_admin_routes
from fusion.http.auth import require_admin, require_key
from fusion.http.context import request_deadline
from fusion.http.docs import add_offline_docs
from fusion.http.errors import request_id, sse_error
from fusion.http.openai.chat import add_chat_routes
from fusion.http.openai.compat import add_openai_routes, models_body
from fusion.http.payloads import FastJSONResponse, decode_json_inputs, encode_value, read_form
from fusion.http.playground import add_playground_routes
from fusion.observe import NULL_OBSERVER, ObserveMiddleware, Observer

log = logging.getLogger("fusion.http.api")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_INPUTS_BODY = {
    "requestBody": {"content": {
        "application/json": {"schema": {"type": "object", "properties": {
            "inputs": {"type": "object", "description": "named inputs; images and audio as "
                       "base64 strings"}}}},
        "multipart/form-data": {"schema": {"type": "object", "additionalProperties": True,
                                           "description": "one part per input; files for "
                                           "images and audio"}},
    }},
}

_MODEL_INPUTS_BODY = {
    "requestBody": {"content": {
        "application/json": {"schema": {"type": "object", "properties": {
            "inputs": {"oneOf": [
                {"type": "object", "description": "named inputs; images and audio as base64"},
                {"type": "array", "items": {"type": "object"},
                 "description": "a list request: many items, run as one batch; answers "
                                "lists of outputs and cached flags in the same order"}]}}}},
        "multipart/form-data": _INPUTS_BODY["requestBody"]["content"]["multipart/form-data"],
    }},
}


class RequestIdMiddleware:
    """Give every request an id (the client's ``X-Request-Id`` if sane) and echo it back.

    Plain ASGI rather than ``@app.middleware``: that wrapper costs a task and a stream copy
    per request, which shows in the router-overhead benchmark.
    """

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = next((v.decode("latin-1") for k, v in scope["headers"]
                      if k == b"x-request-id"), "")
        rid = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        state = scope.setdefault("state", {})
        state["request_id"], state["arrived"] = rid, time.monotonic()
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message) -> None:
            if message["type"] == "http.response.start":
                headers = [h for h in message.get("headers", []) if h[0] != b"x-request-id"]
                message = {**message, "headers": [*headers, header]}
            await send(message)

        await self.app(scope, receive, send_with_id)


class BodyLimitMiddleware:
    """Stop reading any request body at ``limits.max_body_bytes`` and answer 413.

    Every route, including the OpenAI ones whose bodies FastAPI parses before our code runs:
    counted here, below the framework, a 60 MB body costs at most the limit in memory. A
    declared ``Content-Length`` over the limit is refused before reading a byte; a chunked
    body at the first chunk past it. Whatever the app made of the interrupted read (FastAPI
    turns it into a 400) is dropped for the 413.
    """

    def __init__(self, app, get_gateway: Callable[[], Gateway]) -> None:
        self.app = app
        self.get_gateway = get_gateway

    def _limit(self) -> int:
        try:
            return self.get_gateway().config.limits.max_body_bytes
        except FusionError:  # still starting: the default limit
            return LimitsConfig().max_body_bytes

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self._limit()
        length = next((v for k, v in scope["headers"] if k == b"content-length"), b"")
        if length.isdigit() and int(length) > limit:
            return await self._refuse(scope, receive, send, f"body is {int(length)} bytes, "
                                      f"over the {limit} byte limit")
        seen, over, started = 0, False, False

        async def counted() -> dict:
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    over = True
                    raise PayloadTooLarge(f"body is over the {limit} byte limit", field="body")
            return message

        async def guarded(message) -> None:
            nonlocal started
            if over:
                return  # the app's answer to the interrupted read; ours follows
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, guarded)
        except Exception:
            if not over or started:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, f"body is over the {limit} byte limit")

    @staticmethod
    async def _refuse(scope, receive, send, message: str) -> None:
        rid = scope.get("state", {}).get("request_id", "-")
        response = errors.render(PayloadTooLarge(message, field="body"), rid,
                                 scope.get("path", ""))
        response.headers["Connection"] = "close"  # the rest of the body stays unread
        await response(scope, receive, send)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused as soon as it passes ``max_bytes`` (chunked uploads have no length)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(f"body is over the {max_bytes} byte limit", field="body")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_inputs(request: Request, types: dict[str, str], max_bytes: int,
                      allow_list: bool = False) -> dict[str, Any] | list[Any]:
    """The ``inputs`` of a JSON or multipart body, with binary fields turned into bytes.

    With ``allow_list``, a JSON ``{"inputs": [{...}, ...]}`` gives a list of such objects.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(f"body is {length} bytes, over the {max_bytes} byte limit",
                              field="body")
    ctype = request.headers.get("content-type", "")
    if ctype.startswith("multipart/form-data") or ctype.startswith(
            "application/x-www-form-urlencoded"):
        try:
            form = await request.form(max_part_size=max_bytes)
        except Exception as exc:  # malformed multipart
            raise BadInput(f"body is not valid multipart form data ({exc})", field="body") \
                from None
        return await read_form(form, types, max_bytes)
    raw = await read_body(request, max_bytes)
    if not raw.strip():
        raise BadInput("body is empty; send {\"inputs\": {...}}", field="body")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise MalformedBody(f"body is not valid JSON ({exc})", field="body") from None
    if not isinstance(body, dict):
        raise BadInput("body must be a JSON object", field="body")
    if allow_list and isinstance(body.get("inputs"), list):
        return [decode_json_inputs(item, types, prefix=f"inputs[{i}].")
                if isinstance(item, dict) else item for i, item in enumerate(body["inputs"])]
    inputs = body["inputs"] if isinstance(body.get("inputs"), dict) else body
    if "inputs" in body and not isinstance(body["inputs"], dict):
        raise BadInput("inputs must be an object", field="inputs")
    return decode_json_inputs(inputs, types)


def _wants_sse(request: Request, stream: bool) -> bool:
    return stream or "text/event-stream" in request.headers.get("accept", "")


def _sse(event: str, data: Any) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def create_api(get_gateway: Callable[[], Gateway]) -> FastAPI:
    app = FastAPI(title="Fusion gateway", version=__version__, docs_url=None, redoc_url=None,
                  description="Multimodal models served as one service, composed into cached "
                              "cross-modal pipelines.")

    app.state.get_gateway = get_gateway

    async def gateway() -> Gateway:  # async: a sync dependency would hop to a thread pool
        return get_gateway()

    def observer() -> Observer:
        try:
            return get_gateway().observer
        except FusionError:  # still starting: nothing to record with yet
            return NULL_OBSERVER

    app.add_middleware(BodyLimitMiddleware, get_gateway=get_gateway)  # innermost
    app.add_middleware(ObserveMiddleware, get_observer=observer)  # sees 413s and the id
    app.add_middleware(RequestIdMiddleware)  # added last: outermost, so 413s carry the id

    errors.install(app)

    @app.get("/healthz", tags=["ops"])
    async def healthz() -> dict:
        return {"status": "ok", "version": __version__}

    @app.get("/v1/models", tags=["models"], dependencies=[Depends(require_key)])
    async def list_models(gw: Gateway = Depends(gateway)) -> dict:
        return await models_body(gw)

    @app.post("/v1/models/{name}/{task}", tags=["models"], openapi_extra=_MODEL_INPUTS_BODY,
              dependencies=[Depends(require_key)])
    async def call_model(name: str, task: str, request: Request,
                         gw: Gateway = Depends(gateway)):
        spec = gw.executor.task_spec(name, task)
        types = {k: p.type for k, p in spec.inputs.items()}
        inputs = await read_inputs(request, types, gw.config.limits.max_body_bytes,
                                   allow_list=True)
        policy = CachePolicy.from_header(request.headers.get("cache-control"))
        deadline = await request_deadline(request)
        if isinstance(inputs, list):  # a list request: one batch (fusion.core.batch)
            batch = await gw.call_many(name, task, inputs, policy, deadline=deadline)
            return FastJSONResponse({
                "outputs": encode_value(batch.outputs), "types": dict(spec.outputs),
                "model": name, "task": task, "ms": batch.ms, "cached": batch.cached,
                "request_id": request_id(request)}, headers={"X-Fusion-Cache": batch.cache})
        outputs, report = await gw.call_model(name, task, inputs, policy, deadline=deadline)
        return JSONResponse({
            "outputs": encode_value(outputs), "types": dict(spec.outputs), "model": name,
            "task": task, "ms": report.ms, "cached": report.cached,
            "coalesced": report.coalesced, "request_id": request_id(request)},
            headers={"X-Fusion-Cache": "hit" if report.cached else "miss"})

    @app.get("/v1/pipelines", tags=["pipelines"], dependencies=[Depends(require_key)])
    async def list_pipelines(gw: Gateway = Depends(gateway)) -> dict:
        return {"pipelines": [p.describe() for p in gw.pipelines.values()]}

    @app.post("/v1/pipelines/{name}", tags=["pipelines"], openapi_extra=_INPUTS_BODY,
              dependencies=[Depends(require_key)])
    async def run_pipeline(name: str, request: Request, stream: bool = False,
                           gw: Gateway = Depends(gateway)):
        spec = gw.pipeline(name)
        # the deadline counts from arrival: reading a slow upload spends it too
        deadline = await request_deadline(request)
        types = {k: i.type for k, i in spec.inputs.items()}
        inputs = await read_inputs(request, types, gw.config.limits.max_body_bytes)
        policy = CachePolicy.from_header(request.headers.get("cache-control"))
        rid = request_id(request)

        def body(result: RunResult) -> dict:
            return {"outputs": encode_value(result.outputs), "types": spec.output_types,
                    "steps": result.steps_dict(), "cache": result.cache, "request_id": rid}

        if _wants_sse(request, stream):
            gw.admission.check(name)  # refused here: a plain 503, not an error event
            return StreamingResponse(_stream_run(gw, name, inputs, policy, body, rid, deadline),
                                     media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache",
                                              "X-Accel-Buffering": "no"})
        result = await gw.run_pipeline(name, inputs, policy, deadline=deadline)
        headers = {"X-Fusion-Cache": result.cache}
        images = [k for k, t in spec.output_types.items() if t == "image"]
        if "image/png" in request.headers.get("accept", "") and len(images) == 1 \
                and isinstance(result.outputs.get(images[0]), bytes):
            return Response(result.outputs[images[0]], media_type="image/png", headers=headers)
        return JSONResponse(body(result), headers=headers)

    add_admin_routes(app, gateway, require_key, require_admin)
    add_openai_routes(app, gateway, require_key)
    add_offline_docs(app)
    add_playground_routes(app)
    add_chat_routes(app, gateway, require_key)
    return app


async def _stream_run(gw: Gateway, name: str, inputs: dict, policy: CachePolicy,
                      body: Callable[[RunResult], dict], rid: str, deadline: float | None):
    """SSE: start, progress, token and step events as they happen, then the result (or the
    error).

    The run takes its admission slot when it starts (a slot taken before the response
    would leak if the client left before the stream began); the client going away
    cancels it (Starlette closes this generator).
    """
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()

    async def on_event(event: dict) -> None:
        kind = event.pop("event")
        await queue.put((kind, event))

    async def run() -> None:
        try:
            result = await gw.run_pipeline(name, inputs, policy, on_event, deadline)
            await queue.put(("result", body(result)))
        except Exception as exc:  # a bug is logged by sse_error and sent as a 500's body
            await queue.put(("error", sse_error(exc, rid)))

    job = asyncio.create_task(run())
    try:
        while True:
            kind, data = await queue.get()
            yield _sse(kind, encode_value(data))
            if kind in ("result", "error"):
                break
    finally:
        if not job.done():  # the client went away: stop working for it
            job.cancel()
