"""Open-loop load on the gateway: capacity, overload steps, and a soak.

Requests arrive as a Poisson process at a set rate whatever the gateway does (open loop: a
slow answer does not slow the arrivals, as with real users), drawn from a mix of pipelines.
Each step reports what a service-level objective reads:

- goodput: answers with 200 per second of the step, and as a fraction of capacity;
- latency of those answers, p50 / p99;
- rejections: 503s, how many carried ``Retry-After``, and how fast they came (p50 / p99 /
  max), because a refusal is only useful if it is quick;
- client timeouts (no answer within ``--timeout``) and any other status, by code.

Capacity is measured first, closed loop (``--capacity-concurrency`` clients back to back for
``--capacity-s``), unless given (``--capacity``). Steps are multiples of it (``--steps
0.5,1,2``), so "overload at 2x capacity" is one row. ``--soak N`` then runs N seconds at
``--soak-fraction`` (0.7) of capacity and reports errors and the memory (PSS) of the router
and each model's replicas, after warm-up and at the end.

    python ops/bench/load.py --start ops/serve/local.yaml            # its own gateway
    python ops/bench/load.py --url http://127.0.0.1:8000 --steps 1,2 # a running one
    python ops/bench/load.py --start ops/serve/local.yaml --steps 1 --soak 600

With ``--start`` it runs ``serve run <config>`` on a free port in a session of its own
(``REDIS_URL`` from the environment, if set, is used by the gateway), measures memory of
that session's processes only, and stops it with SIGINT at the end. Requests send
``Cache-Control: no-store`` (``--cache`` to allow the cache): a cached answer measures Redis,
not the models. The client runs on the same machine: on 2 cores it takes a share of them.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, free_port  # noqa: E402
from startup import stop_session  # noqa: E402

WORDS = ["cat", "dog", "lighthouse", "river", "red", "blue", "quiet", "storm", "phone",
         "coffee", "train", "market", "city", "forest", "music", "happy", "sad", "bright",
         "dark", "small", "large"]

# name: (pipeline, weight); inputs are built per request (fresh text and seeds)
DEFAULT_MIX = "embed=4,clip_zero_shot=2,caption_then_classify=2,text_to_image=1," \
              "transcribe_then_classify=1"


def sentence(rng: random.Random) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(8))


class Workload:
    """Builds the request bodies of the mix; media made once (a PNG, a TTS clip)."""

    def __init__(self, mix: str, seed: int) -> None:
        self.rng = random.Random(seed)
        self.mix = [(name, float(w)) for name, w in
                    (part.split("=") for part in mix.split(","))]
        self.image = ""
        self.audio = ""

    async def prepare(self, client: httpx.AsyncClient) -> None:
        import io

        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (64, 64), (200, 40, 40)).save(buf, format="PNG")
        self.image = base64.b64encode(buf.getvalue()).decode()
        if any(name == "transcribe_then_classify" for name, _ in self.mix):
            r = await client.post("/v1/models/tts/speak", json={"inputs": {
                "text": "I really love this wonderful phone."}})
            r.raise_for_status()
            self.audio = r.json()["outputs"]["audio"]

    def next(self) -> tuple[str, dict]:
        name = self.rng.choices([n for n, _ in self.mix], [w for _, w in self.mix])[0]
        labels = self.rng.sample(WORDS, 3)
        inputs = {
            "embed": lambda: {"text": sentence(self.rng)},
            "clip_zero_shot": lambda: {"image": self.image, "labels": labels},
            "caption_then_classify": lambda: {"image": self.image, "labels": labels},
            "fused_image_labels": lambda: {"image": self.image, "labels": labels},
            "text_to_image": lambda: {"prompt": sentence(self.rng),
                                      "seed": self.rng.randrange(1 << 30)},
            "transcribe_then_classify": lambda: {"audio": self.audio, "labels": labels},
        }[name]()
        return name, inputs


@dataclass
class Outcome:
    status: int | None  # None: client timeout or transport error
    ms: float
    done_at: float = 0.0  # perf_counter() when the answer (or the error) came
    retry_after: bool = False
    error: str = ""


@dataclass
class Step:
    label: str
    offered_rps: float
    seconds: float
    outcomes: list[Outcome] = field(default_factory=list)
    started: float = 0.0  # perf_counter() at the start of the arrivals

    def of(self, predicate) -> list[Outcome]:
        return [o for o in self.outcomes if predicate(o)]

    def summary(self, capacity: float | None) -> dict:
        ok = self.of(lambda o: o.status == 200)
        rejected = self.of(lambda o: o.status == 503)
        timeouts = self.of(lambda o: o.error == "timeout")
        others: dict[str, int] = {}
        for o in self.outcomes:
            if o.status not in (200, 503) and o.error != "timeout":
                key = str(o.status) if o.status else o.error
                others[key] = others.get(key, 0) + 1
        # goodput counts answers that came within the step: under overload the rest come
        # late (a backlog that drains after the arrivals stop), which is not capacity
        end = self.started + self.seconds
        goodput = sum(o.done_at <= end for o in ok) / self.seconds
        drain = max((o.done_at for o in self.outcomes), default=end) - end
        return {
            "step": self.label, "offered_rps": round(self.offered_rps, 2),
            "sent": len(self.outcomes), "goodput_rps": round(goodput, 2),
            "answered_late": sum(o.done_at > end for o in ok),
            "drain_s": round(max(drain, 0.0), 1),
            "goodput_of_capacity": round(goodput / capacity, 3) if capacity else None,
            "ok_p50_ms": pct(ok, 50), "ok_p99_ms": pct(ok, 99),
            "rejected_503": len(rejected),
            "rejected_with_retry_after": sum(o.retry_after for o in rejected),
            "reject_p50_ms": pct(rejected, 50), "reject_p99_ms": pct(rejected, 99),
            "reject_max_ms": round(max((o.ms for o in rejected), default=0), 1) or None,
            "client_timeouts": len(timeouts), "other_errors": others,
        }


def pct(outcomes: list[Outcome], q: int) -> float | None:
    values = sorted(o.ms for o in outcomes)
    if not values:
        return None
    if len(values) == 1:
        return round(values[0], 1)
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1)


async def one(client: httpx.AsyncClient, work: Workload, headers: dict) -> Outcome:
    name, inputs = work.next()
    started = time.perf_counter()
    try:
        r = await client.post(f"/v1/pipelines/{name}", json={"inputs": inputs},
                              headers=headers)
    except httpx.TimeoutException:
        now = time.perf_counter()
        return Outcome(None, (now - started) * 1000, now, error="timeout")
    except httpx.HTTPError as exc:
        now = time.perf_counter()
        return Outcome(None, (now - started) * 1000, now, error=type(exc).__name__)
    now = time.perf_counter()
    return Outcome(r.status_code, (now - started) * 1000, now,
                   retry_after="retry-after" in r.headers,
                   error="" if r.status_code == 200 else r.text[:200])


async def open_loop(client: httpx.AsyncClient, work: Workload, headers: dict, rate: float,
                    seconds: float, label: str) -> Step:
    """Poisson arrivals at ``rate``/s for ``seconds``; waits for every answer (or timeout)."""
    step = Step(label, rate, seconds)
    rng = random.Random(label)  # the same arrival times on every run
    tasks = []
    start = step.started = time.perf_counter()
    at = rng.expovariate(rate)
    while at < seconds:
        delay = start + at - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(client, work, headers)))
        at += rng.expovariate(rate)
    step.outcomes = list(await asyncio.gather(*tasks))
    return step


async def closed_loop(client: httpx.AsyncClient, work: Workload, headers: dict,
                      concurrency: int, seconds: float) -> Step:
    """Capacity: ``concurrency`` clients back to back; goodput is the rate it sustains."""
    step = Step(f"capacity (closed loop, {concurrency} clients)", 0, seconds)
    step.started = time.perf_counter()
    deadline = step.started + seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            step.outcomes.append(await one(client, work, headers))

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    step.seconds = time.perf_counter() - step.started  # the last answers came after
    step.offered_rps = len(step.outcomes) / step.seconds
    return step


# ---- memory of the gateway's processes ------------------------------------------------------

def gateway_memory(session: int | None) -> dict[str, float]:
    """PSS in MiB of Serve's router and model replicas, by deployment (summed over its
    replicas); limited to one session's processes when ``session`` is given."""
    import psutil

    found: dict[str, float] = {}
    for p in psutil.process_iter(["cmdline"]):
        try:
            title = (p.info["cmdline"] or [""])[0]
            if not title.startswith("ray::ServeReplica:") or \
                    (session is not None and os.getsid(p.pid) != session):
                continue
            deployment = title.split(":")[-1].split(".")[0].split(" ")[0]
            found[deployment] = found.get(deployment, 0) + p.memory_full_info().pss / 2**20
        except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
            continue
    return {k: round(v, 1) for k, v in sorted(found.items())}


