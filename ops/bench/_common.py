"""What the benchmarks share: a local Serve instance, a closed-loop HTTP load, statistics.

Every figure is measured side by side in one run on the same machine, and printed as a ratio
to its baseline, so it can be rerun anywhere and compared.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


def tree_cpu_seconds(pid: int, *, include_root: bool = True) -> float:
    """User + system CPU seconds of ``pid`` and every process below it, so far.

    Why: on a shared 2-core machine another tenant's load moves every items/s figure, but
    hardly the CPU a server spends per item; both are reported. ``include_root=False`` leaves
    out ``pid`` itself (a benchmark that drives its own Ray driver measures what it started)."""
    import psutil

    try:
        root = psutil.Process(pid)
        procs = root.children(recursive=True) + ([root] if include_root else [])
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue
        total += t.user + t.system
    return total


def server_cpu() -> float:
    """CPU seconds of every process this one started (the server under test, Ray's processes
    or Infinity's), not of this process: the load client runs here."""
    return tree_cpu_seconds(os.getpid(), include_root=False)


@dataclass
class Load:
    latencies_ms: list[float]
    seconds: float
    cpu_s: float | None = None  # the measured server's CPU seconds over the run (cpu_of)

    def __add__(self, other: Load) -> Load:
        cpu = None if self.cpu_s is None or other.cpu_s is None else self.cpu_s + other.cpu_s
        return Load(self.latencies_ms + other.latencies_ms, self.seconds + other.seconds, cpu)

    def cpu_ms_per(self, items: int) -> float | None:
        """The server's CPU milliseconds per item (None when not measured)."""
        return None if self.cpu_s is None else self.cpu_s * 1000 / items

    @property
    def median(self) -> float:
        return statistics.median(self.latencies_ms)

    @property
    def p90(self) -> float:
        return statistics.quantiles(self.latencies_ms, n=10)[-1]

    @property
    def throughput(self) -> float:
        return len(self.latencies_ms) / self.seconds


@dataclass
class Reply:
    """What a benchmark reads of an answer (the few ``httpx.Response`` names it uses)."""

    status_code: int
    content: bytes
    headers: dict[str, str]

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")

    def json(self) -> Any:
        return json.loads(self.content)


class LoadClient:
    """An aiohttp session behind ``post``/``get`` shaped like httpx's.

    Why not httpx: measured here, one httpx ``AsyncClient`` tops out near 360 req/s at one
    connection and falls to ~230 req/s at 32, where aiohttp sends 850-1100 req/s to the same
    no-op route; the client, not the server, set the c=32 figures. Both sides of every ratio
    use this client."""

    def __init__(self, base_url: str, concurrency: int, timeout_s: float = 300) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession(
            base_url, connector=aiohttp.TCPConnector(limit=concurrency),
            timeout=aiohttp.ClientTimeout(total=timeout_s))

    async def request(self, method: str, path: str, *, json: Any = None,
                      headers: dict[str, str] | None = None, timeout: float | None = None
                      ) -> Reply:
        import aiohttp

        extra = {"timeout": aiohttp.ClientTimeout(total=timeout)} if timeout else {}
        async with self._session.request(method, path, json=json, headers=headers,
                                         **extra) as r:
            return Reply(r.status, await r.read(), dict(r.headers))

    async def post(self, path: str, **kw: Any) -> Reply:
        return await self.request("POST", path, **kw)

    async def get(self, path: str, **kw: Any) -> Reply:
        return await self.request("GET", path, **kw)

    async def __aenter__(self) -> LoadClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._session.close()


async def closed_loop(send: Callable[[LoadClient], Awaitable[Reply]],
                      requests: int, concurrency: int, base_url: str,
                      cpu_of: Callable[[], float] | None = None) -> Load:
    """``requests`` calls by ``concurrency`` workers, each sending its next when one returns.
    ``cpu_of``: the server's CPU seconds so far (``tree_cpu_seconds``), read before and after."""
    latencies: list[float] = []
    remaining = requests
    async with LoadClient(base_url, concurrency) as client:

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                r = await send(client)
                latencies.append((time.perf_counter() - started) * 1000)
                if r.status_code != 200:
                    raise RuntimeError(f"{r.status_code}: {r.text[:300]}")

        cpu_before = cpu_of() if cpu_of else None
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        seconds = time.perf_counter() - started
        cpu = cpu_of() - cpu_before if cpu_of and cpu_before is not None else None
        return Load(latencies, seconds, cpu)


def row(label: str, load: Load) -> str:
    return (f"{label:<44} median {load.median:8.2f} ms   p90 {load.p90:8.2f} ms   "
            f"{load.throughput:8.1f} req/s   (n={len(load.latencies_ms)})")
