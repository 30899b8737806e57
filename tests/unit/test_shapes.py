"""``shape:`` models: hub architectures with random weights, built offline and loaded back.

Every shipped shape is checked to have the hub model's exact parameter count (built on the
meta device: no memory, no time), and every shape but SD-Turbo is built, loaded through its
family's loader (the code real weights take) and asked every task. SD-Turbo (1.3 B
parameters, 2.6 GB on disk, ~6 GB in memory in fp32) is too heavy to build on each CI run;
its configs and its tokenizer are checked here, and ``python ops/bench/shapes.py sd-turbo``
builds, loads and answers it (README, "Full-size models without the hub").

Each model is built once per session into a temporary folder and deleted, with the model,
when its class of tests ends, so memory and disk hold one shape at a time.
"""

from __future__ import annotations

import gc
import io
import json
import math
import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments import shape_models, sources  # noqa: E402
from deployments.audio import AudioModel  # noqa: E402
from deployments.caption import CaptionModel  # noqa: E402
from deployments.clip import ClipModel  # noqa: E402
from deployments.media import encode_wav  # noqa: E402
from deployments.shape_tokenizers import clip_tokenizer  # noqa: E402
from deployments.text import TextModel  # noqa: E402
from fusion.config import ModelConfig, ModelSource  # noqa: E402
from fusion.errors import SpecError  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process

# parameter counts of the hub models each shape stands for (unique tensors; BLIP's hub
# checkpoint also stores its tied LM head, which its model card counts: 247 M)
HUB_PARAMETERS = {
    "clip-vit-b-32": {"model": 151_277_313},
    "distilbert-sst2": {"model": 66_955_010},
    "ms-marco-minilm-l6": {"model": 22_713_601},
    "bart-large-mnli": {"model": 407_344_131},
    "blip-captioning-base": {"model": 223_971_644},
    "whisper-small": {"model": 241_734_912},
    "sd-turbo": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "qwen2.5-0.5b-instruct": {"model": 494_032_768},
}


def meta_modules(name: str) -> dict:
    """The shape's torch modules, on the meta device (shapes only, no storage)."""
    import open_clip
    import torch
    import transformers
    from diffusers import AutoencoderKL, UNet2DConditionModel

    spec = shape_models.load_spec(name)
    cfg = shape_models._config
    with torch.device("meta"):
        if spec["builder"] == "clip":
            return {"model": open_clip.CLIP(**open_clip.get_model_config(
                spec["open_clip_model"]))}
        if spec["builder"] == "sequence_classifier":
            return {"model": getattr(transformers, spec["architecture"])(
                cfg(spec["config"]["model_type"], spec["config"]))}
        if spec["builder"] == "blip_caption":
            return {"model": transformers.BlipForConditionalGeneration(
                cfg("blip", spec["config"]))}
        if spec["builder"] == "causal_lm":
            return {"model": getattr(transformers, spec["architecture"])(
                cfg(spec["config"]["model_type"], spec["config"]))}
        if spec["builder"] == "whisper":
            return {"model": transformers.WhisperForConditionalGeneration(
                cfg("whisper", spec["config"]))}
        return {"unet": UNet2DConditionModel.from_config(spec["unet"]),
                "vae": AutoencoderKL.from_config(spec["vae"]),
                "text_encoder": transformers.CLIPTextModel(
                    cfg("clip_text_model", spec["text_encoder"]))}


def test_every_shape_is_tested_and_has_the_hub_models_size():
    assert shape_models.shape_names() == sorted(HUB_PARAMETERS)
    for name, expected in HUB_PARAMETERS.items():
        counts = {k: sum(p.numel() for p in m.parameters())
                  for k, m in meta_modules(name).items()}
        assert counts == expected, name


def test_source_string_and_unknown_shape(tmp_path):
    src = ModelSource.model_validate("shape:clip-vit-b-32")
    assert (src.kind, src.ref, str(src)) == ("shape", "clip-vit-b-32", "shape:clip-vit-b-32")
    with pytest.raises(SpecError, match="unknown shape 'nope'.*clip-vit-b-32"):
        sources.build_shape("nope", tmp_path)
    with pytest.raises(SpecError, match="unknown shape"):
        sources.build_shape("../shapes/sd-turbo", tmp_path)


