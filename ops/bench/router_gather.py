"""Router-side batching (``router_batch_wait_ms``): what one single call costs the router with
and without gathering, in one process, no Ray, no HTTP.

The gateway runs over a no-op model client (every call answers at once, so only the router's
work is measured: checks, cache keys, cache round trips, windows) and the real cache (Redis at
$REDIS_URL or 127.0.0.1:6379, under a fresh namespace; ``--memory`` for the in-process LRU).
``--concurrency`` callers each send their next call when one returns, for each setting:

- ``hits``: every item is in the cache (per-caller ``GET`` when off; one ``MGET`` per window
  when on, each caller waiting for its window);
- ``misses``: ``Cache-Control: no-store`` (the model is called for every item: one call per
  item when off, one list call per window when on).

Prints calls/s, router CPU per call (``time.process_time``; Redis's own CPU is not in it),
median latency, and model calls per 100 caller calls.

    python ops/bench/router_gather.py [--calls 3000] [--concurrency 32] [--waits 0,1,2,5]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
import uuid
from typing import Any

from fusion.cache import StepCache
from fusion.config import AppConfig, CacheConfig
from fusion.core.executor import CachePolicy
from fusion.core.gateway import Gateway


class NoopModels:
    """A model client that answers every item at once and counts the calls that reach it."""

    def __init__(self) -> None:
        self.calls = 0

    async def info(self, model: str) -> dict[str, Any]:
        return {"name": model, "fingerprint": f"noop-{model}"}

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0)  # a real call suspends at least once
        return {"embedding": [float(len(inputs["text"]))] * 8}

    async def call_many(self, model: str, task: str, items: list[dict]) -> list[dict]:
        self.calls += 1
        await asyncio.sleep(0)
        return [{"embedding": [float(len(i["text"]))] * 8} for i in items]


async def measure(wait_ms: float, policy: CachePolicy, texts: list[str], calls: int,
                  concurrency: int, cache_cfg: CacheConfig, batch: int) -> str:
    cfg = AppConfig.model_validate({
        "models": [{"name": "text", "family": "text", "source": "tiny:text-embedding",
                    "max_batch_size": batch, "router_batch_wait_ms": wait_ms}],
        "pipelines": [], "pipeline_dirs": [], "cache": cache_cfg.model_dump()})
    models = NoopModels()
    cache = StepCache.from_config(cache_cfg)
    gw = Gateway(cfg, models, cache)
    for text in texts:  # warm the cache (hits) and the fingerprint
        await gw.call_model("text", "embed", {"text": text})
    models.calls = 0
    latencies: list[float] = []
    remaining = calls

    async def worker(offset: int) -> None:
        nonlocal remaining
        i = offset
        while remaining > 0:
            remaining -= 1
            i += 1
            started = time.perf_counter()
            await gw.call_model("text", "embed", {"text": texts[i % len(texts)]}, policy)
            latencies.append((time.perf_counter() - started) * 1000)

    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(w * 7) for w in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    if gw.executor.gather is not None:
        await gw.executor.gather.aclose()
    await cache.clear()
    await cache.aclose()
    label = "off" if wait_ms == 0 else f"{wait_ms:g} ms"
    return (f"  wait {label:>6}: {calls / wall:8.0f} calls/s   {cpu / calls * 1e6:7.0f} µs CPU "
            f"per call   median {statistics.median(latencies):6.2f} ms   "
            f"{100 * models.calls / calls:5.1f} model calls per 100")


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--waits", default="0,1,2,5", help="router_batch_wait_ms values (0: off)")
    p.add_argument("--batch", type=int, default=32, help="max_batch_size (window limit)")
    p.add_argument("--memory", action="store_true", help="in-process LRU instead of Redis")
    args = p.parse_args()
    url = None if args.memory else os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    cache_cfg = CacheConfig(redis_url=url, namespace=f"bench-gather-{uuid.uuid4().hex[:8]}",
                            redis_timeout_s=2.0)
    waits = [float(w) for w in args.waits.split(",")]
    texts = [f"text number {i}" for i in range(256)]
    print(f"cache: {'memory' if url is None else url}; {args.calls} calls by "
          f"{args.concurrency} callers; window limit {args.batch} items")
    for name, policy in (("hits", CachePolicy()), ("misses (no-store)",
                                                   CachePolicy(read=False, write=False))):
        print(name)
        for wait in waits:
            print(await measure(wait, policy, texts, args.calls, args.concurrency, cache_cfg,
                                args.batch), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
