"""Retrieval on the shared Serve app (real Ray Serve, Redis, the packaged MiniLM and the CLIP
stand-in): rerank in Cohere's shape through the router and replicas, image items on
``/v1/embeddings``, and ``ask_documents`` citing the right document. The same routes are
tested with the frameworks' clients in-process in tests/unit/test_retrieval.py."""

from __future__ import annotations

import base64
import io
import uuid

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.serve

KITTEN = ["the stock market fell", "a kitten on a rug", "quantum physics"]


def data_url(color: tuple[int, int, int]) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (32, 32), color).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def test_minilm_reranks_the_kitten_first_and_caches_the_vectors(http):
    tag = uuid.uuid4().hex[:6]
    docs = [f"{d} ({tag})" for d in KITTEN]
    for expect in ("miss", "hit"):
        r = http.post("/v2/rerank", json={"model": "text", "query": "a kitten",
                                          "documents": docs, "top_n": 2})
        assert r.status_code == 200, r.text
        assert [x["index"] for x in r.json()["results"]][0] == 1
        assert len(r.json()["results"]) == 2 and r.headers["x-fusion-cache"] == expect


def test_clip_embeds_image_and_text_items_in_one_request(oai, http):
    emb = oai.embeddings.create(model="clip", input=[data_url((200, 10, 10)), "a red square"])
    assert [d.index for d in emb.data] == [0, 1]
    native = http.post("/v1/models/clip/embed_image", json={"inputs": {
        "image": data_url((200, 10, 10)).split(",", 1)[1]}}).json()
    assert np.allclose(emb.data[0].embedding, native["outputs"]["embedding"], atol=1e-5)
    r = http.post("/v1/embeddings", json={"model": "clip",
                                          "input": ["ok", "data:image/png;base64,iVBORw0K"]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[1]"


def test_ask_documents_cites_the_kitten(http):
    r = http.post("/v1/pipelines/ask_documents", json={"inputs": {
        "question": "Which document is about a kitten?", "documents": KITTEN, "top_k": 1,
        "max_tokens": 4}})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"]["sources"] == [1]
