"""The built-in ``rank`` step's signature: which models rank, and what the step takes and gives.

The step runs in the router (``fusion.core.rank.rank_step``) over a model's own tasks:
``rank: {model: <name>}`` with a query and ``documents`` (texts) and/or ``images``. It lives
here, beside ``fuse`` and ``template``, so the spec checker knows it without the core.
"""

from __future__ import annotations

from fusion.tasks import ModelTasks, Param, TaskSpec

RANK_TASK_NAME = "rank"
RANK_TASK = TaskSpec(
    {"model": Param("text"), "query": Param("text"),
     "documents": Param("list[text]", False, None), "images": Param("list[image]", False, None),
     "top_k": Param("int", False, 0)},
    {"indices": "list[int]", "scores": "list[float]", "documents": "list[text]",
     "context": "text"}, batched=False,
    doc="Rank documents (texts, or images with a CLIP model) by relevance to the query with "
        "a reranker or an embedding model; the best top_k (0: all), best first: their "
        "indices in the input list (texts first, then images), scores, the texts "
        "themselves, and `context`, the texts numbered for a prompt ([1] first text ...).")


def rank_method(mt: ModelTasks) -> str | None:
    """How a model ranks: ``rerank`` (a cross-encoder's pairs), ``embed`` (text embeddings,
    cosine), ``clip`` (``embed_text`` and ``embed_image``, cosine), or None: it cannot."""
    if "rerank" in mt.tasks:
        return "rerank"
    if "embed" in mt.tasks:
        return "embed"
    if "embed_text" in mt.tasks:
        return "clip"
    return None
