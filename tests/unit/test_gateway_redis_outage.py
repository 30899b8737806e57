"""Redis stopped mid-run under the gateway: no failed request, and caching resumes by itself.

A dedicated throwaway redis-server (never the shared one) is stopped and restarted while
pipeline requests keep coming; models are counting fakes.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest

from fusion.cache import StepCache
from fusion.config import CacheConfig
from fusion.core.gateway import Gateway
from fusion.http.app import create_api
from tests.fakes import FakeModels, fake_config
from tests.redis_server import RedisServer

pytestmark = pytest.mark.redis  # a redis-server of its own (RedisServer)


@pytest.fixture
def server():
    srv = RedisServer().start()
    yield srv
    srv.stop()


async def test_redis_outage_fails_no_request_and_caching_resumes(server, caplog):
    # a generous per-command timeout: a stopped server refuses at once, and a slow answer on
    # a loaded machine must not open the breaker before the outage this test makes
    cfg = CacheConfig(redis_url=server.url, namespace="outage", redis_timeout_s=1.0)
    cache = StepCache.from_config(cfg, retry_after_s=0.2)
    fake = FakeModels()
    gw = Gateway(fake_config(cache=cfg.model_dump()), fake, cache)
    app = create_api(lambda: gw)
    body = {"inputs": {"prompt": "a fox", "seed": 1}}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://gw") as client:

        async def run() -> httpx.Response:
            r = await client.post("/v1/pipelines/text_to_image", json=body)
            assert r.status_code == 200, r.text
            return r

        await run()
        assert (await run()).headers["x-fusion-cache"] == "hit"
        server.stop()
        caplog.set_level(logging.WARNING, logger="fusion.cache")
        down = [await run() for _ in range(20)]  # all succeed, uncached
        assert {r.headers["x-fusion-cache"] for r in down} == {"miss"}
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1, [r.getMessage() for r in warnings]  # one per outage
        assert (await client.get("/v1/cache/stats")).json()["healthy"] is False
        server.start()  # an empty Redis, as after a restart without persistence
        deadline = time.monotonic() + 10
        while (await run()).headers["x-fusion-cache"] != "hit":  # the breaker retries
            assert time.monotonic() < deadline, "caching did not resume"
            await asyncio.sleep(0.05)
        assert (await client.get("/v1/cache/stats")).json()["healthy"] is True
    await cache.aclose()
