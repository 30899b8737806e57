"""Learned fusion: per-source calibration and fusion weights fitted from labelled answers.

A *profile* turns the rankings a fuse step receives into one calibrated distribution:

1. each source's scores are normalised over the labels offered (as ``weighted_mean`` does; a
   label the source did not score gets ``EPS``), and **calibrated** by temperature scaling
   (Guo et al. 2017): ``q_s = softmax(log p_s / T_s)``, ``T_s`` fitted to that source alone;
2. the calibrated sources are **stacked** by a conditional logit (a multinomial logistic
   regression whose coefficients are shared across labels, so any label set works):
   ``P(label) = softmax_label(sum_s w_s · log q_s(label) + b_label)``, with ``w_s >= 0``, a
   bias ``b`` per label seen in training (0 for a label never seen: a class-prior correction
   where the sources are systematically off) and an L2 penalty on both. A weight of 1 on one
   source and 0 elsewhere reproduces that calibrated source; an uninformative source gets a
   weight near 0 instead of the half a hand-written 0.5/0.5 gives.

Why not scikit-learn's ``LogisticRegression``: it fits one coefficient per class and feature,
which needs a fixed label set; a fuse step's labels are the request's, so the coefficients
must be per *source*. The objective is convex and small (one weight per source), so SciPy's
L-BFGS-B with bounds solves it exactly in milliseconds.

Evaluation is on a held-out split (chosen by a hash of the request id, so a refit on the same
data splits the same way): accuracy, log-loss and expected calibration error (10 equal-width
bins of top-1 confidence) for each source alone, the hand-written fusion and the learned one.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fusion.errors import BadInput
from fusion.pipeline.fuse import agreement, fuse_explained

EPS = 1e-6
ECE_BINS = 10
MIN_LABELS = 20  # fewer labelled answers cannot give both a train and a held-out split


@dataclass(frozen=True)
class Example:
    """One recorded fused answer with its feedback label: what fitting and evaluation read."""

    request_id: str
    sources: list[str]
    rankings: list[list[dict] | None]
    labels: list[str]  # the label set offered (the union of the sources' labels)
    truth: str
    weights: list[float] | None = None  # the hand-written fusion's, as the step ran
    method: str = "weighted_mean"
    weight: float = 1.0  # the feedback's weight (sample weight)


def offered_labels(rankings: Sequence[list[dict] | None]) -> list[str]:
    """The labels of a fused answer: every label any source scored, first-seen order."""
    seen: dict[str, None] = {}
    for ranking in rankings:
        for item in ranking or ():
            seen.setdefault(str(item["label"]), None)
    return list(seen)


def log_probs(ranking: list[dict] | None, labels: list[str]) -> np.ndarray:
    """log of a source's scores normalised over ``labels`` (missing → EPS; no ranking →
    uniform, so a skipped source says nothing)."""
    if not ranking:
        return np.full(len(labels), -math.log(len(labels)))
    scores = {str(x["label"]): max(0.0, float(x["score"])) for x in ranking}
    p = np.array([scores.get(label, 0.0) for label in labels], dtype=np.float64)
    p = p / p.sum() if p.sum() > 0 else np.full(len(labels), 1 / len(labels))
    p = np.maximum(p, EPS)
    return np.log(p / p.sum())


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max()
    return z - math.log(float(np.exp(z).sum()))


def features(example: Example | Any, sources: list[str]) -> np.ndarray:
    """(labels × sources) matrix of log-normalised scores, in the profile's source order."""
    by_name = dict(zip(example.sources, example.rankings, strict=True))
    return np.stack([log_probs(by_name.get(s), example.labels) for s in sources], axis=1)


def fit_temperature(logps: list[np.ndarray], truth: list[int], sample: np.ndarray) -> float:
    """The temperature minimising one source's weighted negative log-likelihood."""
    from scipy.optimize import minimize_scalar

    def nll(log_t: float) -> float:
        t = math.exp(log_t)
        return float(sum(-w * _log_softmax(lp / t)[y]
                         for lp, y, w in zip(logps, truth, sample, strict=True)))

    res = minimize_scalar(nll, bounds=(math.log(0.01), math.log(100.0)), method="bounded")
    return float(math.exp(res.x))


def calibrated(x: np.ndarray, temperatures: Sequence[float]) -> np.ndarray:
    """Each source's column turned into calibrated log-probabilities."""
    cols = [_log_softmax(x[:, s] / temperatures[s]) for s in range(x.shape[1])]
    return np.stack(cols, axis=1)