async def soak(client: httpx.AsyncClient, work: Workload, headers: dict, rate: float,
               seconds: float, session: int | None, warmup_s: float) -> dict:
    """``seconds`` at ``rate`` in 30 s slices; memory after warm-up and at the end."""
    steps: list[Step] = []
    after_warmup: dict[str, float] = {}
    elapsed = 0.0
    while elapsed < seconds:
        span = min(30.0, seconds - elapsed)
        steps.append(await open_loop(client, work, headers, rate, span, f"soak {elapsed:.0f}s"))
        elapsed += span
        if not after_warmup and elapsed >= warmup_s:
            after_warmup = gateway_memory(session)
    end = gateway_memory(session)
    outcomes = [o for s in steps for o in s.outcomes]
    whole = Step(f"soak {seconds:.0f}s at {rate:.2f}/s", rate,
                 steps[-1].started + steps[-1].seconds - steps[0].started, outcomes,
                 steps[0].started)
    growth = {k: round(100 * (end[k] - v) / v, 1) for k, v in after_warmup.items()
              if k in end and v}
    return {"summary": whole.summary(None),
            "errors": sum(o.status != 200 for o in outcomes),
            "memory_mib_after_warmup": after_warmup, "memory_mib_end": end,
            "memory_growth_pct": growth}


