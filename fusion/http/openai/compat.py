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
from pydantic import BaseModel, Field

from fusion.core.executor import CachePolicy
from fusion.core.gateway import Gateway
from fusion.errors import (
    BadInput,
    FusionError,
    NotFound,
    Unsupported,
)
from fusion.http.context import request_deadline
from fusion.http.openai.audio import add_audio_routes
from fusion.http.payloads import FastJSONResponse


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


def guarded(request: Request, fn: Callable[[], Awaitable[Any]],
            params: dict[str, str] | None = None) -> Awaitable[Any]:
    """Run a route's body; its errors are rendered by ``fusion.http.errors`` with ``params``
    renaming model inputs to the request fields they came from."""
    request.state.openai_params = params
    return fn()


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
            deadline = await request_deadline(request)
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

        return await guarded(request, run, {"text": "input"})

    @app.post("/v1/images/generations", tags=["openai"], dependencies=[Depends(require_key)])
    async def images(req: ImageRequest, request: Request, gw: Gateway = Depends(gateway)):
        async def run() -> dict:
            deadline = await request_deadline(request)
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

        return await guarded(request, run, {"width": "size", "height": "size"})

    add_audio_routes(app, gateway, require_key, guarded, _pick_model, request_deadline)
