"""Overload: what clients see when more work arrives than a model can do.

One Serve instance runs the gateway twice, each with only the tiny diffusion model (the
``text_to_image`` pipeline, ``Cache-Control: no-store`` so every request computes):
``bounded`` with the default admission limits (the model's queue bounded from its batch size,
the router's in-flight limit), and ``unbounded`` as before admission control (Serve's queue
unbounded, ``max_queued_requests: -1``). For each, side by side in one run:

1. capacity: a closed loop at the model's concurrency (``max_ongoing_requests``), in req/s;
2. open loop at ``--factor`` × that capacity for ``--seconds``: each arrival one request with
   the client timeout ``--client-timeout``; counted: answered 200, refused 503 (with
   ``Retry-After``), client timeouts, anything else; goodput = 200s answered while arrivals
   went on, per second, / capacity;
3. a burst of ``--burst`` requests at once (the issue's 96): the same counts.

Rejection latency is the time to a 503: the goal is milliseconds, never a client timeout.

    flock /tmp/fusion-ray.lock python ops/bench/overload.py [--steps 8 --size 64]
    python ops/bench/overload.py --runtime both --skip-unbounded   # Ray's, then embedded
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from _common import closed_loop, free_port, start_serve, stop_serve

# the built-in text_to_image without its optional caption step (no captioner served here)
TEXT_TO_IMAGE = {
    "name": "text_to_image", "description": "prompt -> image",
    "inputs": {"prompt": "text", "seed": {"type": "int", "default": 0},
               "steps": {"type": "int", "default": 4}, "width": {"type": "int", "default": 64},
               "height": {"type": "int", "default": 64}},
    "steps": {"generate": {"model": "diffusion", "task": "generate", "with": {
        "prompt": "$inputs.prompt", "seed": "$inputs.seed", "steps": "$inputs.steps",
        "width": "$inputs.width", "height": "$inputs.height"}}},
    "outputs": {"image": "$steps.generate.image"},
}


def app_args(bounded: bool) -> dict:
    """The default limits, or (``bounded=False``) Serve's unbounded queue as before."""
    model = {"name": "diffusion", "family": "diffusion", "source": "tiny:diffusion",
             "num_cpus": 0.1, "max_batch_size": 1}
    if not bounded:
        model["max_queued_requests"] = -1
    return {"models": [model], "router": {"num_cpus": 0.1}, "cache": {"enabled": False},
            "pipelines": [TEXT_TO_IMAGE], "pipeline_dirs": []}


@dataclass
class Outcomes:
    ok_ms: list[float] = field(default_factory=list)
    refused_ms: list[float] = field(default_factory=list)
    retry_after_ms: list[float] = field(default_factory=list)
    timeouts: int = 0
    other: dict[int, int] = field(default_factory=dict)
    seconds: float = 0.0
    window_s: float = 0.0  # arrivals happened in [0, window_s)
    ok_at: list[float] = field(default_factory=list)  # seconds from start to each 200
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, status: int | None, ms: float, headers: httpx.Headers | None,
            at: float = 0.0, message: str = "") -> None:
        if status == 200:
            self.ok_ms.append(ms)
            self.ok_at.append(at)
        elif status == 503:
            self.refused_ms.append(ms)
            reason = message.split(";")[0][:60]
            self.reasons[reason] = self.reasons.get(reason, 0) + 1
            if headers is not None and "retry-after-ms" in headers:
                self.retry_after_ms.append(float(headers["retry-after-ms"]))
        elif status is None:
            self.timeouts += 1
        else:
            self.other[status] = self.other.get(status, 0) + 1


def pct(values: list[float], q: float) -> str:
    if not values:
        return "-"
    values = sorted(values)
    return f"{values[min(len(values) - 1, int(q * len(values)))]:.0f}"


async def one(client: httpx.AsyncClient, path: str, body: dict, out: Outcomes,
              timeout: float, t0: float) -> None:
    started = time.perf_counter()
    try:
        r = await client.post(path, json=body, headers={"Cache-Control": "no-store"},
                              timeout=timeout)
        now = time.perf_counter()
        message = r.json().get("error", {}).get("message", "") if r.status_code >= 400 else ""
        out.add(r.status_code, (now - started) * 1000, r.headers, now - t0, message)
    except httpx.TimeoutException:
        out.add(None, (time.perf_counter() - started) * 1000, None)


def body(i: int, steps: int, size: int) -> dict:
    return {"inputs": {"prompt": f"overload {i}", "seed": i, "steps": steps, "width": size,
                       "height": size}}


async def open_loop(base: str, prefix: str, rate: float, seconds: float, steps: int,
                    size: int, timeout: float) -> Outcomes:
    out = Outcomes()
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=1000)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        jobs = []
        started = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            jobs.append(asyncio.ensure_future(one(client, f"{prefix}/v1/pipelines/text_to_image",
                                                  body(10_000 + i, steps, size), out, timeout,
                                                  started)))
        out.window_s = time.perf_counter() - started
        await asyncio.gather(*jobs)
        out.seconds = time.perf_counter() - started
    return out


