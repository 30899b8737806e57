"""OpenAI's ``POST /v1/embeddings`` over any model with an ``embed`` (or ``embed_text``) task.

The whole ``input`` list runs as one batch (``Gateway.call_many``: cached items read in one
round trip). ``dimensions`` is honoured only where the model declares shortened embeddings,
and token-id input is refused with advice rather than decoded with the wrong tokenizer.
"""

from __future__ import annotations

import base64
import math
import re
import struct
from typing import Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel

from fusion.core.executor import CachePolicy
from fusion.core.gateway import Gateway
from fusion.errors import BadInput, FusionError, Unsupported
from fusion.http.auth import require_key
from fusion.http.context import cache_policy, gateway, request_deadline
from fusion.http.openai.compat import OPENAI_ERRORS, name_params, pick_model
from fusion.http.payloads import FastJSONResponse

router = APIRouter(tags=["openai"], dependencies=[Depends(require_key)])

TOKEN_IDS_MESSAGE = (
    "input is token ids, but this gateway embeds text: each model tokenizes with its own "
    "tokenizer, and ids made by another one (such as tiktoken's) would mean different words. "
    "Send the strings instead (in LangChain, OpenAIEmbeddings(check_embedding_ctx_length="
    "False) stops it pre-tokenizing).")


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings body; token ids are accepted by the schema only to be refused
    with advice (see ``TOKEN_IDS_MESSAGE``)."""

    input: str | list[str] | list[int] | list[list[int]]
    model: str
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = None
    user: str | None = None


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


@router.post("/v1/embeddings", responses=OPENAI_ERRORS,
             dependencies=[Depends(name_params({"text": "input"}))])
async def embeddings(req: EmbeddingRequest, gw: Gateway = Depends(gateway),
                     deadline: float | None = Depends(request_deadline),
                     policy: CachePolicy = Depends(cache_policy)) -> Response:
    """Embed one string or a list of them."""
    task = "embed" if req.model in gw.models and "embed" in gw.models[req.model].tasks \
        else "embed_text"
    model = pick_model(gw, req.model, task)
    texts = [req.input] if isinstance(req.input, str) else req.input
    if any(not isinstance(t, str) for t in texts):
        raise BadInput(TOKEN_IDS_MESSAGE, field="input")
    dims = None if req.dimensions is None else await _dimensions(gw, model, req.dimensions)
    if not texts:
        raise BadInput("input must be a non-empty string or list of strings", field="input")
    for i, text in enumerate(texts):
        if not text:
            raise BadInput(f"input[{i}] is empty", field=f"input[{i}]")
    try:  # the whole list as one batch, its cached items read in one round trip
        batch = await gw.call_many(model, task, [{"text": t} for t in texts], policy,
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
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
