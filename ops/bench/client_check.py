"""Is the load client the bottleneck? httpx and aiohttp side by side on one no-op route.

Starts the embedded runtime with only the no-op backend (``noop_backend.py``: no model work),
then sends the same requests with one httpx ``AsyncClient`` and with one aiohttp session
(``_common.LoadClient``, what every benchmark here uses) at concurrency 1, 8 and 32. Where
a client's figure is far below the other's, that client, not the server, sets it.

    python ops/bench/client_check.py [--requests 800]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import yaml
from _common import ROOT, closed_loop, free_port
from noop_backend import TASKS

BODY = {"inputs": {"text": "a sentence"}}
HEADERS = {"Cache-Control": "no-store"}


async def httpx_loop(url: str, requests: int, concurrency: int) -> float:
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    remaining = requests
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                r = await client.post("/v1/models/noop/embed", json=BODY, headers=HEADERS)
                assert r.status_code == 200, r.text

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return requests / (time.perf_counter() - started)


async def aiohttp_loop(url: str, requests: int, concurrency: int) -> float:
    async def send(client):
        return await client.post("/v1/models/noop/embed", json=BODY, headers=HEADERS)

    return (await closed_loop(send, requests, concurrency, url)).throughput


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=800)
    args = parser.parse_args()
    port = free_port()
    cfg = Path(tempfile.mkdtemp()) / "noop.yaml"
    cfg.write_text(yaml.safe_dump({"applications": [{"args": {
        "models": [{"name": "noop", "family": "custom", "backend": "noop_backend:NoopEmbedding",
                    "source": f"path:{Path(__file__).parent}", "tasks": TASKS,
                    "max_batch_size": 32}]}}]}))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(Path(__file__).parent)])}
    proc = subprocess.Popen([sys.executable, "-m", "fusion.embedded", str(cfg), "--port",
                             str(port), "--metrics-port", "0"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        print(f"{'req/s on a no-op route':<26}{'httpx':>10}{'aiohttp':>10}")
        for conc in (1, 8, 32):
            asyncio.run(aiohttp_loop(url, 50, conc))  # warm
            a = asyncio.run(httpx_loop(url, args.requests, conc))
            b = asyncio.run(aiohttp_loop(url, args.requests, conc))
            print(f"{'concurrency ' + str(conc):<26}{a:>10.1f}{b:>10.1f}")
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)


if __name__ == "__main__":
    main()
