"""Caption family: the tiny ViT-GPT2 recipe, plus tiny BLIP and GIT folders through the same
loader (architecture dispatch by ``AutoModelForImageTextToText``)."""

from __future__ import annotations

import io
import os
import shutil
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.caption import CaptionModel  # noqa: E402
from deployments.tiny.text import _tiny_tokenizer  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import BadInput  # noqa: E402
from fusion.serve.served import ServedModel  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process


def png(color: str, size: tuple[int, int] = (40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def noise_png(seed: int, size: tuple[int, int] = (48, 36)) -> bytes:
    import numpy as np

    arr = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG")
    return buf.getvalue()


def _cfg(source: str, **kw) -> ModelConfig:
    return ModelConfig(name="cap", family="caption", source=source, **kw)


@pytest.fixture(scope="session")
def caption_model_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("caption-models")


@pytest.fixture(scope="session")
def tiny(caption_model_dir) -> CaptionModel:
    return CaptionModel.load(_cfg("tiny:caption"), model_dir=caption_model_dir)


def call(model: CaptionModel, **inputs) -> dict:
    return model.run("caption", [model.prepare("caption", inputs)])[0]


def test_tiny_caption_is_a_deterministic_string(tiny, caption_model_dir):
    out = call(tiny, image=png("red"), max_new_tokens=6)
    assert set(out) == {"text"} and isinstance(out["text"], str) and out["text"].strip()
    again = CaptionModel.load(_cfg("tiny:caption"), model_dir=caption_model_dir)
    assert again.fingerprint == tiny.fingerprint
    assert call(again, image=png("red"), max_new_tokens=6) == out
    assert type(tiny.model).__name__ == "VisionEncoderDecoderModel"


def test_max_new_tokens_bounds_the_caption(tiny):
    short = call(tiny, image=noise_png(1), max_new_tokens=2)["text"]
    long = call(tiny, image=noise_png(1), max_new_tokens=10)["text"]
    assert len(tiny.tokenizer.tokenize(short)) <= 2 < len(tiny.tokenizer.tokenize(long))
    assert long.startswith(short)  # greedy decoding: the short caption is a prefix
    assert call(tiny, image=noise_png(1))["text"]  # default max_new_tokens


def test_batch_equals_items(tiny):
    reqs = [{"image": noise_png(1), "max_new_tokens": 5},
            {"image": png("blue", (64, 64)), "max_new_tokens": 8},
            {"image": noise_png(2), "max_new_tokens": 5}]
    items = [tiny.prepare("caption", r) for r in reqs]
    batch = tiny.run("caption", items)
    assert batch == [tiny.run("caption", [it])[0] for it in items]


@pytest.mark.parametrize(("inputs", "field"), [
    ({"image": b"not an image"}, "image"),
    ({"image": b""}, "image"),
    ({"image": "a string"}, "image"),
    ({}, "image"),
    ({"image": png("red"), "max_new_tokens": 0}, "max_new_tokens"),
    ({"image": png("red"), "max_new_tokens": 100_000}, "max_new_tokens"),
    ({"image": png("red"), "max_new_tokens": "five"}, "max_new_tokens"),
])
def test_bad_input_names_the_field(tiny, inputs, field):
    with pytest.raises(BadInput) as err:
        tiny.prepare("caption", inputs)
    assert err.value.field == field


def test_truncated_image_is_bad_input(tiny):
    with pytest.raises(BadInput) as err:
        tiny.prepare("caption", {"image": noise_png(3)[:200]})
    assert err.value.field == "image"


def test_wrong_task(tiny):
    for call_ in (lambda: tiny.prepare("embed", {"text": "x"}),
                  lambda: tiny.run("zero_shot", [{}])):
        with pytest.raises(BadInput) as err:
            call_()
        assert err.value.field == "task"


def test_fingerprint_changes_with_weights(tiny, tmp_path):
    import torch
    from transformers import VisionEncoderDecoderModel

    folder = tmp_path / "copy"
    shutil.copytree(tiny.resolved.location, folder)
    first = CaptionModel.load(_cfg(f"path:{folder}"))
    assert call(first, image=png("red"), max_new_tokens=4) == \
        call(tiny, image=png("red"), max_new_tokens=4)
    model = VisionEncoderDecoderModel.from_pretrained(folder)
    with torch.no_grad():
        model.decoder.lm_head.weight.mul_(-1)
    model.save_pretrained(folder)
    assert CaptionModel.load(_cfg(f"path:{folder}")).fingerprint != first.fingerprint


def test_int8(caption_model_dir):
    q = CaptionModel.load(_cfg("tiny:caption", quantize="int8"), model_dir=caption_model_dir)
    assert isinstance(call(q, image=png("red"), max_new_tokens=4)["text"], str)


# -- other architectures through the same loader --------------------------------------------


def _build_blip(folder: Path) -> None:
    import torch
    from transformers import BlipConfig, BlipForConditionalGeneration, BlipImageProcessor

    vocab = _tiny_tokenizer(folder)
    BlipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}
    cfg = BlipConfig(
        text_config={**small, "vocab_size": vocab, "encoder_hidden_size": 32,
                     "bos_token_id": 2, "sep_token_id": 3, "eos_token_id": 3,
                     "pad_token_id": 0, "max_position_embeddings": 64},
        vision_config={**small, "image_size": 32, "patch_size": 8}, projection_dim=32)
    torch.manual_seed(0)
    BlipForConditionalGeneration(cfg).save_pretrained(folder)


def _build_git(folder: Path) -> None:
    import torch
    from transformers import CLIPImageProcessor, GitConfig, GitForCausalLM

    vocab = _tiny_tokenizer(folder)
    CLIPImageProcessor(size={"shortest_edge": 32},
                       crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    small = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
             "intermediate_size": 64}
    cfg = GitConfig(vision_config={**small, "image_size": 32, "patch_size": 8}, **small,
                    vocab_size=vocab, max_position_embeddings=64, bos_token_id=2,
                    eos_token_id=3, pad_token_id=0)
    torch.manual_seed(0)
    GitForCausalLM(cfg).save_pretrained(folder)


@pytest.mark.parametrize(("builder", "arch"), [(_build_blip, "BlipForConditionalGeneration"),
                                               (_build_git, "GitForCausalLM")])
def test_other_architectures(tmp_path, builder, arch):
    builder(tmp_path)
    model = CaptionModel.load(_cfg(f"path:{tmp_path}"))
    assert type(model.model).__name__ == arch
    items = [model.prepare("caption", {"image": img, "max_new_tokens": n})
             for img, n in [(noise_png(1), 4), (png("green"), 6)]]
    batch = model.run("caption", items)
    assert all(isinstance(out["text"], str) for out in batch)
    assert batch == [model.run("caption", [it])[0] for it in items]


def test_family_declares_the_backend_class():
    from fusion.registry import family, import_object

    assert family("caption").model_class() is CaptionModel
    assert issubclass(import_object(family("caption").deployment).func_or_class, ServedModel)
