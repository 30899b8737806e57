"""The official ``openai`` client on what OpenAI's users call first: the model list, speech
(real Piper voice, every format, back through real Whisper), subtitles and verbose JSON,
embeddings' token ids and ``dimensions``, and the docs pages with no network."""

from __future__ import annotations

import io
import re

import numpy as np
import openai
import pytest
import soundfile as sf

from tests.integration.openai_helpers import SENTENCE, openai_error_body

pytestmark = pytest.mark.serve

VOICE = "en_US-joe-medium"  # the packaged voice's one speaker (GET /v1/models/tts lists it)
CUE = re.compile(r"(\d\d):(\d\d):(\d\d)[,.](\d\d\d) --> (\d\d):(\d\d):(\d\d)[,.](\d\d\d)")


@pytest.fixture(scope="module")
def speech(oai) -> bytes:
    """SENTENCE as a WAV from /v1/audio/speech."""
    return oai.audio.speech.create(model="tts", voice=VOICE, input=SENTENCE,
                                   response_format="wav").content


def words(text: str) -> set[str]:
    return set(re.findall(r"[a-z]+", text.lower()))


def as_wav(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_models_list_and_retrieve(oai, gateway_config):
    listed = {m.id for m in oai.models.list()}
    assert listed == {m["name"] for m in gateway_config["models"]}
    tts = oai.models.retrieve("tts")
    assert tts.id == "tts" and tts.object == "model" and tts.owned_by == "fusion"
    assert tts.created > 0 and VOICE in tts.model_extra["voices"]
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("gpt-4o")


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus", "pcm"])
def test_speech_decodes_and_transcribes_back(oai, fmt):
    audio = oai.audio.speech.create(model="tts", voice=VOICE, input=SENTENCE,
                                    response_format=fmt).content
    if fmt == "pcm":  # raw 24 kHz s16le, as OpenAI sends it
        samples, rate = np.frombuffer(audio, "<i2").astype(np.float32) / 32768, 24000
    else:
        samples, rate = sf.read(io.BytesIO(audio), dtype="float32")
    assert 1.5 < samples.size / rate < 6 and np.abs(samples).max() > 0.2
    text = oai.audio.transcriptions.create(model="whisper", response_format="text",
                                           file=(f"speech.{fmt}.wav", as_wav(samples, rate)))
    assert len(words(SENTENCE) - words(text)) <= 1, text


@pytest.mark.parametrize("voice", ["alloy", "verse"])
def test_openai_voice_names_speak_and_transcribe_back(oai, voice):
    """What OpenAI's examples send: ``voice="alloy"`` is the packaged voice (the default
    table: every OpenAI name is the model's first voice), heard back by real Whisper; the
    table is on ``GET /v1/models/tts``."""
    aliases = oai.models.retrieve("tts").model_extra["voice_aliases"]
    assert aliases[voice] == VOICE and len(aliases) == 11
    audio = oai.audio.speech.create(model="tts", voice=voice, input=SENTENCE,
                                    response_format="wav").content
    text = oai.audio.transcriptions.create(model="whisper", response_format="text",
                                           file=("alloy.wav", audio))
    assert len(words(SENTENCE) - words(text)) <= 1, text


def test_speech_speed_streaming_and_errors(oai, speech):
    base, rate = sf.read(io.BytesIO(speech))
    fast = oai.audio.speech.create(model="tts", voice=VOICE, input=SENTENCE, speed=2.0,
                                   response_format="wav").content
    assert sf.info(io.BytesIO(fast)).frames < 0.7 * base.size
    two = f"{SENTENCE} Hello world, this is a test."
    with oai.audio.speech.with_streaming_response.create(
            model="tts", voice=VOICE, input=two, response_format="wav") as r:
        chunks = list(r.iter_bytes())
    both, both_rate = sf.read(io.BytesIO(b"".join(chunks)))
    assert both_rate == rate and both.size > 1.5 * base.size
    with pytest.raises(openai.BadRequestError) as info:
        oai.audio.speech.create(model="tts", voice="alloys", input="hi")
    err = openai_error_body(info.value, 400)
    assert err["param"] == "voice" and VOICE in err["message"] and "alloy" in err["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.audio.speech.create(model="tts", voice=VOICE, input="hi", response_format="aac")
    assert openai_error_body(info.value, 400)["param"] == "response_format"


def cues(body: str) -> list[tuple[float, float]]:
    times = []
    for m in CUE.finditer(body):
        h, mi, s, ms, h2, mi2, s2, ms2 = map(int, m.groups())
        times.append((h * 3600 + mi * 60 + s + ms / 1000, h2 * 3600 + mi2 * 60 + s2 + ms2 / 1000))
    return times


def assert_within(times: list[tuple[float, float]], duration: float) -> None:
    assert times
    assert [a for a, _ in times] == sorted(a for a, _ in times)
    assert all(0 <= a <= b <= duration + 0.01 for a, b in times), (times, duration)


def test_subtitles_and_verbose_json(oai, speech):
    duration = sf.info(io.BytesIO(speech)).duration
    srt = oai.audio.transcriptions.create(model="whisper", file=("s.wav", speech),
                                          response_format="srt")
    assert srt.startswith("1\n") and "fox" in srt.lower()
    assert_within(cues(srt), duration)
    vtt = oai.audio.transcriptions.create(model="whisper", file=("s.wav", speech),
                                          response_format="vtt")
    assert vtt.startswith("WEBVTT") and cues(vtt) == cues(srt)
    verbose = oai.audio.transcriptions.create(
        model="whisper", file=("s.wav", speech), response_format="verbose_json",
        timestamp_granularities=["word", "segment"], language="en", temperature=0,
        prompt="A sentence about a fox.")
    assert verbose.language == "en" and abs(verbose.duration - duration) < 0.05
    assert_within([(s.start, s.end) for s in verbose.segments], duration)
    seg = verbose.segments[0]
    assert seg.id == 0 and -5 < seg.avg_logprob <= 0 and 0 <= seg.no_speech_prob <= 1
    assert_within([(w.start, w.end) for w in verbose.words], duration)
    assert {"quick", "fox", "dog"} <= words(" ".join(w.word for w in verbose.words))


def test_embeddings_token_ids_and_dimensions(oai):
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model="text", input=[[1820, 4937, 374]])
    err = openai_error_body(info.value, 400)
    assert err["param"] == "input" and "token ids" in err["message"]
    with pytest.raises(openai.BadRequestError) as info:
        oai.embeddings.create(model="text", input="hello", dimensions=64)
    err = openai_error_body(info.value, 400)
    assert err["param"] == "dimensions" and err["code"] == "unsupported_value"
    full = oai.embeddings.create(model="text", input="hello", dimensions=384, user="me")
    assert len(full.data[0].embedding) == 384


def test_docs_pages_load_nothing_external(http):
    for page in ("/docs", "/redoc"):
        html = http.get(page).text
        assert not re.search(r"https?://", html), page
        for ref in re.findall(r'(?:src|href)="([^"]+)"', html):
            assert http.get(ref).status_code == 200, ref