# ---- a gateway of its own -------------------------------------------------------------------

def start_gateway(config: str) -> tuple[subprocess.Popen, str]:
    import yaml

    port = free_port()
    data = yaml.safe_load((ROOT / config).read_text())
    data["http_options"] = {**data.get("http_options", {}), "port": port,
                            "host": "127.0.0.1"}
    path = Path(f"/tmp/fusion-load-{port}.yaml")
    path.write_text(yaml.safe_dump(data))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    env.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models"))
    env.pop("RAY_ADDRESS", None)

    def own_session() -> None:
        os.setsid()
        signal.signal(signal.SIGINT, signal.SIG_DFL)

    proc = subprocess.Popen([str(Path(sys.executable).with_name("serve")), "run", str(path)],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=own_session)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            r = httpx.get(f"{url}/v1/models", timeout=60)
            if r.status_code == 200 and len(r.json()["models"]) == len(
                    data["applications"][0]["args"]["models"]):
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(1)
    stop_session(proc)
    raise SystemExit("the gateway did not start")


# ---- report ---------------------------------------------------------------------------------

def print_step(s: dict) -> None:
    share = f"{100 * s['goodput_of_capacity']:5.1f}%" if s["goodput_of_capacity"] else "     -"
    rejections = (f"503 {s['rejected_503']:4d} (Retry-After {s['rejected_with_retry_after']}, "
                  f"p50 {s['reject_p50_ms']} / p99 {s['reject_p99_ms']} / max "
                  f"{s['reject_max_ms']} ms)") if s["rejected_503"] else "503    0"
    print(f"{s['step']:<34} offered {s['offered_rps']:6.2f}/s  sent {s['sent']:5d}  "
          f"goodput {s['goodput_rps']:6.2f}/s {share}  ok p50 {s['ok_p50_ms']} / p99 "
          f"{s['ok_p99_ms']} ms  late {s['answered_late']} (drain {s['drain_s']} s)  "
          f"{rejections}  timeouts {s['client_timeouts']}  other {s['other_errors'] or 0}")


