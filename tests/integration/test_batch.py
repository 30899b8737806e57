"""List requests on the shared Serve app: real MiniLM, CLIP stand-in and classifier replicas,
the real Redis cache. One request carries the list to the replica; order, per-item cache
flags, errors naming the index and the list limit are checked over HTTP."""

from __future__ import annotations

import base64
import io
import uuid

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.serve


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png(color: tuple[int, int, int], size: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


def test_embed_list_keeps_order_and_reports_hits_and_misses(http):
    tag = uuid.uuid4().hex[:8]
    words = [f"{tag} a red apple", f"{tag} the stock market fell", f"{tag} a red apple",
             f"{tag} quantum physics lecture", f"{tag} a cat on a mat"]
    single = http.post("/v1/models/text/embed", json={"inputs": {"text": words[1]}}).json()
    r = http.post("/v1/models/text/embed", json={"inputs": [{"text": w} for w in words]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["cached"] == [False, True, False, False, False]
    assert r.headers["x-fusion-cache"] == "partial"
    vecs = np.array([o["embedding"] for o in body["outputs"]])
    assert vecs.shape == (5, 384)
    assert np.allclose(vecs[1], single["outputs"]["embedding"])
    assert np.allclose(vecs[0], vecs[2])
    # in order: each row is its own text's embedding, computed alone
    for i in (0, 3, 4):
        alone = http.post("/v1/models/text/embed", json={"inputs": {"text": words[i]}},
                          headers={"Cache-Control": "no-store"}).json()["outputs"]["embedding"]
        assert float(np.dot(vecs[i], alone)) > 0.999
    again = http.post("/v1/models/text/embed", json={"inputs": [{"text": w} for w in words]})
    assert again.json()["cached"] == [True] * 5 and again.headers["x-fusion-cache"] == "hit"


def test_clip_and_classifier_lists(http):
    images = [png((200, 0, 0)), png((0, 200, 0)), png((0, 0, 200))]
    r = http.post("/v1/models/clip/embed_image",
                  json={"inputs": [{"image": b64(i)} for i in images]},
                  headers={"Cache-Control": "no-store"})
    assert r.status_code == 200, r.text
    out = [o["embedding"] for o in r.json()["outputs"]]
    alone = http.post("/v1/models/clip/embed_image", json={"inputs": {"image": b64(images[2])}},
                      headers={"Cache-Control": "no-store"}).json()["outputs"]["embedding"]
    assert np.allclose(out[2], alone, atol=1e-4) and not np.allclose(out[0], out[2])
    r = http.post("/v1/models/clip/embed_text", json={"inputs": [{"text": "a"}, {"text": "b"}]})
    assert r.status_code == 200 and len(r.json()["outputs"]) == 2
    r = http.post("/v1/models/sentiment/classify",
                  json={"inputs": [{"text": "great"}, {"text": "awful"}]})
    assert r.status_code == 200, r.text
    assert all({x["label"] for x in o["labels"]} == {"negative", "positive"}
               for o in r.json()["outputs"])


def test_bad_item_names_its_index_and_the_replica_survives(http):
    items = [{"image": b64(png((i, i, i)))} for i in range(5)]
    items[3] = {"image": b64(b"\x89PNG not really an image")}
    r = http.post("/v1/models/clip/embed_image", json={"inputs": items},
                  headers={"Cache-Control": "no-store"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "inputs[3].image"
    ok = http.post("/v1/models/clip/embed_image", json={"inputs": items[:3]})
    assert ok.status_code == 200 and len(ok.json()["outputs"]) == 3


def test_oversize_list_is_422_naming_inputs(http, gateway_config):
    # an embedding task takes OpenAI's sizes (limits.max_embedding_inputs)
    limit = gateway_config.get("limits", {}).get("max_embedding_inputs", 2048)
    r = http.post("/v1/models/text/embed", json={"inputs": [{"text": "x"}] * (limit + 1)})
    assert r.status_code == 422 and r.json()["error"]["field"] == "inputs"


def test_openai_embeddings_list_in_one_request(oai):
    texts = [f"sentence number {i} about {w}" for i, w in
             enumerate(["cats", "dogs", "cars", "rain"] * 16)]
    emb = oai.embeddings.create(model="text", input=texts)
    assert [d.index for d in emb.data] == list(range(64))
    first = oai.embeddings.create(model="text", input=texts[5]).data[0].embedding
    assert float(np.dot(emb.data[5].embedding, first)) > 0.999
