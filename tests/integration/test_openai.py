"""The official ``openai`` client against the gateway's OpenAI-compatible routes, over Serve.

Embeddings (real MiniLM), image generation (tiny diffusion stand-in), transcription (real
Whisper tiny.en on speech the gateway's own Piper voice made), and OpenAI-shaped errors that
the client turns into its typed exceptions.
"""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import numpy as np
import openai
import pytest
from openai import AsyncOpenAI
from PIL import Image

from tests.integration.openai_helpers import SENTENCE, openai_error_body

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def gateway_url(runtime_url: str) -> str:
    """Every test here runs on both runtimes: Ray Serve, then the embedded one."""
    return runtime_url


@pytest.fixture(scope="module")
def oai(gateway_url: str):
    from tests.integration.openai_helpers import openai_client

    with openai_client(gateway_url) as client:
        yield client


@pytest.fixture(scope="module")
def speech_wav(gateway_url) -> bytes:
    """A WAV of SENTENCE spoken by the gateway's own tts model (real Piper voice)."""
    r = httpx.post(f"{gateway_url}/v1/models/tts/speak",
                   json={"inputs": {"text": SENTENCE}}, timeout=120)
    assert r.status_code == 200, r.text
    wav = base64.b64decode(r.json()["outputs"]["audio"])
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    return wav


# ---- embeddings ----------------------------------------------------------------------------

def test_embeddings_default_encoding(oai):
    # openai-python asks for base64 when no encoding_format is given, and decodes it itself
    r = oai.embeddings.create(model="text", input=["hello", "world"])
    assert r.object == "list" and r.model == "text"
    assert [d.index for d in r.data] == [0, 1]
    vecs = [np.asarray(d.embedding, dtype=np.float64) for d in r.data]
    assert all(v.shape == (384,) for v in vecs)
    assert all(isinstance(x, float) for x in r.data[0].embedding)
    for v in vecs:  # MiniLM vectors are normalised
        assert abs(np.linalg.norm(v) - 1) < 1e-3
    assert not np.allclose(vecs[0], vecs[1])
    assert r.usage.prompt_tokens == r.usage.total_tokens == 2


def test_embeddings_float_and_base64_agree(oai, gateway_url):
    floats = oai.embeddings.create(model="text", input=["hello", "world"],
                                   encoding_format="float")
    default = oai.embeddings.create(model="text", input=["hello", "world"])
    assert len(floats.data) == 2
    for a, b in zip(floats.data, default.data, strict=True):
        assert len(a.embedding) == 384
        np.testing.assert_allclose(a.embedding, b.embedding, rtol=1e-6, atol=1e-6)
    # on the wire, base64 is little-endian float32
    raw = httpx.post(f"{gateway_url}/v1/embeddings", timeout=60, json={
        "model": "text", "input": "hello", "encoding_format": "base64"}).json()
    packed = raw["data"][0]["embedding"]
    assert isinstance(packed, str)
    np.testing.assert_allclose(np.frombuffer(base64.b64decode(packed), "<f4"),
                               floats.data[0].embedding, rtol=1e-6, atol=1e-6)


def test_embeddings_semantics(oai):
    r = oai.embeddings.create(model="text", input=["a cat sits on the mat",
                                                   "a kitten rests on the rug",
                                                   "quarterly tax filing deadline"],
                              encoding_format="float")
    a, b, c = (np.asarray(d.embedding) for d in r.data)
    assert a @ b > a @ c + 0.2


def test_async_client_embeddings(gateway_url):
    async def go():
        async with AsyncOpenAI(base_url=f"{gateway_url}/v1", api_key="unused",
                               max_retries=0, timeout=120) as client:
            return await client.embeddings.create(model="text", input="hello")

    r = asyncio.run(go())
    assert len(r.data) == 1 and len(r.data[0].embedding) == 384


# ---- images ---------------------------------------------------------------------------------

def test_images_generate_two_pngs(oai):
    r = oai.images.generate(model="diffusion", prompt="a red square on white", size="64x64",
                            n=2, response_format="b64_json")
    assert len(r.data) == 2
    pngs = [base64.b64decode(d.b64_json) for d in r.data]
    for data in pngs:
        assert data.startswith(b"\x89PNG\r\n\x1a\n")
        img = Image.open(io.BytesIO(data))
        img.load()
        assert img.format == "PNG" and img.size == (64, 64)
    assert pngs[0] != pngs[1]  # one seed per image
    assert r.data[0].revised_prompt == "a red square on white"
    assert r.created > 0


