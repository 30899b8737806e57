"""Every series the Grafana dashboard plots exists from a router's start, before any error:
counters of known label sets at 0, state gauges set at start-up and set again while the
process lives (``fusion.serve.metrics``). In-process with a ``MemoryRecorder``; the
integration test ``test_observability`` scrapes the same from a real Serve app.
"""

from __future__ import annotations

import threading

import httpx

from fusion.cache import StepCache
from fusion.config import CacheConfig, ModelConfig
from fusion.core.gateway import Gateway
from fusion.errors import Overloaded
from fusion.http.app import create_api
from fusion.observe import EXPORT_PREFIX, METRICS, MemoryRecorder, Observer
from fusion.serve import served as served_module
from fusion.serve.metrics import RayRecorder
from tests.fakes import FakeModels, fake_config
from tests.unit.test_dashboard import as_promql, expressions, metric_names
from tests.unit.test_observe import SLOW_PIPELINE, RecordingDeployment, image_inputs
from tests.unit.test_served_model import CONFIG


def started(fake: FakeModels, rec: MemoryRecorder, cache: bool = True,
            **config) -> tuple[Gateway, httpx.AsyncClient]:
    """A router as ``fusion.serve.ingress.Router`` builds one: gateway, then ``start``."""
    observer = Observer(rec)
    cache_cfg = CacheConfig(redis_url=None, enabled=cache)
    step_cache = StepCache.from_config(cache_cfg) if cache else None
    gw = Gateway(fake_config(cache=cache_cfg.model_dump(), **config), fake, step_cache,
                 observer=observer)
    observer.start(gw.pipelines, gw.models, step_cache.backend.healthy if step_cache else None)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=create_api(lambda: gw)),
                               base_url="http://gw")
    return gw, client


def series(rec: MemoryRecorder, name: str) -> dict[tuple, float]:
    return {tags: v for (n, tags), v in rec.counts.items() if n == name}


def exported_names(rec: MemoryRecorder) -> set[str]:
    """The names Prometheus would see for what ``rec`` holds (Ray's prefix and suffixes)."""
    names = {EXPORT_PREFIX + n for n, _ in [*rec.counts, *rec.gauges]}
    for n, _, _ in rec.observations:
        names |= {f"{EXPORT_PREFIX}{n}_{s}" for s in ("bucket", "sum", "count")}
    return names


async def test_refusal_counters_exist_at_zero_and_traffic_counts_into_those_series():
    rec = MemoryRecorder()
    fake = FakeModels(fail={"zero_shot": Overloaded("model 'clip' is at its queue limit")},
                      delays={"caption": 0.5})
    gw, client = started(fake, rec, cache=False, pipelines=[SLOW_PIPELINE])
    timeouts, rejections = (series(rec, "fusion_timeouts_total"),
                            series(rec, "fusion_rejections_total"))
    # no request yet: a series per pipeline and model its steps call, and per model route
    assert timeouts and set(timeouts.values()) == {0}
    assert (("model", "captioner"), ("pipeline", "slow_caption")) in timeouts
    assert (("model", "clip"), ("pipeline", "clip_zero_shot")) in rejections
    assert (("model", "clip"), ("pipeline", "clip/zero_shot")) in rejections
    assert set(rejections) == set(timeouts)
    assert not any(n.startswith("fusion_cache_") for n, _ in rec.counts)  # no cache, none
    async with client:
        r = await client.post("/v1/pipelines/clip_zero_shot", json={"inputs": image_inputs()})
        assert r.status_code == 503
        r = await client.post("/v1/pipelines/slow_caption",
                              json={"inputs": {"image": image_inputs()["image"]}})
        assert r.status_code == 504
        r = await client.post("/v1/models/clip/zero_shot", json={"inputs": image_inputs()})
        assert r.status_code == 503
    # the 503s and the 504 counted into the series made at start: no new label set appeared
    assert set(series(rec, "fusion_timeouts_total")) == set(timeouts)
    assert set(series(rec, "fusion_rejections_total")) == set(rejections)
    assert rec.count("fusion_timeouts_total", pipeline="slow_caption") == 1
    assert rec.count("fusion_rejections_total", pipeline="clip_zero_shot", model="clip") == 1
    assert rec.count("fusion_rejections_total", pipeline="clip/zero_shot", model="clip") == 1


