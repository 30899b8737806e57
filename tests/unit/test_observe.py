"""Metrics, access log and tracing of the gateway, in-process (no Ray): a ``MemoryRecorder``
stands in for Ray's metrics API and the OpenTelemetry SDK's in-memory exporter for a
collector; the HTTP layer, executor and cache are the real ones.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from fusion.cache import StepCache
from fusion.config import CacheConfig, ModelConfig
from fusion.core.gateway import Gateway
from fusion.errors import Overloaded
from fusion.http.app import create_api
from fusion.observe import METRICS, MemoryRecorder, Observer, exported_series, key_id
from fusion.serve.served import ServedModel
from fusion.tracing import Tracing
from tests.fakes import FakeModels, fake_config, png
from tests.unit.test_served_model import CONFIG, RecordingBackend

SLOW_PIPELINE = {
    "name": "slow_caption", "description": "a caption with a tight deadline",
    "inputs": {"image": "image"},
    "steps": {"caption": {"model": "captioner", "task": "caption", "timeout_s": 0.05,
                          "with": {"image": "$inputs.image"}}},
    "outputs": {"caption": "$steps.caption.text"},
}


def image_inputs() -> dict:
    return {"image": base64.b64encode(png((9, 9, 9))).decode(), "labels": ["cat", "dog"]}


class CollectLines(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def access_lines():
    handler = CollectLines()
    logger = logging.getLogger("fusion.access")
    logger.addHandler(handler)
    yield handler.lines
    logger.removeHandler(handler)


def in_memory_tracing() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    return Tracing(provider), exporter


def make_client(fake: FakeModels, observer: Observer, cache: bool = True, **config):
    cache_cfg = CacheConfig(redis_url=None, enabled=cache)
    gw = Gateway(fake_config(cache=cache_cfg.model_dump(), **config), fake,
                 StepCache.from_config(cache_cfg) if cache else None, observer=observer)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                             base_url="http://gw")


async def test_requests_and_steps_are_counted_by_route_pipeline_status_and_outcome():
    rec = MemoryRecorder()
    async with make_client(FakeModels(), Observer(rec)) as client:
        r = await client.post("/v1/pipelines/caption_then_classify",
                              json={"inputs": image_inputs()})
        assert r.status_code == 200
        # shares its caption step with the first: a cached step beside computed ones
        r = await client.post("/v1/pipelines/fused_image_labels",
                              json={"inputs": image_inputs()})
        assert r.status_code == 200
        assert (await client.post("/v1/pipelines/nope", json={"inputs": {}})).status_code == 404
        bad = await client.post("/v1/models/text/embed", json={"inputs": {"text": 3}})
        assert bad.status_code == 422
    route = "/v1/pipelines/{name}"
    assert rec.count("fusion_requests_total", route=route, pipeline="caption_then_classify",
                     status="200") == 1
    # a made-up name is not a label value: label sets stay bounded
    assert rec.count("fusion_requests_total", route=route, pipeline="", status="404") == 1
    assert rec.count("fusion_requests_total", route="/v1/models/{name}/{task}",
                     pipeline="text/embed", status="422") == 1
    assert len(rec.observed("fusion_request_seconds", route=route, status="200")) == 2
    first = {t["step"]: t["outcome"] for _, t in
             rec.observed("fusion_step_seconds", pipeline="caption_then_classify")}
    assert first == {"caption": "computed", "classify": "computed"}
    fused = {t["step"]: t["outcome"] for _, t in
             rec.observed("fusion_step_seconds", pipeline="fused_image_labels")}
    assert fused["caption"] == "cached" and fused["clip"] == "computed"
    assert all(v >= 0 for v, _ in rec.observed("fusion_step_seconds"))
    # every request that started has ended: the in-flight gauge is back to zero
    assert rec.gauges[("fusion_requests_in_flight", ())] == 0


async def test_a_refusing_model_counts_a_rejection_and_a_late_step_a_timeout():
    rec = MemoryRecorder()
    fake = FakeModels(fail={"zero_shot": Overloaded("model 'text' is at its queue limit")},
                      delays={"caption": 0.5})
    async with make_client(fake, Observer(rec), cache=False,
                           pipelines=[SLOW_PIPELINE]) as client:
        r = await client.post("/v1/pipelines/clip_zero_shot", json={"inputs": image_inputs()})
        assert r.status_code == 503
        inputs = {"image": image_inputs()["image"]}
        r = await client.post("/v1/pipelines/slow_caption", json={"inputs": inputs})
        assert r.status_code == 504
    assert rec.count("fusion_rejections_total", pipeline="clip_zero_shot", model="clip") == 1
    assert rec.count("fusion_timeouts_total", pipeline="slow_caption", model="captioner") == 1
    errors = [t for _, t in rec.observed("fusion_step_seconds", outcome="error")]
    assert {(t["pipeline"], t["model"]) for t in errors} == {
        ("clip_zero_shot", "clip"), ("slow_caption", "captioner")}


async def test_access_log_is_one_json_line_with_a_key_id_and_no_key_or_payload(access_lines):
    key = "s3cret-key"
    auth = {"key_hashes": [hashlib.sha256(key.encode()).hexdigest()]}
    async with make_client(FakeModels(), Observer(access_log="json"), auth=auth) as client:
        r = await client.post("/v1/pipelines/caption_then_classify",
                              json={"inputs": image_inputs()},
                              headers={"Authorization": f"Bearer {key}",
                                       "X-Request-Id": "req-42"})
        assert r.status_code == 200
        await client.get("/healthz")  # probes are not logged
    assert len(access_lines) == 1
    line = access_lines[0]
    entry = json.loads(line)
    assert entry["request_id"] == "req-42" and entry["status"] == 200
    assert entry["route"] == "/v1/pipelines/{name}"
    assert entry["pipeline"] == "caption_then_classify" and entry["cache"] == "miss"
    assert entry["key_id"] == key_id(f"Bearer {key}") != "-" and entry["ms"] > 0
    assert key not in line and image_inputs()["image"][:16] not in line and "cat" not in line


async def test_access_log_plain_text_switch(access_lines):
    async with make_client(FakeModels(), Observer(access_log="text")) as client:
        await client.post("/v1/pipelines/nope", json={"inputs": {}})
    assert len(access_lines) == 1
    assert access_lines[0].startswith("ts=") and " status=404 " in access_lines[0]
    assert " key_id=- " in access_lines[0]


class TracedFakes(FakeModels):
    """Records the trace context it would send to a replica with each call."""

    def __init__(self) -> None:
        super().__init__()
        self.carriers: list[dict] = []

    async def call(self, model, task, inputs):
        self.carriers.append(Tracing.carrier())
        return await super().call(model, task, inputs)


async def test_one_trace_per_request_through_steps_cache_and_model_calls():
    tracing, exporter = in_memory_tracing()
    fake = TracedFakes()
    trace_id = "0af7651916cd43dd8448eb211c80319c"
    parent = "b7ad6b7169203331"
    async with make_client(fake, Observer(tracing=tracing)) as client:
        r = await client.post("/v1/pipelines/caption_then_classify",
                              json={"inputs": image_inputs()},
                              headers={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert r.status_code == 200 and r.headers["x-trace-id"] == trace_id
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert {s.context.trace_id for s in spans.values()} == {int(trace_id, 16)}
    root = spans["POST /v1/pipelines/{name}"]
    assert root.kind == SpanKind.SERVER and root.parent.span_id == int(parent, 16)
    assert root.attributes["http.response.status_code"] == 200
    for step in ("caption", "classify"):
        assert spans[f"step {step}"].parent.span_id == root.context.span_id
    cache_spans = [s for s in exporter.get_finished_spans() if s.name == "cache"]
    model = spans["model captioner/caption"]
    assert model.parent.span_id in {s.context.span_id for s in cache_spans}
    assert {s.attributes["fusion.cache.outcome"] for s in cache_spans} == {"miss"}
    # the context sent with the call names the model-call span: the replica continues it
    sent = [c["traceparent"] for c in fake.carriers]
    assert f"00-{trace_id}-{model.context.span_id:016x}-01" in sent


async def test_an_unsampled_incoming_trace_is_honoured_and_records_nothing():
    tracing, exporter = in_memory_tracing()
    trace_id = "0af7651916cd43dd8448eb211c80319d"
    async with make_client(FakeModels(), Observer(tracing=tracing)) as client:
        r = await client.post("/v1/pipelines/caption_then_classify",
                              json={"inputs": image_inputs()},
                              headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-00"})
    assert r.status_code == 200 and r.headers["x-trace-id"] == trace_id
    assert exporter.get_finished_spans() == ()


async def test_tracing_off_adds_no_header_and_sends_no_context():
    fake = TracedFakes()
    async with make_client(fake, Observer(MemoryRecorder())) as client:
        r = await client.post("/v1/pipelines/caption_then_classify",
                              json={"inputs": image_inputs()})
    assert r.status_code == 200 and "x-trace-id" not in r.headers
    assert fake.carriers and all(c == {} for c in fake.carriers)


class RecordingDeployment(ServedModel):
    backend_cls = RecordingBackend


async def test_replica_measures_queue_wait_compute_batch_and_continues_the_trace():
    served = RecordingDeployment(ModelConfig.model_validate(CONFIG).model_dump(mode="json"))
    served._recorder = rec = MemoryRecorder()
    served._tracing, exporter = in_memory_tracing()
    trace_id, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    out = await served.call("generate", {"prompt": "fox", "seed": 3},
                            trace={"traceparent": f"00-{trace_id}-{parent}-01"})
    assert out == {"image": b"fox/3"}
    tags = {"model": "gen", "task": "generate"}
    assert [t for _, t in rec.observed("fusion_queue_wait_seconds")] == [tags]
    assert [t for _, t in rec.observed("fusion_compute_seconds")] == [tags]
    assert rec.observed("fusion_batch_size") == [(1, tags)]
    assert rec.gauges[("fusion_model_in_flight", (("model", "gen"),))] == 0
    spans = {s.name: s for s in exporter.get_finished_spans()}
    replica = spans["replica gen/generate"]
    assert replica.parent.span_id == int(parent, 16)
    assert replica.context.trace_id == int(trace_id, 16)
    for child in ("queue_wait", "compute"):
        assert spans[child].parent.span_id == replica.context.span_id
    assert spans["queue_wait"].end_time <= spans["compute"].start_time


def test_memory_recorder_refuses_undeclared_names_and_tags():
    rec = MemoryRecorder()
    with pytest.raises(KeyError):
        rec.inc("fusion_unknown_total", {})
    with pytest.raises(KeyError):
        rec.observe("fusion_step_seconds", 1.0, {"pipeline": "p"})


def test_every_metric_is_prefixed_and_histograms_span_2ms_to_30s():
    assert all(name.startswith("fusion_") for name in METRICS)
    for m in METRICS.values():
        if m.kind == "histogram" and m.name.endswith("_seconds"):
            assert m.buckets[0] <= 0.002 and m.buckets[-1] >= 30
    assert "ray_fusion_step_seconds_bucket" in exported_series()


def test_the_core_stays_free_of_ray_and_torch():
    """Only fusion.serve.ingress / fusion.serve.app / fusion.serve.metrics may pull Ray in."""
    import subprocess
    import sys

    code = ("import sys, fusion.http.app, fusion.core.gateway, fusion.core.executor, "
            "fusion.observe, fusion.tracing; "
            "print(sorted(m for m in ('ray', 'torch') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"
