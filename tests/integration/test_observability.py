"""Observability end to end on the package's Serve app: a real Prometheus scrapes Ray's
metrics port and answers PromQL about step latency; one trace holds router and replica spans.
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

from tests.fakes import png
from tests.redis_server import free_port

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