async def test_cache_counters_and_gauges_are_there_before_the_first_request():
    rec = MemoryRecorder()
    gw, client = started(FakeModels(), rec)
    await client.aclose()
    assert rec.gauges[("fusion_replica_up", (("model", "router"),))] == 1
    assert rec.gauges[("fusion_cache_healthy", ())] == 1
    assert rec.gauges[("fusion_requests_in_flight", ())] == 0
    hits = series(rec, "fusion_cache_hits_total")
    assert set(hits.values()) == {0}
    for model, served in gw.models.items():
        for task in served.tasks:
            assert (("model", model), ("task", task)) in hits
    assert (("model", "pipeline"), ("task", "clip_zero_shot")) in hits
    assert set(series(rec, "fusion_cache_misses_total")) == set(hits)


async def test_every_series_the_dashboard_plots_exists_after_start_and_one_good_request(
        monkeypatch):
    """The router and a model replica as they start, then one request that succeeds: every
    name in the dashboard's PromQL is there, the 504 counter included, though no request
    failed (the scrape of a healthy gateway has no empty panel)."""
    rec = MemoryRecorder()
    monkeypatch.setattr(served_module, "ray_recorder", lambda: rec)
    replica = RecordingDeployment(ModelConfig.model_validate(CONFIG).model_dump(mode="json"),
                                  observability={"metrics": True})
    assert rec.gauges[("fusion_replica_up", (("model", "gen"),))] == 1
    assert rec.gauges[("fusion_model_in_flight", (("model", "gen"),))] == 0
    await replica.call("generate", {"prompt": "fox", "seed": 3})
    _, client = started(FakeModels(), rec)
    async with client:
        r = await client.post("/v1/pipelines/clip_zero_shot", json={"inputs": image_inputs()})
        assert r.status_code == 200, r.text
    assert not [k for k in rec.counts if k[0] == "fusion_requests_total"
                and dict(k[1])["status"] != "200"]
    plotted = set().union(*(metric_names(as_promql(e)) for e in expressions()))
    assert "ray_fusion_timeouts_total" in plotted
    assert plotted <= exported_names(rec), sorted(plotted - exported_names(rec))


class _Kind:
    """Stands in for a Ray metric class: records what the recorder sends, in order."""

    log: list[tuple[str, str, float, dict]] = []
    sets = threading.Semaphore(0)

    def __init__(self, name: str, **_: object) -> None:
        self.name = name

    def inc(self, value: float, tags: dict) -> None:
        assert value > 0, "Ray's Counter.inc refuses 0"
        self.log.append(("inc", self.name, value, tags))

    def _record(self, value: float, tags: dict) -> None:
        self.log.append(("record", self.name, value, tags))

    def set(self, value: float, tags: dict) -> None:
        self.log.append(("set", self.name, value, tags))
        self.sets.release()


def test_ray_recorder_creates_a_counter_at_zero_and_sets_every_gauge_again():
    _Kind.log, _Kind.sets = [], threading.Semaphore(0)
    rec = RayRecorder({"counter": _Kind, "gauge": _Kind, "histogram": _Kind}, refresh_s=0.05)
    try:
        rec.inc("fusion_timeouts_total", {"pipeline": "p", "model": "m"}, 0)
        rec.set("fusion_replica_up", 1, {"model": "router"})
        rec.set("fusion_model_in_flight", 2, {"model": "m"})
        rec.set("fusion_model_in_flight", 0, {"model": "m"})
        assert _Kind.log[0] == ("record", "fusion_timeouts_total", 0.0,
                                {"pipeline": "p", "model": "m"})
        # the keeper thread sets both series again, each to its last value, for as long as
        # the recorder lives: wait for two more rounds
        for _ in range(3):  # the three sets above
            assert _Kind.sets.acquire(timeout=10)
        start = len(_Kind.log)
        for _ in range(4):
            assert _Kind.sets.acquire(timeout=10)
    finally:
        rec.close()
    again = [(n, v, t) for kind, n, v, t in _Kind.log[start:] if kind == "set"]
    assert ("fusion_replica_up", 1, {"model": "router"}) in again
    assert ("fusion_model_in_flight", 0, {"model": "m"}) in again
    assert ("fusion_model_in_flight", 2, {"model": "m"}) not in again
    assert {n for n, _, _ in again} <= {m for m in METRICS if METRICS[m].kind == "gauge"}
