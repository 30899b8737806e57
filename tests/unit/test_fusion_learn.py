"""Learned fusion's fitting (fusion.pipeline.learn) on synthetic scores whose right answer is
known: it recovers the calibration and weights, evaluates on held-out answers, and refuses
what it cannot fit with 422 naming the field."""

from __future__ import annotations

import numpy as np
import pytest

from fusion.errors import BadInput
from fusion.pipeline.learn import Example, fit, fuse_with_profile, metrics

LABELS = ["circle", "square", "triangle", "cross"]


def ranking(p: np.ndarray) -> list[dict]:
    return [{"label": label, "score": float(s)} for label, s in zip(LABELS, p, strict=True)]


def synthetic(n: int, seed: int = 0, sharpness: float = 2.0) -> list[Example]:
    """Source ``a`` is informative but under-confident (the truth is drawn from
    softmax(sharpness · log p_a), so its right temperature is 1/sharpness); ``b`` is noise."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        pa = np.exp(rng.normal(0, 1.0, 4))
        pa /= pa.sum()
        pb = np.exp(rng.normal(0, 1.0, 4))
        pb /= pb.sum()
        truth_p = pa ** sharpness / (pa ** sharpness).sum()
        truth = LABELS[int(rng.choice(4, p=truth_p))]
        out.append(Example(f"r{i}", ["a", "b"], [ranking(pa), ranking(pb)], LABELS, truth,
                           [0.5, 0.5]))
    return out


def test_fit_recovers_the_known_temperature_and_weights():
    params, evaluation = fit(synthetic(3000))
    temp_a, temp_b = params["temperatures"]
    w_a, w_b = params["weights"]
    assert temp_a == pytest.approx(0.5, rel=0.15)  # 1 / sharpness
    assert temp_b > 5  # noise: calibrated towards uniform
    assert w_a == pytest.approx(1.0, abs=0.15)  # the calibrated a is already right
    assert w_b < 0.1  # the noise source is dropped
    # effective coefficient on log p_a: w_a / T_a = sharpness
    assert w_a / temp_a == pytest.approx(2.0, rel=0.15)
    learned, hand = evaluation["learned"], evaluation["handwritten"]
    assert evaluation["held_out"] and evaluation["n_test"] > 600
    assert learned["accuracy"] >= evaluation["sources"]["a"]["accuracy"] - 0.02
    assert learned["accuracy"] > hand["accuracy"]
    assert learned["log_loss"] < hand["log_loss"]
    assert learned["ece"] < evaluation["sources"]["a"]["ece"]


def test_profile_answers_are_ranked_distributions_that_name_the_profile():
    params, _ = fit(synthetic(200, seed=1))
    ex = synthetic(1, seed=9)[0]
    fused, explanation = fuse_with_profile("p1", params, ex.rankings, ex.sources)
    assert sum(x["score"] for x in fused) == pytest.approx(1.0)
    assert [x["score"] for x in fused] == sorted((x["score"] for x in fused), reverse=True)
    assert explanation["profile"]["id"] == "p1"
    assert set(explanation["profile"]["weights"]) == {"a", "b"}
    assert {x["label"] for x in explanation["labels"]} == set(LABELS)
    # readable by the SDK's explanation table like a hand-written fusion's
    assert {"method", "sources", "labels", "agreement"} <= set(explanation)
    assert explanation["agreement"]["top1"]["a"] == max(ex.rankings[0],
                                                        key=lambda x: x["score"])["label"]
    for row in explanation["labels"]:
        assert set(row["contributions"]) == set(row["ranks"]) == {"a", "b"}


def test_too_few_labels_and_one_class_are_refused_naming_the_field():
    with pytest.raises(BadInput, match="at least 20 .* it has 5") as err:
        fit(synthetic(5))
    assert err.value.field == "feedback"
    one_class = [Example(e.request_id, e.sources, e.rankings, e.labels, "circle", e.weights)
                 for e in synthetic(40)]
    with pytest.raises(BadInput, match="2 classes") as err:
        fit(one_class)
    assert err.value.field == "feedback.label"


def test_metrics_on_a_known_case():
    probs = [np.array([0.9, 0.1]), np.array([0.6, 0.4]), np.array([0.2, 0.8])]
    m = metrics(probs, [0, 1, 1], np.ones(3))
    assert m["accuracy"] == pytest.approx(2 / 3)
    assert m["log_loss"] == pytest.approx(-(np.log(0.9) + np.log(0.4) + np.log(0.8)) / 3)
    # bins: 0.9 (hit), 0.6 (miss), 0.8 (hit) → each alone: |1-.9| + |0-.6| + |1-.8|, over 3
    assert m["ece"] == pytest.approx((0.1 + 0.6 + 0.2) / 3)
