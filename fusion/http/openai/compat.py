"""OpenAI-compatible routes, so the official ``openai`` client works unchanged.

``model`` is a gateway model name (``GET /v1/models`` lists them). Errors use OpenAI's body,
``{"error": {"message", "type", "param", "code"}}``, since that is what those clients parse.
"""

from __future__ import annotations

import base64
import math
import re
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from fusion.core.admission import TIMEOUT_HEADER, deadline_from, parse_request_timeout
from fusion.core.executor import CachePolicy
from fusion.core.gateway import Gateway
from fusion.errors import (
    ERRORS_BY_CODE,
    BadInput,
    FusionError,
    NotFound,
    Overloaded,
    Unsupported,
)
from fusion.http.openai.audio import add_audio_routes
from fusion.http.payloads import FastJSONResponse

OPENAI_PATHS = ("/v1/embeddings", "/v1/images/generations", "/v1/audio/transcriptions",
                "/v1/audio/speech", "/v1/chat/completions", "/v1/completions")


def is_openai_path(path: str) -> bool:
    """Whether ``path`` is one of the OpenAI-compatible routes (which answer OpenAI's errors)."""
    return path.rstrip("/").endswith(OPENAI_PATHS)


def openai_error(err: FusionError, params: dict[str, str] | None = None) -> JSONResponse:
    """OpenAI's error body for ``err``; ``params`` renames a model input to the request field
    it came from (``audio`` → ``file``), so ``param`` names what the client sent."""
    code = "model_not_found" if isinstance(err, NotFound) and err.field == "model" else err.code
    param = (err.field or "").removeprefix("inputs.") or None
    param = (params or {}).get(param, param)
    row = ERRORS_BY_CODE.get(err.code)
    return JSONResponse({"error": {"message": err.message,
                                   "type": row.openai_type if row else "server_error",
                                   "param": param, "code": code}}, status_code=err.status,
                        headers=retry_headers(err))


