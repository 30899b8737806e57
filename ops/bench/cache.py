"""What the cache buys: cached versus uncached text_to_image, cached versus a no-op endpoint,
and how many model executions 64 concurrent identical requests cost.

One Serve instance holds the gateway (tiny diffusion + caption models, two router replicas,
the Redis cache at $REDIS_URL or 127.0.0.1:6379 under a fresh namespace) and a no-op endpoint
(a FastAPI deployment that returns a constant) as the floor of any Serve HTTP request.

    python ops/bench/cache.py [--requests 200] [--redis-timeout 0.25]

Two generation settings: the pipeline's default (4 steps, 64x64) and an SD-like one (25 steps,
128x128) on the same tiny model.

Goals: cached ≤ 1.5× the no-op endpoint; cached ≥ 50× faster than uncached.
"""

import argparse
import asyncio
import json
import os
import uuid

import httpx
from _common import Load, closed_loop, row, start_serve, stop_serve
from fastapi import FastAPI, Request, Response
from ray import serve

noop_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(noop_api)
class Noop:
    """Reads the request body (as every real endpoint must) and returns ``size`` bytes (the
    size of the answer it stands beside) or a small constant."""

    @noop_api.post("/")
    async def noop(self, request: Request, size: int = 0) -> Response:
        await request.body()
        return Response(b"x" * size if size else b'{"outputs": {}}',
                        media_type="application/json")

    @noop_api.get("/empty")
    async def empty(self) -> Response:
        return Response(b'{"outputs": {}}', media_type="application/json")


ADMIN_KEY = "bench-admin-key"


def deploy(namespace: str, redis_timeout_s: float) -> None:
    from fusion.core.keys import hash_key
    from fusion.serve.app import build_app

    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    app = build_app({
        "models": [{"name": "diffusion", "family": "diffusion", "source": "tiny:diffusion",
                    "num_cpus": 0.1, "max_batch_size": 1},
                   {"name": "captioner", "family": "caption", "source": "tiny:caption",
                    "num_cpus": 0.1}],
        "cache": {"redis_url": redis_url, "namespace": namespace,
                  "redis_timeout_s": redis_timeout_s},
        "router": {"num_replicas": 2, "num_cpus": 0.1},
        # requests without a key; the admin key clears the bench's namespace at the end
        "auth": {"anonymous": True, "admin_key_hashes": [hash_key(ADMIN_KEY)]}})
    serve.run(app, name="fusion", route_prefix="/")
    serve.run(Noop.bind(), name="noop", route_prefix="/noop")


async def measure(base_url: str, requests: int, settings: list[tuple[int, int]]) -> None:
    async def noop_body(client):
        return await client.post("/noop/", json={"inputs": {"prompt": "x" * 40}})

    async def noop_empty(client):
        return await client.get("/noop/empty")

    await closed_loop(noop_body, 20, 1, base_url)
    await closed_loop(noop_empty, 20, 1, base_url)
    floor = await closed_loop(noop_body, requests, 1, base_url)
    bare = await closed_loop(noop_empty, requests, 1, base_url)
    print("Floors: a no-op Serve endpoint that reads its request body (as every endpoint that "
          "takes input must),\nand one that reads nothing (reading a body costs a round trip "
          "to Serve's proxy);\nbeside each cached answer, the no-op answering as many bytes.")
    print(row("no-op endpoint, reads the body", floor))
    print(row("no-op endpoint, reads nothing", bare))
    for steps, size in settings:
        body = {"inputs": {"prompt": "a lighthouse at dusk", "seed": 1, "steps": steps,
                           "width": size, "height": size}}

        async def uncached(client, body=body):
            return await client.post("/v1/pipelines/text_to_image", json=body,
                                     headers={"Cache-Control": "no-store"})

        async def cached(client, body=body):
            return await client.post("/v1/pipelines/text_to_image", json=body)

        await closed_loop(uncached, 3, 1, base_url)
        await closed_loop(cached, 10, 1, base_url)  # stores the answer, warms both routers
        async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
            answer_bytes = len((await cached(client)).content)

        async def same_size(client, body=body, n=answer_bytes):
            return await client.post(f"/noop/?size={n}", json=body)

        slow = await closed_loop(uncached, max(8, requests // 20), 1, base_url)
        hit, floor_same = Load([], 0.0), Load([], 0.0)
        for _ in range(10):  # alternate, so drift in the machine's load hits both alike
            hit += await closed_loop(cached, requests // 10, 1, base_url)
            floor_same += await closed_loop(same_size, requests // 10, 1, base_url)
        print(f"\ntext_to_image, tiny diffusion model on CPU: {steps} steps, {size}x{size} "
              f"(answer: {answer_bytes} bytes of JSON)")
        print(row("uncached (Cache-Control: no-store)", slow))
        print(row("cached (pipeline result from Redis)", hit))
        print(row("no-op reading the body, same-size answer", floor_same))
        print(f"{'uncached / cached':<44} median {slow.median / hit.median:8.1f} x   "
              "(goal >= 50)")
        print(f"{'cached / no-op, same-size answer':<44} median "
              f"{hit.median / floor_same.median:8.2f} x   (goal <= 1.5)")
        print(f"{'cached / no-op reading its body':<44} median "
              f"{hit.median / floor.median:8.2f} x")
        print(f"{'cached / no-op reading nothing':<44} median "
              f"{hit.median / bare.median:8.2f} x")
    steps, size = settings[0]
    fresh = {"inputs": {"prompt": f"coalesce {uuid.uuid4().hex}", "seed": 2, "steps": steps,
                        "width": size, "height": size}}
    async with httpx.AsyncClient(base_url=base_url, timeout=300,
                                 limits=httpx.Limits(max_connections=64)) as client:
        before = (await client.get("/v1/cache/stats")).json()
        responses = await asyncio.gather(*(client.post("/v1/pipelines/text_to_image",
                                                       json=fresh) for _ in range(64)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses][:3]
    flags = [r.json()["steps"]["generate"] for r in responses]
    computed = sum(not f["cached"] and not f["coalesced"] for f in flags)
    print(f"\n64 concurrent identical requests (2 router replicas): {computed} model "
          f"execution(s), {sum(f['coalesced'] for f in flags)} coalesced, "
          f"{sum(f['cached'] for f in flags)} served from the cache, "
          f"{len({r.json()['outputs']['image'] for r in responses})} distinct image(s)")
    print(f"cache stats before the burst ({before['scope']}):",
          json.dumps({k: before[k] for k in ("hits", "misses", "coalesced", "stores",
                                             "errors", "corrupt")}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--redis-timeout", type=float, default=0.1,
                        help="cache.redis_timeout_s for the gateway under test")
    args = parser.parse_args()
    namespace = f"bench-{uuid.uuid4().hex[:8]}"
    base_url = start_serve()
    try:
        deploy(namespace, args.redis_timeout)
        asyncio.run(measure(base_url, args.requests, [(4, 64), (25, 128)]))
        httpx.delete(f"{base_url}/v1/cache", timeout=30,
                     headers={"Authorization": f"Bearer {ADMIN_KEY}"}).raise_for_status()
    finally:
        stop_serve()


if __name__ == "__main__":
    main()