def test_edited_shape_config_builds_a_new_folder(tmp_path, monkeypatch):
    """A small DistilBERT through the real builder: the folder is keyed by the config."""
    spec = json.loads((shape_models.SHAPES_DIR / "distilbert-sst2.json").read_text())
    spec["config"].update(dim=32, hidden_dim=64, n_heads=2, n_layers=1, vocab_size=600)
    spec["tokenizer"]["vocab_size"] = 600
    shapes = tmp_path / "shapes"
    shapes.mkdir()
    (shapes / "mini.json").write_text(json.dumps(spec))
    monkeypatch.setattr(shape_models, "SHAPES_DIR", shapes)
    first = sources.build_shape("mini", tmp_path / "models")
    assert sources.build_shape("mini", tmp_path / "models") == first  # built once
    spec["config"]["n_layers"] = 2
    (shapes / "mini.json").write_text(json.dumps(spec))
    second = sources.build_shape("mini", tmp_path / "models")
    assert second != first and (second / ".complete").is_file()
    assert json.loads((second / "config.json").read_text())["n_layers"] == 2
    assert json.loads((second / "shape.json").read_text())["shape"] == "mini"


def test_sd_turbo_tokenizer_is_openai_clip():
    tok = clip_tokenizer(77, "!")
    assert len(tok) == 49408
    # OpenAI CLIP's ids for these words: the vocabulary is rebuilt from open_clip's merges
    assert tok("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert tok.pad_token_id == 0


# -- built and loaded ---------------------------------------------------------------------


def png(size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (*size[::-1], 3),
                                                      dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def tone_wav(seconds: float = 2.0) -> bytes:
    t = np.arange(int(16000 * seconds)) / 16000
    return encode_wav((0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32), 16000)


@pytest.fixture(scope="session")
def shape_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("shapes")


def loaded(backend_cls, shape_dir: Path, name: str, **fields):
    """Build, load, hand to the tests; then free the model and delete the folder."""
    config = ModelConfig(name=name, source=f"shape:{name}", threads=2, **fields)
    model = backend_cls.load(config, shape_dir)
    yield model
    folder = Path(model.resolved.location)
    del model
    gc.collect()
    shutil.rmtree(folder, ignore_errors=True)


def run(model, task: str, *inputs: dict) -> list[dict]:
    return model.run(task, [model.prepare(task, dict(i)) for i in inputs])


def assert_shape_source(model, name: str) -> None:
    assert model.fingerprint.startswith(f"shape:{name}#")
    assert model.info()["source"] == f"shape:{name}"
    folder = Path(model.resolved.location)
    assert folder.name.startswith(f"shape-{name}-") and (folder / ".complete").is_file()


def unit(vec: list[float]) -> bool:
    return math.isclose(sum(x * x for x in vec), 1.0, abs_tol=1e-4)


class TestClip:
    @pytest.fixture(scope="class")
    def model(self, shape_dir):
        yield from loaded(ClipModel, shape_dir, "clip-vit-b-32", family="clip")

    def test_loads_open_clip_vit_b_32(self, model):
        assert_shape_source(model, "clip-vit-b-32")
        cfg = json.loads((Path(model.resolved.location) / "open_clip_config.json").read_text())
        assert cfg["model_cfg"]["vision_cfg"] == {"image_size": 224, "layers": 12,
                                                  "width": 768, "patch_size": 32}
        assert sum(p.numel() for p in model.model.parameters()) == 151_277_313

    def test_answers_every_task_and_batches_like_singles(self, model):
        a, b = png((64, 48)), png((300, 200))
        batch = run(model, "embed_image", {"image": a}, {"image": b})
        assert [len(r["embedding"]) for r in batch] == [512, 512]
        assert all(unit(r["embedding"]) for r in batch)
        single = run(model, "embed_image", {"image": b})[0]["embedding"]
        assert np.allclose(single, batch[1]["embedding"], atol=1e-4)
        text = run(model, "embed_text", {"text": "a photo of a cat"})[0]["embedding"]
        assert len(text) == 512 and unit(text)
        labels = run(model, "zero_shot", {"image": a, "labels": ["cat", "dog", "car"]})[0]
        assert sorted(r["label"] for r in labels["labels"]) == ["car", "cat", "dog"]
        assert math.isclose(sum(r["score"] for r in labels["labels"]), 1.0, abs_tol=1e-5)


class TestDistilBert:
    @pytest.fixture(scope="class")
    def model(self, shape_dir):
        yield from loaded(TextModel, shape_dir, "distilbert-sst2", family="text",
                          backend="classifier")

    def test_classifies_with_the_sst2_labels(self, model):
        assert_shape_source(model, "distilbert-sst2")
        assert type(model.model).__name__ == "DistilBertForSequenceClassification"
        assert len(model.tokenizer) == 30522 and model.max_length == 512
        # common words are single tokens, as with the real vocabulary
        assert len(model.tokenizer("the movie was wonderful")["input_ids"]) == 6
        out = run(model, "classify", {"text": "the movie was wonderful"},
                  {"text": "awful " * 600})  # longer than 512 tokens: truncated
        for r in out:
            assert sorted(x["label"] for x in r["labels"]) == ["NEGATIVE", "POSITIVE"]
            assert math.isclose(sum(x["score"] for x in r["labels"]), 1.0, abs_tol=1e-5)


class TestMsMarcoCrossEncoder:
    @pytest.fixture(scope="class")
    def model(self, shape_dir):
        yield from loaded(TextModel, shape_dir, "ms-marco-minilm-l6", family="text",
                          backend="cross_encoder")

    def test_scores_pairs_and_batches_like_singles(self, model):
        assert_shape_source(model, "ms-marco-minilm-l6")
        assert type(model.model).__name__ == "BertForSequenceClassification"
        assert model.model.config.num_labels == 1 and model.max_length == 512
        pairs = [{"query": "what is a kitten", "document": "a kitten is a young cat"},
                 {"query": "what is a kitten", "document": "words " * 600}]  # truncated
        out = run(model, "rerank", *pairs)
        assert all(0 < r["score"] < 1 for r in out)
        assert math.isclose(run(model, "rerank", pairs[0])[0]["score"], out[0]["score"],
                            abs_tol=1e-5)


class TestBartMnli:
    @pytest.fixture(scope="class")
    def model(self, shape_dir):
        yield from loaded(TextModel, shape_dir, "bart-large-mnli", family="text",
                          backend="nli")

    def test_zero_shot_by_entailment(self, model):
        assert_shape_source(model, "bart-large-mnli")
        assert model.entail_idx == 2 and len(model.tokenizer) == 50265
        out = run(model, "zero_shot", {"text": "the movie was wonderful",
                                       "labels": ["positive", "negative", "neutral"]})[0]
        assert sorted(x["label"] for x in out["labels"]) == ["negative", "neutral",
                                                             "positive"]
        assert math.isclose(sum(x["score"] for x in out["labels"]), 1.0, abs_tol=1e-5)


class TestBlip:
    @pytest.fixture(scope="class")
    def model(self, shape_dir):
        yield from loaded(CaptionModel, shape_dir, "blip-captioning-base", family="caption")

    def test_captions_through_the_caption_family(self, model):
        assert_shape_source(model, "blip-captioning-base")
        assert type(model.model).__name__ == "BlipForConditionalGeneration"
        assert model.image_processor.size == {"height": 384, "width": 384}
        out = run(model, "caption", {"image": png(), "max_new_tokens": 4},
                  {"image": png((200, 100)), "max_new_tokens": 4})
        for r in out:
            # random weights: meaningless words, but never an empty caption
            assert isinstance(r["text"], str) and r["text"].strip()


class TestWhisper:
    @pytest.fixture(scope="class")
    def model(self, shape_dir):
        yield from loaded(AudioModel, shape_dir, "whisper-small", family="audio",
                          backend="transformers", options={"max_new_tokens": 4})

    def test_transcribes_through_the_transformers_backend(self, model):
        assert_shape_source(model, "whisper-small")
        assert model.multilingual and len(model.supported) == 99
        assert len(model.processor.tokenizer) == model.model.config.vocab_size == 51865
        # languages given: detection runs the 30 s encoder once more per item (tiny tests
        # cover it)
        out = run(model, "transcribe", {"audio": tone_wav(), "language": "en"},
                  {"audio": tone_wav(1.0), "language": "french"})
        assert [r["language"] for r in out] == ["en", "fr"]
        for r in out:
            assert isinstance(r["text"], str) and r["text"].strip()
            assert "<|" not in r["text"]  # no special or timestamp tokens leak out


def test_replicas_starting_together_build_once(tmp_path):
    """A second replica that asks while the first builds waits for it, not builds a copy."""
    calls, results = [], []
    folder = tmp_path / "shape-x"

    def build(tmp: Path) -> None:
        calls.append(tmp)
        (tmp / "weights").write_text("w")
        other.start()  # asks while this build holds the lock

    other = threading.Thread(target=lambda: results.append(
        sources._build_once(folder, build, "x")))
    assert sources._build_once(folder, build, "x") == folder
    other.join()
    assert results == [folder] and len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shape-x", "shape-x.lock"]