def with_biases(x: np.ndarray, labels: list[str], known: list[str]) -> np.ndarray:
    """The source columns, then one indicator column per known label (its bias's feature)."""
    onehot = np.zeros((len(labels), len(known)))
    for i, label in enumerate(labels):
        if label in known:
            onehot[i, known.index(label)] = 1.0
    return np.concatenate([x, onehot], axis=1)


def fit_weights(xs: list[np.ndarray], truth: list[int], sample: np.ndarray,
                l2: float = 1e-3, n_sources: int | None = None) -> np.ndarray:
    """Conditional-logit coefficients over the columns of ``xs``: the first ``n_sources``
    (the calibrated sources) non-negative, the rest (label biases) free."""
    from scipy.optimize import minimize

    n_cols = xs[0].shape[1]
    n_sources = n_cols if n_sources is None else n_sources
    total = float(sample.sum())

    def loss(w: np.ndarray) -> tuple[float, np.ndarray]:
        value, grad = 0.0, np.zeros(n_cols)
        for x, y, sw in zip(xs, truth, sample, strict=True):
            logp = _log_softmax(x @ w)
            p = np.exp(logp)
            value -= sw * logp[y]
            grad -= sw * (x[y] - p @ x)
        value, grad = value / total, grad / total
        return value + l2 * float(w @ w), grad + 2 * l2 * w

    start = np.concatenate([np.full(n_sources, 1.0 / n_sources), np.zeros(n_cols - n_sources)])
    res = minimize(loss, start, jac=True, method="L-BFGS-B",
                   bounds=[(0.0, None)] * n_sources + [(None, None)] * (n_cols - n_sources))
    return np.asarray(res.x, dtype=np.float64)


