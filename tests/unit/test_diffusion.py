"""Diffusion family on a tiny random Stable Diffusion pipeline built offline."""

from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.diffusion import DiffusionModel  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import BadInput  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("diffusion-models")


@pytest.fixture(scope="module")
def diffusion(model_dir) -> DiffusionModel:
    config = ModelConfig(name="tiny-sd", family="diffusion", source="tiny:diffusion")
    return DiffusionModel.load(config, model_dir=model_dir)


def generate(model: DiffusionModel, progress=None, **inputs) -> bytes:
    item = model.prepare("generate", {"prompt": "a photo of a cat", **inputs})
    [out] = model.run("generate", [item], progress)
    assert set(out) == {"image"}
    return out["image"]


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG"
        return np.asarray(img.convert("RGB"))


def test_tiny_pipeline_is_a_saved_stable_diffusion(diffusion: DiffusionModel, model_dir) -> None:
    folder = model_dir / "tiny-diffusion"
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None]
    assert {"unet", "vae", "text_encoder", "tokenizer", "scheduler"} <= set(index)
    assert type(diffusion.pipe).__name__ == "StableDiffusionPipeline"
    assert diffusion.fingerprint.startswith("tiny:diffusion#")
    tokens = diffusion.pipe.tokenizer("a photo of a cat").input_ids
    assert diffusion.pipe.tokenizer.decode(tokens, skip_special_tokens=True).strip() == \
        "a photo of a cat"


def test_same_seed_same_bytes_other_seed_other_image(diffusion: DiffusionModel) -> None:
    a = generate(diffusion, seed=7)
    b = generate(diffusion, seed=7)
    c = generate(diffusion, seed=8)
    assert a == b
    assert not np.array_equal(pixels(a), pixels(c))
    assert pixels(a).std() > 1  # not a blank image


def test_prompt_changes_the_image(diffusion: DiffusionModel) -> None:
    a = generate(diffusion, seed=1, guidance=5.0)
    b = generate(diffusion, seed=1, guidance=5.0, prompt="a red house by the sea")
    c = generate(diffusion, seed=1, guidance=5.0, negative_prompt="blurry")
    assert a != b and a != c


def test_progress_once_per_step(diffusion: DiffusionModel) -> None:
    calls: list[tuple[int, int]] = []
    generate(diffusion, progress=lambda step, total: calls.append((step, total)), steps=5)
    assert calls == [(i, 5) for i in range(1, 6)]


def test_size_is_honoured(diffusion: DiffusionModel) -> None:
    img = pixels(generate(diffusion, width=96, height=32, steps=1))
    assert img.shape == (32, 96, 3)
    assert pixels(generate(diffusion, steps=1)).shape == (64, 64, 3)  # catalog default


@pytest.mark.parametrize(("field", "value"), [
    ("width", 65), ("width", 0), ("width", 4096), ("height", 12), ("steps", 0),
    ("steps", 101), ("guidance", -1.0), ("seed", -5), ("width", "wide"),
])
def test_bad_inputs_name_the_field(diffusion: DiffusionModel, field: str, value) -> None:
    with pytest.raises(BadInput) as err:
        diffusion.prepare("generate", {"prompt": "x", field: value})
    assert err.value.field == field


def test_missing_prompt(diffusion: DiffusionModel) -> None:
    with pytest.raises(BadInput) as err:
        diffusion.prepare("generate", {"steps": 2})
    assert err.value.field == "prompt"
