"""Fusion explanations: contributions add up to the fused scores (both methods), ranks per
source, and agreement values on hand-made rankings with known answers."""

from __future__ import annotations

import pytest

from fusion.core.executor import Executor
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput
from fusion.pipeline.fuse import RRF_K, agreement, fuse_explained, fuse_labels, kendall_tau
from fusion.pipeline.spec import load_spec
from fusion.registry import model_tasks
from tests.fakes import FakeModels, png


def r(*pairs) -> list[dict]:
    return [{"label": label, "score": score} for label, score in pairs]


A = r(("cat", 0.6), ("dog", 0.3), ("car", 0.1))
B = r(("dog", 5.0), ("cat", 3.0), ("bus", 2.0))  # another scale; no "car", a "bus"


@pytest.mark.parametrize("method", ["weighted_mean", "rank"])
def test_contributions_sum_to_the_fused_scores(method):
    fused, exp = fuse_explained([A, B], [0.25, 0.75], method, ["clip", "cnn"])
    assert [x["label"] for x in exp["labels"]] == [x["label"] for x in fused]
    for row, f in zip(exp["labels"], fused, strict=True):
        assert sum(row["contributions"].values()) == pytest.approx(f["score"], abs=1e-12)
        assert row["score"] == f["score"]
    assert sum(x["score"] for x in fused) == pytest.approx(1)
    assert fused == fuse_labels([A, B], [0.25, 0.75], method)  # same answer as before
    car = next(x for x in exp["labels"] if x["label"] == "car")
    assert car["contributions"]["cnn"] == 0 and car["ranks"] == {"clip": 3, "cnn": None}
    assert exp["weights"] == [0.25, 0.75] and exp["sources"] == ["clip", "cnn"]


def test_weighted_mean_contribution_is_weight_times_normalised_score():
    _, exp = fuse_explained([A, B], [0.25, 0.75], "weighted_mean", ["clip", "cnn"])
    dog = next(x for x in exp["labels"] if x["label"] == "dog")
    assert dog["contributions"] == pytest.approx({"clip": 0.25 * 0.3, "cnn": 0.75 * 0.5})
    assert dog["ranks"] == {"clip": 2, "cnn": 1}


def test_rank_contribution_is_the_reciprocal_rank_term():
    _, exp = fuse_explained([A, B], None, "rank", ["clip", "cnn"])
    terms = {"cat": (1 / (RRF_K + 1), 1 / (RRF_K + 2)), "dog": (1 / (RRF_K + 2), 1 / (RRF_K + 1)),
             "car": (1 / (RRF_K + 3), 0), "bus": (0, 1 / (RRF_K + 3))}
    norm = sum(a + b for a, b in terms.values()) * 0.5  # equal weights 0.5 each
    for row in exp["labels"]:
        a, b = terms[row["label"]]
        assert row["contributions"]["clip"] == pytest.approx(0.5 * a / norm)
        assert row["contributions"]["cnn"] == pytest.approx(0.5 * b / norm)


def test_kendall_tau_on_hand_made_rankings():
    same = {"a": 4, "b": 3, "c": 2, "d": 1}
    assert kendall_tau(same, same) == pytest.approx(1)
    assert kendall_tau(same, {"a": 1, "b": 2, "c": 3, "d": 4}) == pytest.approx(-1)
    # one adjacent swap among 4 labels: 5 concordant, 1 discordant pair → 4/6
    assert kendall_tau(same, {"a": 4, "b": 2, "c": 3, "d": 1}) == pytest.approx(2 / 3)
    # only the shared labels count: x and y are ignored
    assert kendall_tau({**same, "x": 9}, {"a": 4, "b": 3, "c": 1, "d": 2, "y": 0}) == \
        pytest.approx(2 / 3)
    assert kendall_tau({"a": 1}, {"a": 2, "b": 1}) is None  # fewer than two shared labels


def test_agreement_top1_and_pairs():
    same = r(("a", 0.5), ("b", 0.3), ("c", 0.2))
    other = r(("b", 0.5), ("a", 0.3), ("c", 0.2))
    out = agreement([same, same, other], ["x", "y", "z"])
    assert out["top1"] == {"x": "a", "y": "a", "z": "b"}
    assert out["top1_agreement"] == pytest.approx(1 / 3)  # x–y agree; x–z, y–z do not
    pair = {tuple(p["sources"]): p for p in out["pairs"]}
    assert pair[("x", "y")]["kendall_tau"] == pytest.approx(1)
    assert pair[("x", "z")]["kendall_tau"] == pytest.approx(1 / 3)  # 2 concordant, 1 not
    assert out["kendall_tau"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert agreement([same], ["x"])["top1_agreement"] is None


def test_a_skipped_source_drops_its_weight():
    fused, exp = fuse_explained([A, None], [0.3, 0.7], "weighted_mean", ["clip", "cnn"])
    assert exp["sources"] == ["clip"] and exp["weights"] == [1.0]
    assert fused == fuse_labels([A])
    with pytest.raises(BadInput):
        fuse_explained([None, []], None)


MODELS = {"clip": model_tasks("clip"), "text": model_tasks("text"),
          "captioner": model_tasks("caption")}


async def test_pipeline_explains_when_asked_naming_the_steps():
    raw = {"name": "f", "inputs": {"image": "image", "labels": "list[text]"},
           "steps": {"clip": {"model": "clip", "task": "zero_shot",
                              "with": {"image": "$inputs.image", "labels": "$inputs.labels"}},
                     "words": {"model": "text", "task": "zero_shot",
                               "with": {"text": "a cat", "labels": "$inputs.labels"}},
                     "fused": {"fuse": {"method": "rank", "explain": True},
                               "with": {"labels": ["$steps.clip.labels",
                                                   "$steps.words.labels"]}}},
           "outputs": {"labels": "$steps.fused.labels", "why": "$steps.fused.explanation"}}
    fake = FakeModels()

    async def fingerprint(model: str) -> str:
        return (await fake.info(model))["fingerprint"]

    executor = Executor(fake, MODELS, fingerprint)
    out = (await executor.run(load_spec(raw, "t.yaml", MODELS),
                              {"image": png(), "labels": ["cat", "dog"]}, CachePolicy())).outputs
    why = out["why"]
    assert why["sources"] == ["clip", "words"] and why["method"] == "rank"
    assert [x["label"] for x in why["labels"]] == [x["label"] for x in out["labels"]]
    raw["steps"]["fused"]["fuse"] = {"method": "rank"}  # not asked: no explanation
    out = (await executor.run(load_spec(raw, "t.yaml", MODELS),
                              {"image": png(), "labels": ["cat", "dog"]}, CachePolicy())).outputs
    assert out["why"] is None
