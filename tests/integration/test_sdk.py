"""The Python SDK (FusionClient, AsyncFusionClient) and the ``fusion`` CLI against the real
gateway over Serve: typed results, decoded images, streams, errors, cache counters."""

from __future__ import annotations

import io
import json
import uuid
from pathlib import Path

import pytest
from fusion_client import (
    AsyncFusionClient,
    BadRequest,
    CacheStats,
    CallResult,
    FusionClient,
    ModelInfo,
    NotFound,
    PipelineInfo,
    PipelineResult,
    ProgressEvent,
    ResultEvent,
    StartEvent,
    StepEvent,
    StepResult,
)
from fusion_client.cli import main
from PIL import Image

from tests.fakes import png
from tests.integration.conftest import OWN_MODELS, OWN_PIPELINE, SCALER

pytestmark = pytest.mark.serve

PIPELINES = {"caption_then_classify", "text_to_image", "transcribe_then_classify",
             "clip_zero_shot", "fused_image_labels", "embed", "classifier_with_clip",
             OWN_PIPELINE["name"], "ask_image", "ask_audio", "describe_then_draw",
             "ask_documents", "search_images", "shapes_fused"}
MODELS = {"text", "sentiment", "captioner", "clip", "whisper", "diffusion", "ocr", "tts",
          "llm", "shapes", SCALER["name"], *(m["name"] for m in OWN_MODELS)}


@pytest.fixture
def client(gateway_url):
    with FusionClient(gateway_url, timeout=120) as c:
        yield c


@pytest.fixture
def image_path(tmp_path) -> Path:
    path = tmp_path / "cat.png"
    path.write_bytes(png((180, 120, 60), 32))
    return path


def unique_prompt(what: str) -> str:
    return f"{what} {uuid.uuid4().hex[:8]}"


def is_png(data: bytes, size: tuple[int, int] = (64, 64)) -> bool:
    img = Image.open(io.BytesIO(data))
    img.load()
    return data.startswith(b"\x89PNG\r\n\x1a\n") and img.format == "PNG" and img.size == size


# ---- blocking client -----------------------------------------------------------------------

def test_listings(client):
    pipes = client.pipelines()
    assert all(isinstance(p, PipelineInfo) for p in pipes)
    assert {p.name for p in pipes} == PIPELINES
    c2c = client.pipeline("caption_then_classify")
    assert c2c.input_types == {"image": "image", "labels": "list[text]"}
    assert c2c.outputs == {"caption": "text", "labels": "labels"}
    assert c2c.steps["classify"].needs == ["caption"]
    t2i = client.pipeline("text_to_image")
    assert t2i.inputs["seed"].required is False and t2i.inputs["seed"].default == 0
    assert client.pipeline("no_such_pipeline") is None

    models = {m.name: m for m in client.models()}
    assert set(models) == MODELS and all(isinstance(m, ModelInfo) for m in models.values())
    assert "zero_shot" in models["text"].tasks and models["text"].fingerprint
    assert client.health()["status"] == "ok"


def test_run_caption_then_classify(client, image_path):
    r = client.run("caption_then_classify", image=image_path, labels=["cat", "dog"])
    assert isinstance(r, PipelineResult)
    assert r.types == {"caption": "text", "labels": "labels"}
    assert isinstance(r.outputs["caption"], str)
    labels = r.outputs["labels"]
    assert {x["label"] for x in labels} == {"cat", "dog"}
    assert labels[0]["score"] >= labels[1]["score"]
    assert set(r.steps) == {"caption", "classify"}
    assert all(isinstance(s, StepResult) and s.ms is not None for s in r.steps.values())
    assert r.cache in ("hit", "partial", "miss") and r.request_id
    # the same image as a str path and as bytes: same content address, a whole-pipeline hit
    again = client.run("caption_then_classify", {"image": image_path.read_bytes()},
                       labels=["cat", "dog"])
    assert again.cache == "hit" and again.outputs == r.outputs
    assert again.steps["caption"].cached
    by_name = client.run("caption_then_classify", image=str(image_path), labels=["cat", "dog"])
    assert by_name.outputs == r.outputs


def test_run_text_to_image_returns_a_pil_image(client, gateway_url):
    r = client.run("text_to_image", prompt="a red square", seed=1)
    img = r.outputs["image"]
    assert isinstance(img, Image.Image) and img.size == (64, 64)
    assert r.outputs["caption"] is None and r.steps["caption"].skipped
    with FusionClient(gateway_url, timeout=120, decode_images=False) as raw:
        data = raw.run("text_to_image", prompt="a red square", seed=1).outputs["image"]
    assert isinstance(data, bytes) and is_png(data)
    assert Image.open(io.BytesIO(data)).tobytes() == img.tobytes()


def test_stream_progress_then_steps_then_result(client):
    prompt = unique_prompt("a streamed lighthouse")
    events = list(client.stream("text_to_image", prompt=prompt, seed=3, steps=3,
                                cache_control="no-store"))
    kinds = [e.type for e in events]
    progress = [e for e in events if isinstance(e, ProgressEvent)]
    steps = [e for e in events if isinstance(e, StepEvent)]
    assert [(e.step, e.progress, e.total) for e in progress] == \
        [("generate", 1, 3), ("generate", 2, 3), ("generate", 3, 3)]
    assert progress[-1].fraction == 1.0
    assert kinds[:4] == ["start"] + ["progress"] * 3
    assert isinstance(events[0], StartEvent) and events[0].model == "diffusion"
    assert {e.step for e in steps} == {"generate", "caption"}
    first_step = kinds.index("step")
    assert all(k == "step" for k in kinds[first_step:-1])
    assert kinds[-1] == "result" and kinds.count("result") == 1
    gen = next(e for e in steps if e.step == "generate")
    assert not gen.cached and gen.ms > 0
    assert next(e for e in steps if e.step == "caption").skipped
    result = events[-1]
    assert isinstance(result, ResultEvent)
    assert isinstance(result.result.outputs["image"], Image.Image)
    assert result.result.outputs["image"].size == (64, 64)


