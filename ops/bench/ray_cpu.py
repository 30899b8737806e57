"""Where a single request's CPU goes on the Ray runtime: CPU milliseconds per item of each
process Ray started (proxy, router, model replica, controller, GCS...), under one-text-per-
request MiniLM load at concurrency 32 (``Cache-Control: no-store``).

CPU time per item is steady on a shared machine where items/s are not; the sum over processes
is what ``serving.py`` prints as "server CPU ms per item".

    python ops/bench/ray_cpu.py [--requests 400 --concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import psutil  # noqa: E402
import serving  # noqa: E402
from _common import closed_loop  # noqa: E402


def snapshot(procs: list[psutil.Process]) -> dict[int, tuple[float, str]]:
    out = {}
    for p in procs:
        try:
            t = p.cpu_times()
            out[p.pid] = (t.user + t.system, " ".join(p.cmdline())[:70])
        except psutil.Error:
            continue
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    args = parser.parse_args()
    url = serving.deploy(["text"], Path("-"))  # no CLIP here: its path is never read
    try:
        asyncio.run(serving.wait_ready(url, ["text"]))
        bodies = [{"inputs": {"text": t}} for t in serving.TEXTS[:64]]
        counter = iter(range(10**9))

        async def one(client):
            return await client.post("/v1/models/text/embed",
                                     json=bodies[next(counter) % len(bodies)],
                                     headers={"Cache-Control": "no-store"})

        asyncio.run(closed_loop(one, 40, 8, url))  # warm
        procs = psutil.Process().children(recursive=True)
        before = snapshot(procs)
        load = asyncio.run(closed_loop(one, args.requests, args.concurrency, url))
        after = snapshot(procs)
        print(f"c={args.concurrency}: {load.throughput:.1f} items/s; CPU ms per item by process")
        rows = sorted(((after[p][0] - before[p][0], after[p][1]) for p in after
                       if p in before), reverse=True)
        for cpu, name in rows:
            if cpu > 0:
                print(f"  {cpu * 1000 / args.requests:7.2f}  {name}")
        print(f"  {sum(c for c, _ in rows) * 1000 / args.requests:7.2f}  all")
    finally:
        from ray import serve

        serve.shutdown()
        import ray

        ray.shutdown()


if __name__ == "__main__":
    main()
