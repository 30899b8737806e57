"""Relevance of documents to a query: ``/v1/rerank`` and the pipelines' ``rank`` step.

Any model that can compare a query with a document ranks, each the way it was trained to:

- a cross-encoder (a task ``rerank``: one (query, document) pair in, ``score`` out) scores
  every pair; the pairs go through the list path (``fusion.core.batch``), so each pair is
  cached on its own and the misses reach the model in batches of its ``max_batch_size``;
- an embedding model (``embed``, or CLIP's ``embed_text`` / ``embed_image``) embeds the
  query and the documents through the same list path and scores by cosine similarity. Each
  text's vector is cached under the same key ``/v1/embeddings`` uses, so a document set
  indexed once is not embedded again for each new query. CLIP ranks images (and texts)
  against a text query: its towers share one space.

Errors name the client's field: ``query``, ``documents[3]``. The router does the cosine
arithmetic (numpy, imported lazily; a few hundred microseconds for 64 documents of 384
values), never torch.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusion.core.batch import BatchResult, call_many
from fusion.core.tenants import Tenants
from fusion.errors import BadInput, FusionError, NotFound, StepTimeout, Unsupported
from fusion.pipeline.rank import rank_method
from fusion.tasks import ModelTasks

if TYPE_CHECKING:
    from fusion.core.executor import Executor
    from fusion.core.gateway import Gateway
    from fusion.core.run_types import CachePolicy

_ITEM = re.compile(r"^inputs\[(\d+)\]")


@dataclass(frozen=True)
class Document:
    """One document to rank: ``kind`` "text" (``value`` a str) or "image" (encoded bytes)."""

    kind: str
    value: Any


@dataclass
class Relevance:
    scores: list[float]  # one per document, in the client's order
    cached: list[bool]  # per document: its score (pair or vector) came from the cache
    ms: float

    @property
    def cache(self) -> str:
        hits = sum(self.cached)
        return "hit" if hits == len(self.cached) else "partial" if hits else "miss"

    def order(self, top_n: int | None = None) -> list[int]:
        """Document indices, most relevant first (ties keep the client's order)."""
        ranked = sorted(range(len(self.scores)), key=lambda i: -self.scores[i])
        return ranked[:top_n] if top_n else ranked


def check_ranker(models: dict[str, ModelTasks], model: str, images: bool = False) -> str:
    """The model's ``rank_method``, or ``Unsupported`` naming ``model`` (and what ranks)."""
    mt = models[model]
    method = rank_method(mt)
    rankers = sorted(n for n, m in models.items() if rank_method(m))
    if method is None:
        raise Unsupported(f"model {model!r} ({mt.family}/{mt.backend}) cannot rank: it has "
                          "no rerank task and no embedding task; models that rank: "
                          f"{rankers}", field="model")
    if images and "embed_image" not in mt.tasks:
        clips = sorted(n for n, m in models.items() if "embed_image" in m.tasks)
        raise Unsupported(f"model {model!r} ranks texts only; image documents need a model "
                          f"with an image-embedding task (CLIP): {clips}", field="documents")
    return method


def _renamed(err: FusionError, names: list[str]) -> FusionError:
    """An item error of the list path (``inputs[3].text``) under the client's field name."""
    match = _ITEM.match(err.field or "")
    if match is None or int(match.group(1)) >= len(names):
        return err
    old, new = match.group(0), names[int(match.group(1))]
    message = err.message.replace(old, new, 1)
    return type(err)(message, field=new)


async def _many(executor: Executor, model: str, task: str, items: list[dict], names: list[str],
                policy: CachePolicy) -> BatchResult:
    try:
        return await call_many(executor, model, task, items, policy)
    except FusionError as err:
        raise _renamed(err, names) from None


async def relevance(executor: Executor, model: str, query: str, documents: list[Document],
                    policy: CachePolicy) -> Relevance:
    """Score every document against ``query`` with ``model`` (see the module docstring)."""
    started = time.perf_counter()
    has_images = any(d.kind == "image" for d in documents)
    method = check_ranker(executor.models, model, images=has_images)
    names = [f"documents[{i}]" for i in range(len(documents))]
    if method == "rerank":
        batch = await _many(executor, model, "rerank",
                            [{"query": query, "document": d.value} for d in documents],
                            names, policy)
        return Relevance([float(o["score"]) for o in batch.outputs], batch.cached,
                         _ms(started))
    text_task = "embed" if method == "embed" else "embed_text"
    texts = [i for i, d in enumerate(documents) if d.kind == "text"]
    images = [i for i, d in enumerate(documents) if d.kind == "image"]
    jobs = [_many(executor, model, text_task,
                  [{"text": query}] + [{"text": documents[i].value} for i in texts],
                  ["query"] + [names[i] for i in texts], policy)]
    if images:
        jobs.append(_many(executor, model, "embed_image",
                          [{"image": documents[i].value} for i in images],
                          [names[i] for i in images], policy))
    results = await asyncio.gather(*jobs)
    vectors: list[Any] = [None] * len(documents)
    cached = [False] * len(documents)
    for pos, i in enumerate(texts, start=1):
        vectors[i], cached[i] = results[0].outputs[pos]["embedding"], results[0].cached[pos]
    for pos, i in enumerate(images):
        vectors[i], cached[i] = results[1].outputs[pos]["embedding"], results[1].cached[pos]
    return Relevance(cosines(results[0].outputs[0]["embedding"], vectors), cached,
                     _ms(started))


def cosines(query: list[float], vectors: list[list[float]]) -> list[float]:
    """Cosine similarity of ``query`` with each vector (models normalise; this does too)."""
    import numpy as np

    q = np.asarray(query, dtype=np.float32)
    m = np.asarray(vectors, dtype=np.float32).reshape(len(vectors), -1)
    norms = np.linalg.norm(m, axis=1) * (np.linalg.norm(q) or 1.0)
    return (m @ q / np.where(norms == 0, 1.0, norms)).astype(float).tolist()


def _ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)