def overload_verdict(s: dict) -> dict[str, bool]:
    """Issue 9's overload goal, read off one step at >= 2x capacity."""
    rejected = s["rejected_503"]
    return {
        "goodput >= 90% of capacity": (s["goodput_of_capacity"] or 0) >= 0.9,
        "every 503 has Retry-After": s["rejected_with_retry_after"] == rejected,
        "every 503 in < 100 ms": rejected == 0 or (s["reject_max_ms"] or 0) < 100,
        "zero client timeouts": s["client_timeouts"] == 0,
        "no other errors": not s["other_errors"],
    }


async def run(args: argparse.Namespace, url: str, session: int | None) -> dict:
    headers = {} if args.cache else {"Cache-Control": "no-store"}
    limits = httpx.Limits(max_connections=2000, max_keepalive_connections=200)
    report: dict = {"url": url, "mix": args.mix, "timeout_s": args.timeout, "steps": []}
    async with httpx.AsyncClient(base_url=url, timeout=args.timeout, limits=limits) as client:
        work = Workload(args.mix, args.seed)
        await work.prepare(client)
        capacity = args.capacity
        if capacity is None:
            cap = await closed_loop(client, work, headers, args.capacity_concurrency,
                                    args.capacity_s)
            capacity = sum(o.status == 200 for o in cap.outcomes) / cap.seconds
            report["capacity_step"] = cap.summary(None)
            print_step(report["capacity_step"])
        report["capacity_rps"] = round(capacity, 2)
        print(f"capacity: {capacity:.2f} answers/s ({args.mix})")
        multiples = [float(m) for m in args.steps.split(",") if m]
        for multiple in multiples:
            step = await open_loop(client, work, headers, multiple * capacity, args.step_s,
                                   f"{multiple:g}x capacity")
            summary = step.summary(capacity)
            report["steps"].append(summary)
            print_step(summary)

        # A closed loop of a few clients can under-measure capacity (they wait on the mix's
        # slowest pipelines); then "2x capacity" is no overload, and the verdict says so.
        peak = max((x["goodput_rps"] for x in report["steps"]), default=0)
        report["peak_goodput_rps"] = peak
        for multiple, summary in zip(multiples, report["steps"], strict=True):
            if multiple >= 2:
                verdict = summary["overload_goal"] = {
                    "capacity measured (no step > 110% of it)": peak <= 1.1 * capacity,
                    **overload_verdict(summary)}
                print(f"overload goal at {multiple:g}x: " + ", ".join(
                    f"{k}: {'yes' if v else 'NO'}" for k, v in verdict.items()))
        if args.soak:
            report["soak"] = await soak(client, work, headers, args.soak_fraction * capacity,
                                        args.soak, session, min(120.0, args.soak / 5))
            print_step(report["soak"]["summary"])
            print(f"soak errors {report['soak']['errors']}; memory after warm-up "
                  f"{report['soak']['memory_mib_after_warmup']} MiB; end "
                  f"{report['soak']['memory_mib_end']} MiB; growth "
                  f"{report['soak']['memory_growth_pct']} %")
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running gateway")
    where.add_argument("--start", metavar="CONFIG", help="serve run CONFIG on a free port")
    parser.add_argument("--mix", default=DEFAULT_MIX, help="pipeline=weight,...")
    parser.add_argument("--capacity", type=float, help="answers/s; default: measure it")
    parser.add_argument("--capacity-concurrency", type=int, default=16)
    parser.add_argument("--capacity-s", type=float, default=20)
    parser.add_argument("--steps", default="0.5,1,2", help="multiples of capacity")
    parser.add_argument("--step-s", type=float, default=20)
    parser.add_argument("--timeout", type=float, default=30, help="client timeout, s")
    parser.add_argument("--soak", type=float, default=0, help="soak seconds (0: none)")
    parser.add_argument("--soak-fraction", type=float, default=0.7)
    parser.add_argument("--cache", action="store_true", help="let the cache answer")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write the report here too")
    args = parser.parse_args()

    proc = None
    if args.start:
        proc, url = start_gateway(args.start)
        session = proc.pid
    else:
        url, session = args.url, None
    try:
        report = asyncio.run(run(args, url, session))
    finally:
        if proc is not None:
            stop_session(proc)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
