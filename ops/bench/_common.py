"""What the benchmarks share: a local Serve instance, a closed-loop HTTP load, statistics.

Every figure is measured side by side in one run on the same machine, and printed as a ratio
to its baseline, so it can be rerun anywhere and compared.
"""

from __future__ import annotations

import asyncio
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_serve(num_cpus: int = 4) -> str:
    """A local Ray instance with Serve's HTTP proxy on a free port; returns the base URL."""
    import ray
    from ray import serve

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model_dir = os.environ.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))
    ray.init(num_cpus=num_cpus, include_dashboard=False, configure_logging=False,
             log_to_driver=False, runtime_env={"env_vars": {
                 "HF_HUB_OFFLINE": "1", "FUSION_MODEL_DIR": model_dir}})
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    return f"http://127.0.0.1:{port}"


def stop_serve() -> None:
    import ray
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@dataclass
class Load:
    latencies_ms: list[float]
    seconds: float

    def __add__(self, other: Load) -> Load:
        return Load(self.latencies_ms + other.latencies_ms, self.seconds + other.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.latencies_ms, n=10)[-1]

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds


async def closed_loop(send: Callable[[httpx.AsyncClient], Awaitable[httpx.Response]],
                      requests: int, concurrency: int, base_url: str) -> Load:
    """``requests`` calls by ``concurrency`` workers, each sending its next when one returns."""
    latencies: list[float] = []
    remaining = requests
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base_url, timeout=300, limits=limits) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                r = await send(client)
                latencies.append((time.perf_counter() - started) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:300]}")

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return Load(latencies, time.perf_counter() - started)


def row(label: str, load: Load) -> str:
    return (f"{label:<44} median {load.median:8.2f} ms   p90 {load.p90:8.2f} ms   "
            f"{load.throughput:8.1f} req/s   (n={len(load.latencies_ms)})")