def check_documents(query: Any, documents: list[Document], max_items: int,
                    max_chars: int) -> None:
    """The request's shape, before any model runs: ``BadInput`` naming the field."""
    if not isinstance(query, str) or not query.strip():
        raise BadInput("query must be a non-empty string", field="query")
    if len(query) > max_chars:
        raise BadInput(f"query is {len(query)} characters, over the {max_chars} limit "
                       "(limits.max_text_chars)", field="query")
    if not documents:
        raise BadInput("documents must be a non-empty list", field="documents")
    if len(documents) > max_items:
        raise BadInput(f"documents has {len(documents)} items, over the {max_items} limit "
                       "(limits.max_embedding_inputs)", field="documents")
    for i, doc in enumerate(documents):
        if doc.kind == "text" and not doc.value.strip():
            raise BadInput(f"documents[{i}] is empty", field=f"documents[{i}]")
        if doc.kind == "text" and len(doc.value) > max_chars:
            raise BadInput(f"documents[{i}] is {len(doc.value)} characters, over the "
                           f"{max_chars} limit (limits.max_text_chars)",
                           field=f"documents[{i}]")


async def rerank(gw: Gateway, model: str, query: str, documents: list[Document],
                 policy: CachePolicy, deadline: float | None = None) -> Relevance:
    """``/v1/rerank``: checked against the limits and the caller's key (its models, tasks,
    rate and quota: ``fusion.core.tenants``; each document counts as an item), admitted like
    a model call, bounded by the request's deadline."""
    limits = gw.config.limits
    check_documents(query, documents, limits.max_embedding_inputs, limits.max_text_chars)
    if model not in gw.models:
        raise NotFound(f"unknown model {model!r}; served: {sorted(gw.models)}", "model")
    images = any(d.kind == "image" for d in documents)
    method = check_ranker(gw.models, model, images=images)
    task = {"rerank": "rerank", "embed": "embed"}.get(method, "embed_text")
    if images:  # the key must be allowed the image tower too
        Tenants.check_model(model, "embed_image")
    async with gw.tenants.guard("model", model, task, cost=len(documents)) as guard:
        found = await _admitted(gw, model, query, documents, policy, deadline)
        hits = sum(found.cached)
        guard.done(items=len(documents), cache_hits=hits,
                   compute_s=0.0 if hits == len(documents) else found.ms / 1000)
        return found


async def _admitted(gw: Gateway, model: str, query: str, documents: list[Document],
                    policy: CachePolicy, deadline: float | None) -> Relevance:
    with gw.admission.admit(f"model:{model}"):
        job = relevance(gw.executor, model, query, documents, policy)
        if deadline is None:
            return await job
        left = deadline - time.monotonic()
        if left <= 0:
            job.close()
            raise gw.admission.expired_before_start(f"{model}/rerank", None)
        try:
            return await asyncio.wait_for(job, left)
        except asyncio.TimeoutError:
            raise StepTimeout(f"{model}/rerank did not finish within the request's deadline "
                              f"(X-Request-Timeout; {left:.3g}s were left)") from None


async def rank_step(executor: Executor, inputs: dict[str, Any],
                    policy: CachePolicy) -> dict[str, Any]:
    """The pipeline step ``rank``: ``RANK_TASK``'s outputs for its checked inputs."""
    texts = list(inputs.get("documents") or [])
    docs = [Document("text", t) for t in texts] + \
        [Document("image", b) for b in inputs.get("images") or []]
    if not docs:
        raise BadInput("rank needs documents or images", field="documents")
    found = await relevance(executor, inputs["model"], inputs["query"], docs, policy)
    top = found.order(int(inputs.get("top_k") or 0) or None)
    chosen = [texts[i] for i in top if i < len(texts)]
    return {"indices": top, "scores": [found.scores[i] for i in top], "documents": chosen,
            "context": "\n".join(f"[{n}] {t}" for n, t in enumerate(chosen, start=1))}
