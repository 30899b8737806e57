"""Model fusion: combine the label rankings of several models into one, and say why.

Two methods, both insensitive to how each model scales its scores:
``weighted_mean`` normalises each model's scores to sum to 1 over the labels, then takes the
weighted mean (a label a model did not score counts 0 for it); ``rank`` is reciprocal rank
fusion (Cormack et al. 2009), which uses only the order each model gives, with k = 60.

``fuse_explained`` also returns the account of the result: for each fused label, each
source's contribution (its weighted normalised score, or its weighted reciprocal-rank term,
divided by the same normaliser as the fused score, so the contributions add up to the fused
score) and its rank in each source; and how far the sources agree: their top-1 labels and
Kendall's tau-b between each pair over the labels both scored.
"""

from __future__ import annotations

import math
from itertools import combinations
from typing import Any

from fusion.errors import BadInput

RRF_K = 60


def _ranks(ranking: list[dict]) -> dict[str, int]:
    """1-based rank of each label, best score first (ties keep the model's order)."""
    ordered = sorted(ranking, key=lambda x: -float(x["score"]))
    return {x["label"]: rank for rank, x in enumerate(ordered, start=1)}


def _terms(ranking: list[dict], method: str) -> dict[str, float]:
    """Each label's unweighted term from one source."""
    if method == "weighted_mean":
        total = sum(max(0.0, float(x["score"])) for x in ranking)
        return {x["label"]: max(0.0, float(x["score"])) / total if total > 0
                else 1 / len(ranking) for x in ranking}
    if method == "rank":
        return {label: 1 / (RRF_K + rank) for label, rank in _ranks(ranking).items()}
    raise BadInput(f"unknown fuse method {method!r}", field="method")


def fuse_explained(rankings: list[list[dict] | None], weights: list[float] | None = None,
                   method: str = "weighted_mean", names: list[str] | None = None
                   ) -> tuple[list[dict], dict[str, Any]]:
    """Fused ``[{label, score}]`` best first (scores sum to 1), and its explanation.

    A source whose ranking is empty or missing (a skipped step) contributes nothing; its
    weight, if weights were given for every source, is dropped with it.
    """
    names = names or [f"source{i}" for i in range(len(rankings))]
    if weights is not None and len(weights) == len(rankings):
        kept = [(n, r, w) for n, r, w in zip(names, rankings, weights, strict=True) if r]
    else:
        kept = [(n, r, None) for n, r in zip(names, rankings, strict=True) if r]
    if not kept:
        raise BadInput("fuse needs at least one non-empty ranking", field="labels")
    names, rankings = [k[0] for k in kept], [k[1] for k in kept]
    if weights is None:
        weights = [1.0] * len(rankings)
    elif kept[0][2] is not None:
        weights = [float(k[2]) for k in kept]
    if len(weights) != len(rankings) or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise BadInput(f"fuse: weights must be {len(rankings)} non-negative numbers with a "
                       "positive sum", field="weights")
    total_w = sum(weights)
    parts: dict[str, list[float]] = {}
    for i, (ranking, weight) in enumerate(zip(rankings, weights, strict=True)):
        for label, term in _terms(ranking, method).items():
            parts.setdefault(label, [0.0] * len(rankings))[i] += weight * term / total_w
    norm = sum(sum(p) for p in parts.values()) or 1.0
    fused = [{"label": k, "score": sum(p) / norm} for k, p in parts.items()]
    fused.sort(key=lambda x: (-x["score"], x["label"]))
    ranks = [_ranks(r) for r in rankings]
    explained = [{"label": x["label"], "score": x["score"],
                  "contributions": {n: parts[x["label"]][i] / norm
                                    for i, n in enumerate(names)},
                  "ranks": {n: ranks[i].get(x["label"]) for i, n in enumerate(names)}}
                 for x in fused]
    explanation = {"method": method, "sources": names,
                   "weights": [w / total_w for w in weights], "labels": explained,
                   "agreement": agreement(rankings, names)}
    return fused, explanation


def fuse_labels(rankings: list[list[dict]], weights: list[float] | None = None,
                method: str = "weighted_mean") -> list[dict]:
    """Fused ``[{label, score}]`` best first; scores sum to 1."""
    return fuse_explained(rankings, weights, method)[0]


def kendall_tau(a: dict[str, float], b: dict[str, float]) -> float | None:
    """Kendall's tau-b between two scorings over the labels both scored (None under 2, or
    when one scoring is constant over them)."""
    shared = [k for k in a if k in b]
    concordant = discordant = ties_a = ties_b = 0
    for x, y in combinations(shared, 2):
        da, db = a[x] - a[y], b[x] - b[y]
        if da == 0 and db == 0:
            continue
        if da == 0:
            ties_a += 1
        elif db == 0:
            ties_b += 1
        elif (da > 0) == (db > 0):
            concordant += 1
        else:
            discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else None


def agreement(rankings: list[list[dict]], names: list[str]) -> dict[str, Any]:
    """Top-1 label per source, and per pair of sources whether their top-1 agree and their
    Kendall tau over the shared labels; ``top1_agreement`` and ``kendall_tau`` average the
    pairs (None with a single source or no comparable pair)."""
    scores = [{x["label"]: float(x["score"]) for x in r} for r in rankings]
    top1 = {n: min(r, key=lambda x: (-float(x["score"]), r.index(x)))["label"]
            for n, r in zip(names, rankings, strict=True)}
    pairs = []
    for i, j in combinations(range(len(names)), 2):
        pairs.append({"sources": [names[i], names[j]],
                      "top1_agree": top1[names[i]] == top1[names[j]],
                      "shared_labels": sum(1 for k in scores[i] if k in scores[j]),
                      "kendall_tau": kendall_tau(scores[i], scores[j])})
    taus = [p["kendall_tau"] for p in pairs if p["kendall_tau"] is not None]
    return {"top1": top1,
            "top1_agreement": sum(p["top1_agree"] for p in pairs) / len(pairs) if pairs
            else None,
            "kendall_tau": sum(taus) / len(taus) if taus else None,
            "pairs": pairs}
