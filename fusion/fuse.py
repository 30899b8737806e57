"""Model fusion: combine the label rankings of several models into one.

Two methods, both insensitive to how each model scales its scores:
``weighted_mean`` normalises each model's scores to sum to 1 over the labels, then takes the
weighted mean (a label a model did not score counts 0 for it); ``rank`` is reciprocal rank
fusion (Cormack et al. 2009), which uses only the order each model gives, with k = 60.
"""

from __future__ import annotations

from fusion.errors import BadInput

RRF_K = 60


def fuse_labels(rankings: list[list[dict]], weights: list[float] | None = None,
                method: str = "weighted_mean") -> list[dict]:
    """Fused ``[{label, score}]`` best first; scores sum to 1."""
    rankings = [r for r in rankings if r]  # a skipped step contributes nothing
    if not rankings:
        raise BadInput("fuse needs at least one non-empty ranking", field="labels")
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise BadInput(f"fuse: weights must be {len(rankings)} non-negative numbers with a "
                       "positive sum", field="weights")
    total_w = sum(weights)
    fused: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        if method == "weighted_mean":
            total = sum(max(0.0, float(x["score"])) for x in ranking)
            for x in ranking:
                share = max(0.0, float(x["score"])) / total if total > 0 else 1 / len(ranking)
                fused[x["label"]] = fused.get(x["label"], 0.0) + weight * share / total_w
        elif method == "rank":
            ordered = sorted(ranking, key=lambda x: -float(x["score"]))
            for rank, x in enumerate(ordered, start=1):
                fused[x["label"]] = fused.get(x["label"], 0.0) + weight / (RRF_K + rank)
        else:
            raise BadInput(f"unknown fuse method {method!r}", field="method")
    norm = sum(fused.values()) or 1.0
    out = [{"label": k, "score": v / norm} for k, v in fused.items()]
    out.sort(key=lambda x: (-x["score"], x["label"]))
    return out
