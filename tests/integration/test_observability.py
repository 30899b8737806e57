"""Observability end to end on the package's Serve app: a real Prometheus scrapes Ray's
metrics port and answers PromQL about step latency; Ray's export holds every series the
Grafana dashboard plots, before any error and for as long as the app runs; one trace holds
router and replica spans.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import time
import uuid

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.fakes import png
from tests.redis_server import free_port
from tests.unit.test_dashboard import as_promql, expressions, metric_names

pytestmark = pytest.mark.serve


def clip_inputs(color: tuple[int, int, int]) -> dict:
    return {"inputs": {"image": base64.b64encode(png(color)).decode(),
                       "labels": ["cat", "dog"]}}


@pytest.fixture
def prometheus(metrics_port, tmp_path):
    """A real Prometheus (Debian's package) scraping the gateway every second."""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is not installed (.ci/run installs Debian's package)"
    port = free_port()
    config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
              "scrape_configs": [{"job_name": "fusion", "static_configs": [
                  {"targets": [f"127.0.0.1:{metrics_port}"]}]}]}
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen([binary, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{port}", tmp_path / "prometheus.log"
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()


def query(url: str, promql: str) -> list[dict]:
    r = httpx.get(f"{url}/api/v1/query", params={"query": promql}, timeout=10)
    r.raise_for_status()
    return r.json()["data"]["result"]


def test_prometheus_reads_back_step_latency(http, prometheus):
    url, log = prometheus
    for color in ((1, 2, 3), (4, 5, 6), (7, 8, 9)):
        r = http.post("/v1/pipelines/clip_zero_shot", json=clip_inputs(color),
                      headers={"Cache-Control": "no-store"})
        assert r.status_code == 200, r.text
    promql = ('sum by (step, model, task, outcome) '
              '(ray_fusion_step_seconds_count{pipeline="clip_zero_shot"})')
    # Ray's agent exports a few seconds after the fact, and Prometheus scrapes every second:
    # wait for the series to count all three requests, however long the machine takes
    deadline = time.monotonic() + 120
    series: list[dict] = []
    while time.monotonic() < deadline:
        series = query(url, promql)
        if sum(float(s["value"][1]) for s in series) >= 3:
            break
        time.sleep(1)
    assert series, log.read_text()[-3000:]
    computed = [s for s in series if s["metric"]["outcome"] == "computed"]
    assert computed and computed[0]["metric"] == {"step": "clip", "model": "clip",
                                                  "task": "zero_shot", "outcome": "computed"}
    assert float(computed[0]["value"][1]) >= 3
    # the replica's side and the request edge are in the same scrape
    assert query(url, 'ray_fusion_compute_seconds_count{model="clip"}')
    assert query(url, 'ray_fusion_requests_total{route="/v1/pipelines/{name}",'
                      'pipeline="clip_zero_shot",status="200"}')


def scrape(metrics_port: int) -> dict[str, list[tuple[dict[str, str], float]]]:
    """Ray's metrics port as Prometheus reads it: samples by series name."""
    text = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=10).text
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


def test_every_series_the_dashboard_plots_is_exported_and_stays(http, metrics_port,
                                                                  gateway_config):
    """Order-independent: whatever ran before, the series made at start-up (the 504 counter
    at 0 for every pipeline and model its steps call) are all there, and the state gauges
    set once at start-up outlive the export's gauge TTL (two report intervals)."""
    import ray

    # one good request, so each histogram has its first observation (Ray's agent exports no
    # histogram series before one: it skips data points with count 0)
    r = http.post("/v1/pipelines/clip_zero_shot", json=clip_inputs((21, 22, 23)),
                  headers={"Cache-Control": "no-store"})
    assert r.status_code == 200, r.text
    plotted = set().union(*(metric_names(as_promql(e)) for e in expressions()))
    deadline = time.monotonic() + 120
    while True:
        samples = scrape(metrics_port)
        missing = plotted - set(samples)
        if not missing:
            break
        assert time.monotonic() < deadline, f"never exported: {sorted(missing)}"
        time.sleep(1)
    pipelines = http.get("/v1/pipelines").json()["pipelines"]
    known = {(p["name"], s["model"] or s["task"]) for p in pipelines
             for s in p["steps"].values()}
    for name in ("ray_fusion_timeouts_total", "ray_fusion_rejections_total"):
        exported = {(labels["pipeline"], labels["model"]) for labels, _ in samples[name]}
        assert known <= exported, (name, sorted(known - exported))
    # no test times out every pipeline: most of these series are the zeros made at start-up
    assert min(v for _, v in samples["ray_fusion_timeouts_total"]) == 0
    # gauges set at start-up only (replica up, cache health) are still exported after the
    # time Ray's agent keeps a gauge that is not set again (2 report intervals, after up to
    # one interval on the way): every scrape across that whole span has them
    models = {m["name"] for m in gateway_config["models"]} | {"router"}
    interval_s = max(ray._config.metrics_report_interval_ms(), 1000) / 1000
    end = time.monotonic() + 3 * interval_s + 5
    while time.monotonic() < end:
        samples = scrape(metrics_port)
        up = {labels["model"] for labels, v in samples.get("ray_fusion_replica_up", [])
              if v == 1}
        assert models <= up, f"replica_up missing for {sorted(models - up)}"
        assert {v for _, v in samples.get("ray_fusion_cache_healthy", [])} & {0, 1}
        assert samples.get("ray_fusion_requests_in_flight")
        assert samples.get("ray_fusion_model_in_flight")
        time.sleep(1)


def test_one_trace_holds_router_and_replica_spans(http, otlp):
    trace_id, parent = uuid.uuid4().hex, uuid.uuid4().hex[:16]
    r = http.post("/v1/pipelines/clip_zero_shot", json=clip_inputs((11, 12, 13)),
                  headers={"traceparent": f"00-{trace_id}-{parent}-01",
                           "Cache-Control": "no-store"})
    assert r.status_code == 200, r.text
    assert r.headers["x-trace-id"] == trace_id

    def complete(spans) -> bool:
        names = {s.name for s in spans if s.trace_id == trace_id}
        return {"POST /v1/pipelines/{name}", "model clip/zero_shot", "replica clip/zero_shot",
                "queue_wait", "compute"} <= names

    spans = [s for s in otlp.wait_for(complete, timeout=60) if s.trace_id == trace_id]
    by_name = {s.name: s for s in spans}
    assert complete(spans), sorted(by_name)
    assert by_name["POST /v1/pipelines/{name}"].parent_span_id == parent
    # the replica's span continues the router's model-call span, across processes
    assert by_name["replica clip/zero_shot"].parent_span_id == \
        by_name["model clip/zero_shot"].span_id
    replica = by_name["replica clip/zero_shot"].span_id
    assert by_name["queue_wait"].parent_span_id == replica
    assert by_name["compute"].parent_span_id == replica