async def burst(base: str, prefix: str, n: int, steps: int, size: int,
                timeout: float) -> Outcomes:
    out = Outcomes()
    limits = httpx.Limits(max_connections=n, max_keepalive_connections=n)
    async with httpx.AsyncClient(base_url=base, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(one(client, f"{prefix}/v1/pipelines/text_to_image",
                                   body(50_000 + i, steps, size), out, timeout, started)
                               for i in range(n)))
        out.seconds = time.perf_counter() - started
    return out


def report(label: str, out: Outcomes, capacity: float) -> str:
    # goodput: 200s answered while arrivals went on (the tail after them is not overload)
    window = out.window_s or out.seconds
    done = sum(1 for t in out.ok_at if t <= window)
    goodput = done / window if window else 0.0
    return (f"{label:<22} 200: {len(out.ok_ms):4d}  503: {len(out.refused_ms):4d}  "
            f"client timeouts: {out.timeouts:3d}  other: {out.other or 0}  "
            f"503 reasons: {out.reasons or '-'}\n"
            f"{'':<22} goodput {goodput:5.2f} req/s = {goodput / capacity:5.2f} x capacity "
            f"(200s within the {window:.1f}s of arrivals)   "
            f"200 latency p50/max {pct(out.ok_ms, .5)}/{pct(out.ok_ms, 1.0)} ms\n"
            f"{'':<22} 503 latency p50/p99/max {pct(out.refused_ms, .5)}/"
            f"{pct(out.refused_ms, .99)}/{pct(out.refused_ms, 1.0)} ms   "
            f"Retry-After-Ms p50 {pct(out.retry_after_ms, .5)}")


async def measure(base: str, prefix: str, args, label: str | None = None
                  ) -> tuple[float, Outcomes, Outcomes]:
    path = f"{prefix}/v1/pipelines/text_to_image"
    label = label or prefix[1:]
    for i in range(2):  # warm: the first call loads the model's code paths
        async with httpx.AsyncClient(base_url=base, timeout=120) as c:
            r = await c.post(path, json=body(i, args.steps, args.size),
                             headers={"Cache-Control": "no-store"})
            r.raise_for_status()
    counter = iter(range(20_000, 30_000))

    async def send(client: httpx.AsyncClient) -> httpx.Response:
        return await client.post(path, json=body(next(counter), args.steps, args.size),
                                 headers={"Cache-Control": "no-store"})

    cap = await closed_loop(send, args.capacity_requests, 2, base)
    capacity = cap.throughput
    print(f"{label:<22} capacity {capacity:5.2f} req/s (closed loop, 2 in flight, "
          f"median {statistics.median(cap.latencies_ms):.0f} ms)", flush=True)
    loop = await open_loop(base, prefix, capacity * args.factor, args.seconds, args.steps,
                           args.size, args.client_timeout)
    print(report(f"{label} open {args.factor:g}x", loop, capacity), flush=True)
    b = await burst(base, prefix, args.burst, args.steps, args.size, args.client_timeout)
    b.window_s = b.seconds
    print(report(f"{label} burst {args.burst}", b, capacity), flush=True)
    return capacity, loop, b


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="diffusion steps per image")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--factor", type=float, default=2.0, help="arrival rate / capacity")
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--burst", type=int, default=96)
    parser.add_argument("--capacity-requests", type=int, default=20)
    parser.add_argument("--client-timeout", type=float, default=30.0)
    parser.add_argument("--skip-unbounded", action="store_true")
    parser.add_argument("--runtime", choices=["ray", "embedded", "both"], default="ray",
                        help="embedded: the bounded app on python -m fusion.embedded (one "
                        "process, no Ray); both: Ray's, then the embedded one, in one run")
    args = parser.parse_args()
    if args.runtime in ("ray", "both"):
        measure_ray(args)
    if args.runtime in ("embedded", "both"):
        measure_embedded(args)


def measure_embedded(args: argparse.Namespace) -> None:
    """The bounded app on the embedded runtime, in a child process of its own."""
    import yaml

    port = free_port()
    cfg = Path(tempfile.mkdtemp()) / "overload.yaml"
    cfg.write_text(yaml.safe_dump({"applications": [{"args": app_args(True)}]}))
    proc = subprocess.Popen([sys.executable, "-m", "fusion.embedded", str(cfg), "--port",
                             str(port), "--metrics-port", "0"], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/v1/pipelines", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.5)
        asyncio.run(measure(base, "", args, label="embedded"))
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(30)


def measure_ray(args: argparse.Namespace) -> None:
    from ray import serve

    from fusion.serve.app import build_app

    base = start_serve(num_cpus=2)
    try:
        kinds = [("bounded", True)] + ([] if args.skip_unbounded else [("unbounded", False)])
        for name, bounded in kinds:
            serve.run(build_app(app_args(bounded)), name=name,
                      route_prefix=f"/{name}")
        print(f"text_to_image, tiny diffusion, {args.steps} steps, {args.size}x{args.size}, "
              f"no-store; open loop {args.factor:g}x capacity for {args.seconds:g}s, then "
              f"{args.burst} at once; client timeout {args.client_timeout:g}s", flush=True)
        for name, _ in kinds:
            asyncio.run(measure(base, f"/{name}", args))
    finally:
        stop_serve()


if __name__ == "__main__":
    main()