def predict(params: dict[str, Any], rankings: Sequence[list[dict] | None],
            names: Sequence[str]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(labels, probabilities, per-source logit terms) of a profile on one fused answer."""
    labels = offered_labels(rankings)
    example = Example("", list(names), list(rankings), labels, "")
    x = calibrated(features(example, params["sources"]), params["temperatures"])
    terms = x * np.asarray(params["weights"])
    biases = params.get("biases") or {}
    bias = np.array([float(biases.get(label, 0.0)) for label in labels])
    return labels, np.exp(_log_softmax(terms.sum(axis=1) + bias)), terms


def fuse_with_profile(profile_id: str, params: dict[str, Any],
                      rankings: Sequence[list[dict] | None], names: Sequence[str]
                      ) -> tuple[list[dict], dict[str, Any]]:
    """The fused ranking under a profile, and its explanation (naming the profile, its
    weights and temperatures, and each source's logit term per label)."""
    unknown = sorted(set(names) - set(params["sources"]))
    if unknown:
        raise BadInput(f"fusion profile {profile_id} was fitted on sources "
                       f"{params['sources']}, not {unknown}", field="profile")
    labels, probs, terms = predict(params, rankings, names)
    order = sorted(range(len(labels)), key=lambda i: (-probs[i], labels[i]))
    fused = [{"label": labels[i], "score": float(probs[i])} for i in order]
    present = [(n, r) for n, r in zip(names, rankings, strict=True) if r]
    ranks = {n: {x["label"]: k for k, x in enumerate(
        sorted(r, key=lambda x: -float(x["score"])), start=1)} for n, r in present}
    column = {s: j for j, s in enumerate(params["sources"])}
    explanation = {
        "method": "profile", "sources": list(names),
        "profile": {"id": profile_id,
                    "weights": dict(zip(params["sources"], params["weights"], strict=True)),
                    "temperatures": dict(zip(params["sources"], params["temperatures"],
                                             strict=True))},
        "weights": [float(params["weights"][column[n]]) for n in names],
        "biases": dict(params.get("biases") or {}),
        # per label, each source's term of the logit (w_s · log q_s): the same numbers under
        # ``contributions`` (what explanation readers show per source), which for a profile
        # add up to the label's logit (less its bias), not to its score
        "labels": [{"label": labels[i], "score": float(probs[i]),
                    "logits": {n: float(terms[i, column[n]]) for n in names},
                    "contributions": {n: float(terms[i, column[n]]) for n in names},
                    "ranks": {n: ranks.get(n, {}).get(labels[i]) for n in names}}
                   for i in order],
        "agreement": agreement([r for _, r in present], [n for n, _ in present])}
    return fused, explanation


def learned(params: dict[str, Any], example: Example) -> np.ndarray:
    """A profile's distribution over ``example.labels`` (in that order)."""
    labels, probs, _ = predict(params, example.rankings, example.sources)
    by_label = dict(zip(labels, probs, strict=True))
    p = np.maximum(np.array([by_label.get(label, 0.0) for label in example.labels]), EPS)
    return p / p.sum()


def handwritten(example: Example) -> np.ndarray:
    """The hand-written fusion's distribution over ``example.labels`` (as the step ran it)."""
    fused, _ = fuse_explained(list(example.rankings), example.weights, example.method,
                              list(example.sources))
    scores = {x["label"]: x["score"] for x in fused}
    p = np.maximum(np.array([scores.get(label, 0.0) for label in example.labels]), EPS)
    return p / p.sum()


def metrics(probs: list[np.ndarray], truth: list[int], sample: np.ndarray) -> dict[str, float]:
    """Accuracy, log-loss and expected calibration error (top-1, 10 bins), sample-weighted."""
    total = float(sample.sum())
    conf = np.array([float(p.max()) for p in probs])
    hit = np.array([float(int(np.argmax(p)) == y) for p, y in zip(probs, truth, strict=True)])
    nll = np.array([-math.log(max(float(p[y]), EPS)) for p, y in zip(probs, truth,
                                                                        strict=True)])
    bins = np.minimum((conf * ECE_BINS).astype(int), ECE_BINS - 1)
    ece = 0.0
    for b in range(ECE_BINS):
        m = bins == b
        if m.any():
            w = sample[m]
            ece += float(w.sum()) / total * abs(float((hit[m] * w).sum() / w.sum()) -
                                                float((conf[m] * w).sum() / w.sum()))
    return {"accuracy": float((hit * sample).sum() / total),
            "log_loss": float((nll * sample).sum() / total), "ece": ece, "n": len(probs)}


def split(examples: list[Example], test_fraction: float) -> tuple[list[Example],
                                                                 list[Example]]:
    """Train / held-out by a hash of the request id: stable across refits and replicas."""
    def bucket(e: Example) -> float:
        return int(hashlib.sha256(e.request_id.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    test = [e for e in examples if bucket(e) < test_fraction]
    train = [e for e in examples if bucket(e) >= test_fraction]
    return train, test


def check_enough(examples: list[Example], min_labels: int) -> None:
    """422 with how many labels are needed, or when the labels hold one class only."""
    if len(examples) < min_labels:
        raise BadInput(f"fitting needs at least {min_labels} labelled answers of this fuse "
                       f"step; it has {len(examples)} (send {min_labels - len(examples)} more "
                       "with POST /v1/feedback)", field="feedback")
    classes = {e.truth for e in examples}
    if len(classes) < 2:
        raise BadInput(f"fitting needs feedback labels of at least 2 classes; every label is "
                       f"{next(iter(classes))!r}", field="feedback.label")


def fit(examples: list[Example], *, test_fraction: float = 0.3, l2: float = 1e-3,
        min_labels: int = MIN_LABELS) -> tuple[dict[str, Any], dict[str, Any]]:
    """(profile params, evaluation) from labelled answers of one fuse step."""
    check_enough(examples, min_labels)
    sources = list(dict.fromkeys(s for e in examples for s in e.sources))
    train, test = split(examples, test_fraction)
    if len(test) < 2 or len({e.truth for e in train}) < 2:
        train, test = examples, examples  # tiny sets: the split above left a side empty
        held_out = False
    else:
        held_out = True
    xs = [features(e, sources) for e in train]
    ys = [e.labels.index(e.truth) for e in train]
    sw = np.array([e.weight for e in train], dtype=np.float64)
    temps = [fit_temperature([x[:, s] for x in xs], ys, sw) for s in range(len(sources))]
    known = sorted({e.truth for e in train})
    coef = fit_weights([with_biases(calibrated(x, temps), e.labels, known)
                        for x, e in zip(xs, train, strict=True)], ys, sw, l2, len(sources))
    weights = coef[:len(sources)]
    params = {"sources": sources, "temperatures": temps, "weights": weights.tolist(),
              "biases": dict(zip(known, coef[len(sources):].tolist(), strict=True)),
              "l2": l2, "kind": "temperature+conditional_logit"}
    tx = [features(e, sources) for e in test]
    ty = [e.labels.index(e.truth) for e in test]
    tw = np.array([e.weight for e in test], dtype=np.float64)
    evaluation: dict[str, Any] = {
        "n_train": len(train), "n_test": len(test), "held_out": held_out,
        "sources": {s: metrics([np.exp(_log_softmax(x[:, i])) for x in tx], ty, tw)
                    for i, s in enumerate(sources)},
        "sources_calibrated": {s: metrics([np.exp(_log_softmax(x[:, i] / temps[i]))
                                           for x in tx], ty, tw)
                               for i, s in enumerate(sources)},
        "handwritten": metrics([handwritten(e) for e in test], ty, tw),
        "learned": metrics([learned(params, e) for e in test], ty, tw)}
    return params, evaluation