def retry_headers(err: FusionError) -> dict[str, str] | None:
    """``Retry-After`` (whole seconds, as HTTP says) and ``Retry-After-Ms`` (what the SDK and
    OpenAI's clients read first) for a refusal; ``None`` for other errors."""
    if not isinstance(err, Overloaded):
        return None
    ms = max(1, round(err.retry_after_s * 1000))
    return {"Retry-After": str(max(1, -(-ms // 1000))), "Retry-After-Ms": str(ms)}


def request_deadline(request: Request) -> float | None:
    """The deadline of ``X-Request-Timeout``, counted from now (see ``fusion.core.admission``)."""
    return deadline_from(parse_request_timeout(request.headers.get(TIMEOUT_HEADER)))


def openai_model(info: dict[str, Any]) -> dict[str, Any]:
    """A model as OpenAI's ``Model`` object, with the gateway's family and tasks beside it."""
    return {"id": info["name"], "object": "model", "created": int(info.get("loaded_at", 0)),
            "owned_by": "fusion", "family": info.get("family"), "tasks": info.get("tasks")}


async def models_body(gw: Gateway) -> dict[str, Any]:
    """``GET /v1/models``: OpenAI's list (``object``, ``data``) and the gateway's own
    ``models`` (inputs, fingerprints), which the SDK, CLI and playground read, in one body."""
    models = await gw.list_models()
    return {"object": "list", "data": [openai_model(m) for m in models], "models": models}


def _pick_model(gw: Gateway, name: str | None, task: str) -> str:
    if not name:
        raise BadInput("model is required", field="model")
    if name not in gw.models or task not in gw.models[name].tasks:
        able = sorted(n for n, m in gw.models.items() if task in m.tasks)
        raise NotFound(f"The model '{name}' does not exist or cannot do {task}; "
                       f"use one of {able}", field="model")
    return name


async def _dimensions(gw: Gateway, model: str, dims: int) -> int:
    """``dimensions`` if the model offers it (its full size, or a declared shortened one),
    else ``Unsupported``: truncating a model not trained for it would quietly hurt quality."""
    info = await gw.model_info(model)
    full, offered = info.get("embedding_dim"), list(info.get("dimensions") or [])
    if dims == full or dims in offered:
        return dims
    if not offered:
        raise Unsupported(f"model '{model}' does not offer dimensions={dims}: it declares no "
                          "shortened embeddings (options.matryoshka_dims), and cutting a "
                          "model not trained for it loses quality; leave dimensions out"
                          + (f" or send {full}" if full else ""), field="dimensions")
    raise Unsupported(f"model '{model}' does not offer dimensions={dims}; it offers "
                      f"{[*offered, full] if full else offered}", field="dimensions")


def shorten(vec: list[float], dims: int) -> list[float]:
    """The first ``dims`` values, L2-normalised again (how Matryoshka embeddings shorten)."""
    head = vec[:dims]
    norm = math.sqrt(sum(x * x for x in head)) or 1.0
    return [x / norm for x in head]


def _as_input_error(err: FusionError, single: bool = False) -> FusionError:
    """A list item's error (``inputs[3].text``) named as OpenAI's field (``input[3]``), or
    ``input`` itself when the client sent one string (``single``)."""
    match = re.match(r"^inputs(\[\d+\])?(\.text)?$", err.field or "")
    if match is None:
        return err
    field = "input" if single else f"input{match.group(1) or ''}"
    return type(err)(err.message.replace(f"inputs{match.group(1) or ''}", field, 1), field=field)


TOKEN_IDS_MESSAGE = (
    "input is token ids, but this gateway embeds text: each model tokenizes with its own "
    "tokenizer, and ids made by another one (such as tiktoken's) would mean different words. "
    "Send the strings instead (in LangChain, OpenAIEmbeddings(check_embedding_ctx_length="
    "False) stops it pre-tokenizing).")


class EmbeddingRequest(BaseModel):
    input: str | list[str] | list[int] | list[list[int]]
    model: str
    encoding_format: str = Field("float", pattern="^(float|base64)$")
    dimensions: int | None = None
    user: str | None = None


class ImageRequest(BaseModel):
    prompt: str
    model: str | None = None
    n: int = Field(1, ge=1, le=8)
    size: str = "64x64"
    response_format: str = "b64_json"
    seed: int = 0
    steps: int | None = None
    quality: str | None = None
    style: str | None = None
    user: str | None = None


async def guarded(fn: Callable[[], Awaitable[Any]], params: dict[str, str] | None = None) -> Any:
    """Run a route's body, answering its ``FusionError`` in OpenAI's shape."""
    try:
        return await fn()
    except FusionError as err:
        return openai_error(err, params)


def add_openai_routes(app: FastAPI, gateway: Callable[[], Awaitable[Gateway]], require_key) -> None:

    @app.get("/v1/models/{name}", tags=["models", "openai"],
             dependencies=[Depends(require_key)])
    async def retrieve_model(name: str, gw: Gateway = Depends(gateway)) -> dict:
        """OpenAI's retrieve: the model object, plus the gateway's info on it."""
        info = next((m for m in await gw.list_models() if m["name"] == name), None)
        if info is None:
            raise NotFound(f"unknown model {name!r}; served: {sorted(gw.models)}", "model")
        return {**info, **openai_model(info)}

    @app.post("/v1/embeddings", tags=["openai"], dependencies=[Depends(require_key)])
    async def embeddings(req: EmbeddingRequest, request: Request,
                         gw: Gateway = Depends(gateway),
                         cache_control: str | None = Header(None)):
        async def run() -> dict:
            deadline = request_deadline(request)
            task = "embed" if req.model in gw.models and "embed" in gw.models[req.model].tasks \
                else "embed_text"
            model = _pick_model(gw, req.model, task)
            texts = [req.input] if isinstance(req.input, str) else req.input
            if any(not isinstance(t, str) for t in texts):
                raise BadInput(TOKEN_IDS_MESSAGE, field="input")
            dims = None if req.dimensions is None else await _dimensions(gw, model,
                                                                        req.dimensions)
            if not texts:
                raise BadInput("input must be a non-empty string or list of strings",
                               field="input")
            for i, text in enumerate(texts):
                if not text:
                    raise BadInput(f"input[{i}] is empty", field=f"input[{i}]")
            try:  # the whole list as one batch, its cached items read in one round trip
                batch = await gw.call_many(model, task, [{"text": t} for t in texts],
                                           CachePolicy.from_header(cache_control),
                                           deadline=deadline)
            except FusionError as err:
                raise _as_input_error(err, isinstance(req.input, str)) from None
            data = []
            for i, out in enumerate(batch.outputs):
                vec = out["embedding"]
                if dims is not None and dims != len(vec):
                    vec = shorten(vec, dims)
                if req.encoding_format == "base64":
                    vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
                data.append({"object": "embedding", "index": i, "embedding": vec})
            tokens = sum(len(t.split()) for t in texts)
            # a Response, not a dict: FastAPI's encoder would walk every float first
            return FastJSONResponse({"object": "list", "data": data, "model": model,
                                     "usage": {"prompt_tokens": tokens,
                                               "total_tokens": tokens}})

        return await guarded(run, {"text": "input"})

    @app.post("/v1/images/generations", tags=["openai"], dependencies=[Depends(require_key)])
    async def images(req: ImageRequest, request: Request, gw: Gateway = Depends(gateway)):
        async def run() -> dict:
            deadline = request_deadline(request)
            model = _pick_model(gw, req.model or next(
                (n for n, m in gw.models.items() if "generate" in m.tasks), None), "generate")
            if req.response_format != "b64_json":
                raise BadInput("only response_format 'b64_json' is supported (the gateway "
                               "keeps no image URLs)", field="response_format")
            try:
                width, height = (int(x) for x in req.size.lower().split("x"))
            except ValueError:
                raise BadInput("size must look like '512x512'", field="size") from None
            data = []
            for i in range(req.n):
                inputs = {"prompt": req.prompt, "width": width, "height": height,
                          "seed": req.seed + i}
                if req.steps is not None:
                    inputs["steps"] = req.steps
                out, _ = await gw.call_model(model, "generate", inputs, deadline=deadline)
                data.append({"b64_json": base64.b64encode(out["image"]).decode(),
                             "revised_prompt": req.prompt})
            return {"created": int(time.time()), "data": data}

        return await guarded(run, {"width": "size", "height": "size"})

    add_audio_routes(app, gateway, require_key, guarded, _pick_model, request_deadline)
