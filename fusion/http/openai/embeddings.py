"""OpenAI's ``POST /v1/embeddings`` over any model with an ``embed`` (or ``embed_text``) task.

The whole ``input`` list runs as one batch (``Gateway.call_many``: cached items read in one
round trip; up to ``limits.max_embedding_inputs``, 2,048 like OpenAI, which the replica runs
in chunks of its ``max_batch_size``). ``dimensions`` is honoured only where the model
declares shortened embeddings, and token-id input is refused with advice rather than decoded
with the wrong tokenizer.

Images: with a model that has an image-embedding task (CLIP), an item may be an image, as
Jina's and Infinity's APIs take it: ``{"image": "<data URL or base64>"}`` (and ``{"text":
...}`` for a text), or a ``data:image/...`` URL string. One request may mix both; CLIP's text
and image vectors share one space, so they compare directly.
"""

from __future__ import annotations

import asyncio
import base64
import math
import re
import struct
from typing import Any, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel

from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput, FusionError, Unsupported
from fusion.http.auth import require_key
from fusion.http.context import cache_policy, gateway, request_deadline
from fusion.http.openai.compat import OPENAI_ERRORS, name_params, pick_model
from fusion.http.payloads import FastJSONResponse, decode_base64

router = APIRouter(tags=["openai"], dependencies=[Depends(require_key)])

TOKEN_IDS_MESSAGE = (
    "input is token ids, but this gateway embeds text: each model tokenizes with its own "
    "tokenizer, and ids made by another one (such as tiktoken's) would mean different words. "
    "Send the strings instead (in LangChain, OpenAIEmbeddings(check_embedding_ctx_length="
    "False) stops it pre-tokenizing).")


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings body; token ids are accepted by the schema only to be refused
    with advice (see ``TOKEN_IDS_MESSAGE``)."""

    input: str | list[str] | list[int] | list[list[int]] | list[str | dict[str, Any]]
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


IMAGE_TASK = "embed_image"


def _items(raw: str | list[Any]) -> list[tuple[str, Any]]:
    """Each input item as ``("text", str)`` or ``("image", bytes)``; ``BadInput`` naming
    ``input[i]`` for anything else (token ids get advice: ``TOKEN_IDS_MESSAGE``)."""
    items: list[tuple[str, Any]] = []
    for i, item in enumerate([raw] if isinstance(raw, str) else raw):
        field = "input" if isinstance(raw, str) else f"input[{i}]"
        if isinstance(item, int | list):
            raise BadInput(TOKEN_IDS_MESSAGE, field="input")
        if isinstance(item, str) and item.startswith("data:image/"):
            items.append(("image", decode_base64(item, field)))
        elif isinstance(item, str):
            if not item:
                raise BadInput(f"{field} is empty", field=field)
            items.append(("text", item))
        elif isinstance(item, dict) and set(item) == {"image"}:
            items.append(("image", decode_base64(item["image"], f"{field}.image")))
        elif isinstance(item, dict) and set(item) == {"text"} and isinstance(item["text"], str):
            if not item["text"]:
                raise BadInput(f"{field}.text is empty", field=field)
            items.append(("text", item["text"]))
        else:
            raise BadInput(f"{field} must be a string, {{\"text\": ...}} or {{\"image\": "
                           "\"<data URL or base64>\"}", field=field)
    return items


def _renamed(err: FusionError, index: list[int]) -> FusionError:
    """A list item's error (``inputs[3].image``) under the client's index (``input[7]``)."""
    match = re.match(r"^inputs\[(\d+)\]", err.field or "")
    if match is None or int(match.group(1)) >= len(index):
        return _as_input_error(err)
    field = f"input[{index[int(match.group(1))]}]"
    return type(err)(err.message.replace(match.group(0), field, 1), field=field)


@router.post("/v1/embeddings", responses=OPENAI_ERRORS,
             dependencies=[Depends(name_params({"text": "input"}))])
async def embeddings(req: EmbeddingRequest, gw: Gateway = Depends(gateway),
                     deadline: float | None = Depends(request_deadline),
                     policy: CachePolicy = Depends(cache_policy)) -> Response:
    """Embed one string or a list of them; images too with a CLIP model."""
    task = "embed" if req.model in gw.models and "embed" in gw.models[req.model].tasks \
        else "embed_text"
    model = pick_model(gw, req.model, task)
    if isinstance(req.input, list) and not req.input:
        raise BadInput("input must be a non-empty string or list of strings", field="input")
    items = _items(req.input)
    dims = None if req.dimensions is None else await _dimensions(gw, model, req.dimensions)
    most = gw.config.limits.max_embedding_inputs
    if len(items) > most:  # named before the list is split by kind
        raise BadInput(f"input has {len(items)} items, over the {most} limit "
                       "(limits.max_embedding_inputs)", field="input")
    images = [i for i, (kind, _) in enumerate(items) if kind == "image"]
    if images and IMAGE_TASK not in gw.models[model].tasks:
        able = sorted(n for n, m in gw.models.items() if IMAGE_TASK in m.tasks)
        raise Unsupported(f"input[{images[0]}] is an image, but model '{model}' embeds text "
                          f"only; models that embed images: {able}", field=f"input[{images[0]}]")
    texts = [i for i, (kind, _) in enumerate(items) if kind == "text"]
    groups = [(task, "text", texts), (IMAGE_TASK, "image", images)]
    jobs = {}
    for group_task, key, index in groups:
        if index:  # each kind as one batch, its cached items read in one round trip
            jobs[group_task] = _embed_group(gw, model, group_task, key, index, items, policy,
                                            deadline, isinstance(req.input, str))
    results = dict(zip(jobs, await asyncio.gather(*jobs.values()), strict=True))
    vectors: list[Any] = [None] * len(items)
    for group_task, _, index in groups:
        for i, out in zip(index, results.get(group_task, []), strict=False):
            vectors[i] = out["embedding"]
    data = []
    for i, vec in enumerate(vectors):
        if dims is not None and dims != len(vec):
            vec = shorten(vec, dims)
        if req.encoding_format == "base64":
            vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    tokens = sum(len(v.split()) if kind == "text" else 1 for kind, v in items)
    # a Response, not a dict: FastAPI's encoder would walk every float first
    return FastJSONResponse({"object": "list", "data": data, "model": model,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})


async def _embed_group(gw: Gateway, model: str, task: str, key: str, index: list[int],
                       items: list[tuple[str, Any]], policy: CachePolicy,
                       deadline: float | None, single: bool) -> list[dict]:
    try:
        batch = await gw.call_many(model, task, [{key: items[i][1]} for i in index], policy,
                                   deadline=deadline)
    except FusionError as err:
        raise (_as_input_error(err, True) if single else _renamed(err, index)) from None
    return batch.outputs
