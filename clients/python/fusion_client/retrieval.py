"""Retrieval: rerank requests and image embeddings, sans I/O (the clients send them).

``FusionClient.rerank(query, documents)`` posts ``/v1/rerank`` and returns
:class:`RerankResult` items, best first; ``embed(items)`` embeds texts and, with a CLIP model,
images (``bytes``, a ``pathlib.Path`` or a PIL image) through ``/v1/embeddings``, so both
kinds land in one vector space in one request.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from fusion_client._core import Request, _cache_headers, _deadline_headers
from fusion_client.encoding import encode_value, is_pil_image
from fusion_client.errors import BadRequest, ServerError


class RerankResult(BaseModel):
    """One ranked document: its ``index`` in the list sent, its score (a cross-encoder's
    0..1, or an embedding model's cosine), and the document when ``return_documents``."""

    model_config = ConfigDict(extra="allow")

    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


def is_image(value: Any) -> bool:
    """Whether an item is sent as an image: bytes, a path object, a PIL image, or
    ``{"image": ...}``. A ``str`` is always text."""
    return isinstance(value, bytes | bytearray | memoryview | os.PathLike) or \
        is_pil_image(value) or (isinstance(value, dict) and "image" in value)


def item_json(value: Any, field: str) -> Any:
    """A text as itself, an image as ``{"image": "<base64>"}``."""
    if isinstance(value, str):
        if not value:
            raise BadRequest(f"{field} is empty", field=field)
        return value
    if isinstance(value, dict) and set(value) == {"image"}:
        value = value["image"]
    if is_image(value):
        return {"image": encode_value(value, "image", field)}
    raise BadRequest(f"{field}: a text (str) or an image (bytes, Path, PIL image), not "
                     f"{type(value).__name__}", field=field)


def rerank_request(query: str, documents: Sequence[Any], *, model: str,
                   top_n: int | None = None, return_documents: bool = False,
                   cache_control: str | None = None,
                   timeout_s: float | None = None) -> Request:
    if isinstance(documents, str | bytes):
        raise TypeError("documents must be a list of texts or images")
    body: dict[str, Any] = {
        "model": model, "query": query,
        "documents": [item_json(d, f"documents[{i}]") for i, d in enumerate(documents)],
        "return_documents": return_documents}
    if top_n is not None:
        body["top_n"] = top_n
    return Request("POST", "/v1/rerank", json=body,
                   headers={**_cache_headers(cache_control), **_deadline_headers(timeout_s)})


def parse_rerank(body: Any, request_id: str | None) -> list[RerankResult]:
    if not isinstance(body, dict) or not isinstance(body.get("results"), list):
        raise ServerError("the gateway's rerank answer has no results", request_id=request_id)
    return [RerankResult.model_validate(r) for r in body["results"]]


def embeddings_request(items: Sequence[Any], *, model: str,
                       cache_control: str | None = None) -> Request:
    """``/v1/embeddings`` with texts and images (Jina's item form)."""
    return Request("POST", "/v1/embeddings", json={
        "model": model,
        "input": [item_json(v, f"items[{i}]") for i, v in enumerate(items)]},
        headers=_cache_headers(cache_control))


def parse_embeddings(body: Any, request_id: str | None) -> list[list[float]]:
    if not isinstance(body, dict) or not isinstance(body.get("data"), list):
        raise ServerError("the gateway's embeddings answer has no data", request_id=request_id)
    return [d["embedding"] for d in sorted(body["data"], key=lambda d: d["index"])]