# ---- transcriptions -------------------------------------------------------------------------

def test_transcription_json(oai, speech_wav):
    t = oai.audio.transcriptions.create(model="whisper", file=("speech.wav", speech_wav))
    text = t.text.lower()
    for word in ("quick", "brown", "fox", "lazy", "dog"):
        assert word in text, text


def test_transcription_text(oai, speech_wav):
    text = oai.audio.transcriptions.create(model="whisper", file=("speech.wav", speech_wav),
                                           response_format="text")
    assert isinstance(text, str)
    assert not text.lstrip().startswith("{"), text  # plain text, not a JSON body
    for word in ("quick", "fox", "dog"):
        assert word in text.lower(), text


# ---- errors ---------------------------------------------------------------------------------

def test_unknown_model_embeddings(oai):
    with pytest.raises(openai.NotFoundError) as info:
        oai.embeddings.create(model="gpt-nope", input="hello")
    err = openai_error_body(info.value, 404)
    assert err["code"] == "model_not_found" and err["param"] == "model"
    assert "gpt-nope" in err["message"]


def test_unknown_model_images_and_transcriptions(oai, speech_wav):
    with pytest.raises(openai.NotFoundError) as info:
        oai.images.generate(model="dall-e-3", prompt="x", response_format="b64_json")
    assert openai_error_body(info.value, 404)["code"] == "model_not_found"
    with pytest.raises(openai.NotFoundError) as info:
        oai.audio.transcriptions.create(model="whisper-1", file=("speech.wav", speech_wav))
    assert openai_error_body(info.value, 404)["code"] == "model_not_found"
    # a model that exists but cannot do the task is not found for that route either
    with pytest.raises(openai.NotFoundError) as info:
        oai.embeddings.create(model="diffusion", input="hello")
    assert openai_error_body(info.value, 404)["code"] == "model_not_found"


BAD = (openai.BadRequestError, openai.UnprocessableEntityError)


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"response_format": "url"}, "response_format"),
    ({"size": "abc"}, "size"),
    ({"size": "60x64"}, "size"),  # refused by the model (width), reported as the size sent
    ({"n": 9}, "n"),  # request validation (pydantic), answered in OpenAI's shape too
])
def test_bad_image_requests(oai, kwargs, param):
    with pytest.raises(BAD) as info:
        oai.images.generate(**{"model": "diffusion", "prompt": "x",
                               "response_format": "b64_json", **kwargs})
    err = openai_error_body(info.value, info.value.status_code)
    assert info.value.status_code == 400  # OpenAI's status for invalid input
    assert err["param"] == param and err["code"] == "bad_input"


def test_validation_errors_use_openai_body(oai, gateway_url):
    # a missing required field fails request validation before the route runs
    with pytest.raises(BAD) as info:
        oai.images.generate(model="diffusion", prompt=None, response_format="b64_json")
    err = openai_error_body(info.value, info.value.status_code)
    assert err["param"] == "prompt"
    with pytest.raises(BAD) as info:
        oai.embeddings.create(model="text", input="hello", encoding_format="int8")
    assert openai_error_body(info.value, info.value.status_code)["param"] == "encoding_format"
    for path, body in (("/v1/images/generations", {"model": "diffusion"}),
                       ("/v1/embeddings", {"model": "text"})):
        r = httpx.post(f"{gateway_url}{path}", json=body, timeout=60)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert set(err) == {"message", "type", "param", "code", "request_id"}, err
        assert err["param"] in ("prompt", "input") and "Field required" in err["message"]
    # the gateway's own routes keep the gateway's body
    r = httpx.post(f"{gateway_url}/v1/pipelines/embed", json={"inputs": {"image": "!!"}},
                   timeout=60)
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs.image"
    assert r.headers.get_list("x-request-id") == [r.json()["error"]["request_id"]]


def test_bad_transcription_requests(oai, speech_wav):
    with pytest.raises(BAD) as info:
        oai.audio.transcriptions.create(model="whisper", file=("speech.wav", speech_wav),
                                        response_format="tsv")
    assert openai_error_body(info.value, info.value.status_code)["param"] == "response_format"
    with pytest.raises(BAD) as info:
        oai.audio.transcriptions.create(model="whisper", file=("speech.wav", b"not audio"))
    # the model's "audio" input is reported as the "file" the client sent
    assert openai_error_body(info.value, info.value.status_code)["param"] == "file"