def test_call_zero_shot_ranks_positive_first(client):
    r = client.call("text", "zero_shot", text="I love this phone",
                    labels=["positive", "negative"])
    assert isinstance(r, CallResult) and r.model == "text" and r.task == "zero_shot"
    labels = r.outputs["labels"]
    assert [x["label"] for x in labels] == ["positive", "negative"]
    assert labels[0]["score"] > labels[1]["score"]
    assert r.request_id and r.ms is not None


def test_errors(client, tmp_path):
    with pytest.raises(BadRequest) as info:
        client.run("caption_then_classify", image=b"this is not an image", labels=["cat"])
    err = info.value
    assert err.status == 422 and err.code == "bad_input"
    assert err.field == "inputs.image" and err.request_id
    assert "image" in err.message

    with pytest.raises(BadRequest) as info:  # caught by the SDK before sending
        client.run("caption_then_classify", image=str(tmp_path / "missing.png"),
                   labels=["cat"])
    assert info.value.status is None

    with pytest.raises(NotFound) as info:
        client.run("no_such_pipeline", x=1)
    assert info.value.status == 404 and info.value.code == "not_found"
    assert info.value.request_id
    with pytest.raises(NotFound):
        client.call("text", "no_such_task", text="x")


def test_cache_stats(client, image_path):
    # each router replica keeps its own counters: repeat the run so that every replica
    # answers some of it from the cache, then read the counters of whichever replica answers
    for _ in range(6):
        client.run("caption_then_classify", image=image_path, labels=["x", "y"])
    seen = [client.cache_stats() for _ in range(8)]
    assert all(isinstance(s, CacheStats) and s.backend == "redis" for s in seen)
    stats = max(seen, key=lambda s: s.hits)
    assert stats.hits >= 1 and 0 < stats.hit_rate <= 1
    assert stats.stores >= 1 and stats.bytes_written > 0
    assert stats.per_task["pipeline/caption_then_classify"]["hits"] >= 1
    assert sum(t["hits"] for t in stats.per_task.values()) == stats.hits


# ---- async client --------------------------------------------------------------------------

async def test_async_client(gateway_url, image_path):
    async with AsyncFusionClient(gateway_url, timeout=120) as client:
        assert {p.name for p in await client.pipelines()} == PIPELINES
        assert {m.name for m in await client.models()} == MODELS
        r = await client.run("caption_then_classify", image=image_path,
                             labels=["cat", "dog"])
        assert {x["label"] for x in r.outputs["labels"]} == {"cat", "dog"}
        r = await client.run("text_to_image", prompt="a red square", seed=1)
        assert isinstance(r.outputs["image"], Image.Image)
        assert r.outputs["image"].size == (64, 64)
        z = await client.call("text", "zero_shot", text="I love this phone",
                              labels=["positive", "negative"])
        assert z.outputs["labels"][0]["label"] == "positive"

        events = [e async for e in client.stream(
            "text_to_image", prompt=unique_prompt("an async stream"), steps=2,
            cache_control="no-store")]
        kinds = [e.type for e in events]
        assert kinds[:3] == ["start", "progress", "progress"] and kinds[-1] == "result"
        assert kinds.index("step") > 2
        assert events[-1].result.outputs["image"].size == (64, 64)

        with pytest.raises(BadRequest) as info:
            await client.run("caption_then_classify", image=b"garbage", labels=["a"])
        assert info.value.field == "inputs.image" and info.value.request_id
        with pytest.raises(NotFound):
            await client.run("no_such_pipeline")
        assert isinstance(await client.cache_stats(), CacheStats)


# ---- CLI -----------------------------------------------------------------------------------

def cli(gateway_url, *argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(["--url", gateway_url, "--timeout", "120", *argv], stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


def test_cli_run_writes_png(gateway_url, tmp_path):
    target = tmp_path / "out.png"
    code, out, err = cli(gateway_url, "run", "text_to_image", "--prompt", "a red square",
                         "-o", str(target))
    assert code == 0, err
    assert is_png(target.read_bytes())
    assert str(target) in out and "request id:" in err


def test_cli_pipelines_json(gateway_url):
    code, out, err = cli(gateway_url, "pipelines", "--json")
    assert code == 0, err
    listing = json.loads(out)
    assert {p["name"] for p in listing} == PIPELINES
    c2c = next(p for p in listing if p["name"] == "caption_then_classify")
    assert c2c["inputs"]["labels"]["type"] == "list[text]"


def test_cli_run_caption_then_classify_json(gateway_url, image_path):
    code, out, err = cli(gateway_url, "run", "caption_then_classify", "--image",
                         str(image_path), "--labels", "cat,dog", "--json")
    assert code == 0, err
    body = json.loads(out)
    assert isinstance(body["outputs"]["caption"], str)
    assert {x["label"] for x in body["outputs"]["labels"]} == {"cat", "dog"}
    assert set(body["steps"]) == {"caption", "classify"} and body["request_id"]


def test_cli_errors(gateway_url, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png")
    code, out, err = cli(gateway_url, "run", "caption_then_classify", "--image", str(bad),
                         "--labels", "cat")
    assert code == 2 and out == ""
    assert "field: inputs.image" in err and "request id:" in err
    code, _, err = cli(gateway_url, "run", "no_such_pipeline", "--x", "1")
    assert code == 1 and "no_such_pipeline" in err
