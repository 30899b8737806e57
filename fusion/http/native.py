"""The gateway's own surface: models (``/v1/models``) and pipelines (``/v1/pipelines``).

Bodies are JSON (images and audio as base64) or multipart (files); a pipeline answers JSON,
a PNG (``Accept: image/png`` with one image output) or an SSE stream of its step events.
``GET /v1/models`` and ``GET /v1/models/{name}`` answer OpenAI's model objects beside the
gateway's own description, so both kinds of client read one list.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response, StreamingResponse

from fusion import __version__
from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy, RunResult
from fusion.errors import BadInput, MalformedBody, NotFound, PayloadTooLarge
from fusion.http.auth import require_key
from fusion.http.context import cache_policy, gateway, request_deadline, request_id
from fusion.http.errors import COMMON, MODEL_CALL, responses, sse_error
from fusion.http.openai.compat import models_body, openai_model
from fusion.http.payloads import FastJSONResponse, decode_json_inputs, encode_value, read_form

log = logging.getLogger("fusion.http.native")

ops = APIRouter(tags=["ops"])
models = APIRouter(tags=["models"], dependencies=[Depends(require_key)])
pipelines = APIRouter(tags=["pipelines"], dependencies=[Depends(require_key)])

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


_JSON_ANSWER = {"application/json": {"schema": {"type": "object"}}}


@ops.get("/healthz")
async def healthz() -> dict:
    """Liveness: the router process answers (models may still be loading)."""
    return {"status": "ok", "version": __version__}


@models.get("/v1/models", responses=responses(COMMON))
async def list_models(gw: Gateway = Depends(gateway)) -> dict:
    """Every served model: OpenAI's list (``data``) and the gateway's own (``models``)."""
    return await models_body(gw)


@models.get("/v1/models/{name}", tags=["openai"], responses=responses((*COMMON, 404)))
async def retrieve_model(name: str, gw: Gateway = Depends(gateway)) -> dict:
    """OpenAI's retrieve: the model object, plus the gateway's info on it."""
    info = next((m for m in await gw.list_models() if m["name"] == name), None)
    if info is None:
        raise NotFound(f"unknown model {name!r}; served: {sorted(gw.models)}", "model")
    return {**info, **openai_model(info)}


@models.post("/v1/models/{name}/{task}", openapi_extra=_MODEL_INPUTS_BODY,
             responses=responses(MODEL_CALL))
async def call_model(name: str, task: str, request: Request, gw: Gateway = Depends(gateway),
                     deadline: float | None = Depends(request_deadline),
                     policy: CachePolicy = Depends(cache_policy),
                     rid: str = Depends(request_id)) -> Response:
    """One task of one model, cached; a list of inputs runs as one batch."""
    gw.tenants.check_model(name, task)  # before reading the body: 403 names the model
    spec = gw.executor.task_spec(name, task)
    gw.admission.check(f"model:{name}")  # a refusal reads and decodes no body
    types = {k: p.type for k, p in spec.inputs.items()}
    inputs = await read_inputs(request, types, gw.config.limits.max_body_bytes,
                               allow_list=True)
    if isinstance(inputs, list):  # a list request: one batch (fusion.core.batch)
        batch = await gw.call_many(name, task, inputs, policy, deadline=deadline)
        return FastJSONResponse({
            "outputs": encode_value(batch.outputs), "types": dict(spec.outputs),
            "model": name, "task": task, "ms": batch.ms, "cached": batch.cached,
            "request_id": rid}, headers={"X-Fusion-Cache": batch.cache})
    outputs, report = await gw.call_model(name, task, inputs, policy, deadline=deadline)
    return FastJSONResponse({
        "outputs": encode_value(outputs), "types": dict(spec.outputs), "model": name,
        "task": task, "ms": report.ms, "cached": report.cached,
        "coalesced": report.coalesced, "request_id": rid},
        headers={"X-Fusion-Cache": "hit" if report.cached else "miss"})


@pipelines.get("/v1/pipelines", responses=responses(COMMON))
async def list_pipelines(gw: Gateway = Depends(gateway)) -> dict:
    """Every pipeline the key may use: its inputs, steps and outputs."""
    names = gw.tenants.visible_pipelines(gw.pipelines)
    return {"pipelines": [gw.pipelines[n].describe() for n in names]}


@pipelines.post("/v1/pipelines/{name}", openapi_extra=_INPUTS_BODY, responses={
    200: {"content": {**_JSON_ANSWER, "image/png": {}, "text/event-stream": {}},
          "description": "the outputs; a PNG with Accept: image/png; SSE with stream"},
    **responses(MODEL_CALL)})
async def run_pipeline(name: str, request: Request, stream: bool = False,
                       gw: Gateway = Depends(gateway),
                       deadline: float | None = Depends(request_deadline),
                       policy: CachePolicy = Depends(cache_policy),
                       rid: str = Depends(request_id)) -> Response:
    """Run a pipeline; ``stream`` (or ``Accept: text/event-stream``) sends its step events."""
    gw.tenants.check_pipeline(name)  # before reading the body: 403 names the pipeline
    spec = gw.pipeline(name)
    gw.admission.check(name)  # a refusal reads and decodes no body (images, audio)
    types = {k: i.type for k, i in spec.inputs.items()}
    inputs = await read_inputs(request, types, gw.config.limits.max_body_bytes)

    def body(result: RunResult) -> dict:
        return {"outputs": encode_value(result.outputs), "types": spec.output_types,
                "steps": result.steps_dict(), "cache": result.cache, "request_id": rid}

    if _wants_sse(request, stream):
        gw.admission.check(name)  # refused here: a plain 503, not an error event
        return StreamingResponse(_stream_run(gw, name, inputs, policy, body, rid, deadline),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache",
                                          "X-Accel-Buffering": "no"})
    result = await gw.run_pipeline(name, inputs, policy, deadline=deadline, request_id=rid)
    headers = {"X-Fusion-Cache": result.cache}
    images = [k for k, t in spec.output_types.items() if t == "image"]
    if "image/png" in request.headers.get("accept", "") and len(images) == 1 \
            and isinstance(result.outputs.get(images[0]), bytes):
        return Response(result.outputs[images[0]], media_type="image/png", headers=headers)
    return FastJSONResponse(body(result), headers=headers)


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
            result = await gw.run_pipeline(name, inputs, policy, on_event, deadline, rid)
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
