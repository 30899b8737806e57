"""Under load and faults, on both runtimes: a model's bounded queue answers 503 with a
computed Retry-After at once (never a client timeout), and a deadline is a 504 naming the
step. (Body limits and the rest of the failure paths: tests/unit/test_api_failures.py.)"""

from __future__ import annotations

import asyncio

import httpx
import pytest

pytestmark = pytest.mark.serve


@pytest.fixture(scope="module")
def gateway_url(runtime_url: str) -> str:
    """Ray Serve, then the embedded runtime (its queue bound is the same 2 + 8 per model)."""
    return runtime_url


async def test_past_the_models_queue_bound_clients_get_503_with_retry_after(gateway_url):
    # the profile's diffusion: max_batch_size 1 → 2 ongoing + 8 queued per router replica;
    # 2 router replicas (Serve) hold at most 20 of these 48 distinct, uncacheable requests,
    # the embedded runtime's one process 10
    limits = httpx.Limits(max_connections=48)
    async with httpx.AsyncClient(base_url=gateway_url, timeout=120, limits=limits) as client:
        responses = await asyncio.gather(*(client.post(
            "/v1/pipelines/text_to_image", headers={"Cache-Control": "no-store"},
            json={"inputs": {"prompt": f"queue {i}", "seed": i, "steps": 16}})
            for i in range(48)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) <= {200, 503}, statuses
    refused = [r for r in responses if r.status_code == 503]
    assert refused and statuses.count(200) >= 2, statuses
    for r in refused:
        err = r.json()["error"]
        assert err["code"] == "overloaded" and "diffusion" in err["message"]
        assert int(r.headers["retry-after"]) >= 1 and int(r.headers["retry-after-ms"]) > 0
        assert err["retry_after_ms"] == int(r.headers["retry-after-ms"])


def test_a_deadline_is_504_naming_the_step(http):
    r = http.post("/v1/pipelines/text_to_image", headers={
        "Cache-Control": "no-store", "X-Request-Timeout": "0.001"},
        json={"inputs": {"prompt": "too late", "steps": 8}})
    assert r.status_code == 504, r.text
    assert r.json()["error"]["code"] == "step_timeout"
    assert r.json()["error"]["field"] == "steps.generate"

