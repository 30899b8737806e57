"""Rerank: ``POST /v1/rerank`` (also ``/rerank`` and ``/v2/rerank``) in the shape Cohere,
Jina, Infinity and TEI-compatible clients send (LangChain's, LlamaIndex's, Dify's rerankers).

Request ``{"model", "query", "documents": [str | {"text"} | {"image"}], "top_n",
"return_documents"}``; answer ``{"id", "results": [{"index", "relevance_score",
"document"?}], "model", "usage", "meta"}``, best first. ``/v2/rerank`` is where Cohere's v2
client posts; ``/rerank`` where Jina- and Infinity-style clients post without a version.

The model is any that ranks (``fusion.core.rank``): a cross-encoder scores each pair, an
embedding model by cosine similarity, a CLIP model ranks images (and texts) against a text
query. Scores are the model's: ``sigmoid`` of a cross-encoder's logit (0..1, as TEI and
Infinity answer) or a cosine (-1..1); the order is what clients use.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from fusion.core.gateway import Gateway
from fusion.core.rank import Document, rerank
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput
from fusion.http.auth import require_key
from fusion.http.context import cache_policy, gateway, request_deadline, request_id
from fusion.http.errors import MODEL_CALL, responses
from fusion.http.payloads import FastJSONResponse, decode_base64

router = APIRouter(tags=["retrieval"], dependencies=[Depends(require_key)])


class RerankRequest(BaseModel):
    """Cohere's and Jina's rerank body. Fields those APIs have that this one would not
    honour (``rank_fields``, ``max_chunks_per_doc``) are refused, not ignored."""

    model_config = ConfigDict(extra="forbid")

    model: str
    query: str
    documents: list[str | dict[str, Any]] = Field(
        description="texts; or objects {\"text\": ...}, or {\"image\": \"<data URL or "
        "base64>\"} with a CLIP model")
    top_n: int | None = Field(None, ge=1, description="the best top_n only (default all)")
    return_documents: bool = Field(False, description="each result carries its document")


class RerankResult(BaseModel):
    index: int
    relevance_score: float
    document: dict[str, Any] | None = None


class RerankResponse(BaseModel):
    id: str
    results: list[RerankResult]
    model: str
    usage: dict[str, int]
    meta: dict[str, Any]


def documents_of(raw: list[Any]) -> list[Document]:
    """The request's documents, each ``BadInput`` naming ``documents[i]``."""
    out = []
    for i, doc in enumerate(raw):
        field = f"documents[{i}]"
        if isinstance(doc, str):
            out.append(Document("text", doc))
        elif isinstance(doc, dict) and set(doc) == {"text"} and isinstance(doc["text"], str):
            out.append(Document("text", doc["text"]))
        elif isinstance(doc, dict) and set(doc) == {"image"}:
            out.append(Document("image", decode_base64(doc["image"], f"{field}.image")))
        else:
            raise BadInput(f"{field} must be a string, {{\"text\": ...}} or {{\"image\": "
                           "\"<data URL or base64>\"}", field=field)
    return out


@router.post("/v1/rerank", response_model=RerankResponse, responses=responses(MODEL_CALL))
async def rerank_route(req: RerankRequest, gw: Gateway = Depends(gateway),
                       deadline: float | None = Depends(request_deadline),
                       policy: CachePolicy = Depends(cache_policy),
                       rid: str = Depends(request_id)) -> Response:
    """Rank documents by relevance to the query, best first."""
    docs = documents_of(req.documents)
    found = await rerank(gw, req.model, req.query, docs, policy, deadline)
    results = []
    for i in found.order(req.top_n):
        item: dict[str, Any] = {"index": i, "relevance_score": found.scores[i]}
        if req.return_documents:
            raw = req.documents[i]
            item["document"] = {"text": raw} if isinstance(raw, str) else raw
        results.append(item)
    words = len(req.query.split()) * len(docs) + sum(
        len(d.value.split()) if d.kind == "text" else 1 for d in docs)
    return FastJSONResponse({
        "id": rid, "results": results, "model": req.model,
        "usage": {"prompt_tokens": words, "total_tokens": words},
        "meta": {"api_version": {"version": "2"}, "billed_units": {"search_units": 1}}},
        headers={"X-Fusion-Cache": found.cache})


# the same route where Cohere's v2 client and unversioned (Jina/Infinity-style) clients post
router.add_api_route("/v2/rerank", rerank_route, methods=["POST"],
                     response_model=RerankResponse, responses=responses(MODEL_CALL),
                     summary="Rerank (Cohere v2 path)")
router.add_api_route("/rerank", rerank_route, methods=["POST"], response_model=RerankResponse,
                     responses=responses(MODEL_CALL), summary="Rerank (unversioned path)")
