"""CLIP family: the tiny open_clip recipe, saved in the hub layout and loaded back."""

from __future__ import annotations

import io
import json
import math
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.clip import ClipModel  # noqa: E402
from deployments.sources import resolve  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import BadInput, SpecError  # noqa: E402
from fusion.serve.served import ServedModel  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process


def png(color: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def _cfg(source: str, **kw) -> ModelConfig:
    return ModelConfig(name="clip", family="clip", source=source, **kw)


@pytest.fixture(scope="session")
def clip_model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("clip-models")


@pytest.fixture(scope="session")
def tiny(clip_model_dir) -> ClipModel:
    return ClipModel.load(_cfg("tiny:clip"), model_dir=clip_model_dir)


def call(model: ClipModel, task: str, **inputs) -> dict:
    return model.run(task, [model.prepare(task, inputs)])[0]


def assert_unit(vec: list[float], dim: int) -> None:
    assert len(vec) == dim and all(isinstance(x, float) for x in vec)
    assert math.isclose(sum(x * x for x in vec), 1.0, abs_tol=1e-5)


def close(a: list[float], b: list[float], tol: float = 1e-5) -> bool:
    return max(abs(x - y) for x, y in zip(a, b, strict=True)) < tol


def test_folder_layout(tiny):
    folder = Path(tiny.resolved.location)
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    assert set(cfg) == {"model_cfg", "preprocess_cfg"}
    assert (folder / "open_clip_model.safetensors").is_file()
    assert sum(p.stat().st_size for p in folder.iterdir()) < 10 << 20


def test_embeddings(tiny):
    out = call(tiny, "embed_image", image=png("red"))
    assert set(out) == {"embedding"}
    assert_unit(out["embedding"], 32)
    out = call(tiny, "embed_text", text="a photo of a cat")
    assert set(out) == {"embedding"}
    assert_unit(out["embedding"], 32)


def test_zero_shot(tiny):
    labels = ["cat", "dog", "red car"]
    out = call(tiny, "zero_shot", image=png("red"), labels=labels)
    assert set(out) == {"labels"}
    scores = [x["score"] for x in out["labels"]]
    assert {x["label"] for x in out["labels"]} == set(labels)
    assert scores == sorted(scores, reverse=True)
    assert math.isclose(sum(scores), 1.0, abs_tol=1e-5)


def test_zero_shot_matches_embeddings(tiny):
    """zero_shot = softmax(logit_scale * cos(image, embed_text(template with label)))."""
    img = call(tiny, "embed_image", image=png("blue"))["embedding"]
    labels = ["cat", "dog"]
    txt = [call(tiny, "embed_text", text=f"a drawing of a {x}")["embedding"] for x in labels]
    logits = [tiny.logit_scale * sum(a * b for a, b in zip(img, t, strict=True)) for t in txt]
    top = max(logits)
    expect = [math.exp(v - top) for v in logits]
    expect = {x: e / sum(expect) for x, e in zip(labels, expect, strict=True)}
    out = call(tiny, "zero_shot", image=png("blue"), labels=labels,
               template="a drawing of a {}")
    for x in out["labels"]:
        assert math.isclose(x["score"], expect[x["label"]], abs_tol=1e-4)


def test_deterministic_across_loads(tiny, clip_model_dir):
    again = ClipModel.load(_cfg("tiny:clip"), model_dir=clip_model_dir)
    assert again.fingerprint == tiny.fingerprint
    assert call(again, "embed_image", image=png("red")) == call(tiny, "embed_image",
                                                               image=png("red"))


def test_batch_equals_items(tiny):
    images = [png("red"), png("green", (100, 20)), png("white", (8, 8))]
    for task, reqs in [
        ("embed_image", [{"image": i} for i in images]),
        ("embed_text", [{"text": t} for t in ["a cat", "a much longer caption of a dog", "x"]]),
    ]:
        items = [tiny.prepare(task, r) for r in reqs]
        for out, item in zip(tiny.run(task, items), items, strict=True):
            assert close(out["embedding"], tiny.run(task, [item])[0]["embedding"])
    reqs = [{"image": images[0], "labels": ["cat", "dog"]},
            {"image": images[1], "labels": ["dog", "car", "tree"], "template": "{}"},
            {"image": images[2], "labels": ["cat", "tree"]}]
    items = [tiny.prepare("zero_shot", r) for r in reqs]
    for out, item in zip(tiny.run("zero_shot", items), items, strict=True):
        single = tiny.run("zero_shot", [item])[0]
        assert {x["label"]: round(x["score"], 4) for x in out["labels"]} == \
            {x["label"]: round(x["score"], 4) for x in single["labels"]}


@pytest.mark.parametrize(("task", "inputs", "field"), [
    ("embed_image", {"image": b"\x89PNG garbage"}, "image"),
    ("embed_image", {"image": b""}, "image"),
    ("embed_image", {"text": "x"}, "text"),
    ("embed_text", {"text": ""}, "text"),
    ("embed_text", {"text": None}, "text"),
    ("zero_shot", {"image": png("red"), "labels": []}, "labels"),
    ("zero_shot", {"image": png("red"), "labels": ["a", "a"]}, "labels[1]"),
    ("zero_shot", {"image": png("red"), "labels": ["a"], "template": "photo"}, "template"),
    ("zero_shot", {"image": b"nope", "labels": ["a"]}, "image"),
    ("classify", {"text": "x"}, "task"),
])
def test_bad_input_names_the_field(tiny, task, inputs, field):
    with pytest.raises(BadInput) as err:
        tiny.prepare(task, inputs)
    assert err.value.field == field


def test_wrong_task_in_run(tiny):
    with pytest.raises(BadInput) as err:
        tiny.run("caption", [{}])
    assert err.value.field == "task"


def test_int8(clip_model_dir, tiny):
    q = ClipModel.load(_cfg("tiny:clip", quantize="int8"), model_dir=clip_model_dir)
    vec = call(q, "embed_text", text="a cat")["embedding"]
    assert_unit(vec, 32)
    ref = call(tiny, "embed_text", text="a cat")["embedding"]
    assert sum(a * b for a, b in zip(vec, ref, strict=True)) > 0.9
    assert_unit(call(q, "embed_image", image=png("red"))["embedding"], 32)


def test_fingerprint_changes_with_weights(tiny, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = tmp_path / "copy"
    shutil.copytree(tiny.resolved.location, folder)
    first = ClipModel.load(_cfg(f"path:{folder}"))
    assert call(first, "embed_text", text="a cat") == call(tiny, "embed_text", text="a cat")
    weights = folder / "open_clip_model.safetensors"
    state = load_file(weights)
    state["text_projection"] = -state["text_projection"]
    save_file(state, weights)
    second = ClipModel.load(_cfg(f"path:{folder}"))
    assert second.fingerprint != first.fingerprint
    assert close(call(second, "embed_text", text="a cat")["embedding"],
                 [-x for x in call(first, "embed_text", text="a cat")["embedding"]])


def test_folder_without_weights_is_refused(tiny, tmp_path):
    shutil.copy(Path(tiny.resolved.location) / "open_clip_config.json", tmp_path)
    with pytest.raises(SpecError, match="no weights"):
        ClipModel.load(_cfg(f"path:{tmp_path}"))


def test_hub_source_maps_to_open_clip_hf_hub():
    cfg = _cfg("hub:timm/vit_base_patch32_clip_224.openai")
    model = ClipModel(cfg, resolve(cfg.source))
    assert model._model_name() == "hf-hub:timm/vit_base_patch32_clip_224.openai"


def test_family_declares_the_backend_class():
    from fusion.registry import family, import_object

    assert family("clip").model_class() is ClipModel
    assert issubclass(import_object(family("clip").deployment).func_or_class, ServedModel)
