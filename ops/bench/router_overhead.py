"""Router overhead: a 3-step pipeline through the fusion router versus a hand-written chain.

Both paths run in one Serve instance over the same no-op model deployments (they answer each
task with a well-formed constant, so the model costs nothing and only the plumbing is
measured), both are reached over HTTP through Serve's proxy, and both receive the same JSON
body with a base64 image. The router runs with its cache disabled, so every request walks
the whole graph; the chain is what a user would write by hand: decode, three awaited
``DeploymentHandle`` calls, encode.

    python ops/bench/router_overhead.py [--requests 300] [--observe]

Prints median/p90 latency and throughput for each path at concurrency 1 and 16, and the
ratio router / chain (goal: ≤ 1.1 at the median).

``--observe`` adds two more routers over the same models, measured in the same alternating
rounds: one with Prometheus metrics and the JSON access log on, one with tracing on as well
(every span exported over OTLP/HTTP to a sink in another process), and prints each one's
ratio to the router with observability off (goals: metrics ≤ 1.03, tracing ≤ 1.10).
The no-op models do not open replica spans, so the tracing figure is the router's cost.

``--tenants`` measures instead what per-key enforcement and accounting cost on a *cached*
request (the cheapest request, where a fixed cost shows most): two routers with the pipeline
cache on, side by side in alternating rounds, both answering every request from the cache:
anonymous (no key) and an issued key with an allow-list, rpm, concurrency and a quota (the
Lua check in a real Redis per request) and usage counted (flushed to SQLite every 2 s).
Goal: keyed / anonymous ≤ 1.05 at the median.
"""



import argparse
import asyncio
import base64
import subprocess
import sys

from _common import ROOT, Load, closed_loop, free_port, row, start_serve, stop_serve
from fastapi import FastAPI, Request
from ray import serve

PIPELINE = {
    "name": "three_steps",
    "description": "caption -> zero-shot over the caption -> embed the best label",
    "inputs": {"image": "image", "labels": "list[text]"},
    "steps": {
        "caption": {"model": "captioner", "task": "caption", "with": {"image": "$inputs.image"}},
        "classify": {"model": "text", "task": "zero_shot",
                     "with": {"text": "$steps.caption.text", "labels": "$inputs.labels"}},
        "embed": {"model": "text", "task": "embed",
                  "with": {"text": "$steps.classify.labels[0].label"}},
    },
    "outputs": {"caption": "$steps.caption.text", "labels": "$steps.classify.labels",
                "embedding": "$steps.embed.embedding"},
}


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
class NoopModel:
    """Answers every task instantly with a constant of the right shape."""

    def __init__(self, name: str) -> None:
        self.name = name

    def info(self) -> dict:
        return {"name": self.name, "family": "noop", "backend": "noop", "tasks": [],
                "source": "noop:", "fingerprint": f"noop-{self.name}", "device": "cpu",
                "dtype": "none"}

    async def call(self, task: str, inputs: dict, trace: dict | None = None) -> dict:
        if task == "caption":
            return {"text": "a photo of a cat"}
        if task == "zero_shot":
            n = len(inputs["labels"])
            return {"labels": [{"label": lab, "score": 1 / n} for lab in inputs["labels"]]}
        return {"embedding": [0.0] * 32}


chain_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0.1}, max_ongoing_requests=256)
@serve.ingress(chain_api)
class HandChain:
    """The baseline: the same three calls, written by hand against the handles."""

    def __init__(self, captioner, text) -> None:
        self.captioner, self.text = captioner, text

    @chain_api.post("/")
    async def run(self, request: Request) -> dict:
        inputs = (await request.json())["inputs"]
        image = base64.b64decode(inputs["image"])
        caption = await self.captioner.call.remote("caption", {"image": image,
                                                               "max_new_tokens": 20})
        labels = await self.text.call.remote("zero_shot", {
            "text": caption["text"], "labels": inputs["labels"], "template": "{}"})
        best = labels["labels"][0]["label"]
        embedding = await self.text.call.remote("embed", {"text": best})
        return {"outputs": {"caption": caption["text"], "labels": labels["labels"],
                            "embedding": embedding["embedding"]}}


OFF = {"metrics": False, "access_log": "off", "otlp_endpoint": None}


def deploy_router(name: str, prefix: str, observability: dict, **extra: dict) -> None:
    from fusion.config import AppConfig
    from fusion.serve.ingress import Router

    config = AppConfig.model_validate({
        "models": [{"name": "captioner", "family": "caption", "source": "tiny:caption"},
                   {"name": "text", "family": "text", "source": "tiny:text-embedding"}],
        "pipeline_dirs": [], "pipelines": [PIPELINE], "cache": {"enabled": False},
        "router": {"num_cpus": 0.1}, "observability": observability, **extra})
    captioner = NoopModel.options(name="captioner").bind("captioner")
    text = NoopModel.options(name="text").bind("text")
    router = Router.options(ray_actor_options={"num_cpus": 0.1},
                            max_ongoing_requests=256).bind(
        config.model_dump(mode="json"), {"captioner": captioner, "text": text})
    serve.run(router, name=name, route_prefix=prefix)


def deploy(base_url: str, otlp_url: str | None = None) -> None:
    deploy_router("fusion", "/", OFF)
    if otlp_url is not None:
        deploy_router("metrics", "/metrics-on", {**OFF, "metrics": True, "access_log": "json"})
        deploy_router("traced", "/traced", {"metrics": True, "access_log": "json",
                                            "otlp_endpoint": otlp_url})
    captioner_h = serve.get_deployment_handle("captioner", app_name="fusion")
    text_h = serve.get_deployment_handle("text", app_name="fusion")
    serve.run(HandChain.bind(captioner_h, text_h), name="chain", route_prefix="/chain")


async def measure(base_url: str, requests: int, observe: bool = False) -> None:
    from tests.fakes import png

    body = {"inputs": {"image": base64.b64encode(png((10, 20, 30), 32)).decode(),
                       "labels": ["cat", "dog", "car"]}}

    async def router(client):
        return await client.post("/v1/pipelines/three_steps", json=body)

    async def chain(client):
        return await client.post("/chain/", json=body)

    async def metrics_on(client):
        return await client.post("/metrics-on/v1/pipelines/three_steps", json=body)

    async def traced(client):
        return await client.post("/traced/v1/pipelines/three_steps", json=body)

    paths = (router, chain, metrics_on, traced) if observe else (router, chain)
    for send in paths:  # warm every path (connections, handles, code paths)
        await closed_loop(send, 50, 4, base_url)
    print(f"3-step pipeline over no-op models, {requests} requests per cell, one Serve "
          "instance, HTTP through Serve's proxy\n")
    for concurrency in (1, 16):
        n = requests if concurrency == 1 else requests * 2
        # many short alternating rounds (ABBA...), so drift in the machine's load hits both
        # paths alike; on 2 shared cores a single long run of each swings by ±10 %
        rounds = 10
        totals = {send: Load([], 0.0) for send in paths}
        for i in range(rounds):
            for send in paths if i % 2 == 0 else paths[::-1]:
                totals[send] += await closed_loop(send, n // rounds, concurrency, base_url)
        r, c = totals[router], totals[chain]
        print(row(f"router        concurrency {concurrency:>2}", r))
        print(row(f"hand chain    concurrency {concurrency:>2}", c))
        print(f"{'ratio router / chain':<44} median {r.median / c.median:8.3f} x   "
              f"throughput {r.throughput / c.throughput:6.3f} x\n")
        if observe:
            for label, send in (("metrics + access log", metrics_on),
                                ("metrics + log + tracing", traced)):
                o = totals[send]
                print(row(f"{label:<24} c {concurrency:>2}", o))
                print(f"{'ratio ' + label + ' / off':<44} median {o.median / r.median:8.3f} x"
                      f"   throughput {o.throughput / r.throughput:6.3f} x\n")


def deploy_tenants(db_url: str, redis: str) -> tuple[str, str]:
    """The two cached routers of ``--tenants``; the tokens of a limited key and of a key
    with no limits (usage only)."""
    from fusion.store.database import Database
    from fusion.store.keys import KeyStore

    cache = {"enabled": True, "redis_url": None}
    deploy_router("anon", "/anon", OFF, cache=cache, auth={"anonymous": True})
    deploy_router("keyed", "/keyed", OFF, cache=cache, database={"url": db_url},
                  auth={"anonymous": False, "rate_limit_redis_url": redis})
    db = Database(db_url)
    try:
        store = KeyStore(db)
        _, limited = store.create("bench", models=["*"], pipelines=["three_*"],
                                  rpm=10_000_000, max_concurrency=10_000,
                                  quota_requests=1_000_000_000, quota_period="day")
        _, counted = store.create("bench-usage-only")
    finally:
        db.close()
    return limited, counted


async def measure_tenants(base_url: str, requests: int, tokens: tuple[str, str]) -> None:
    from tests.fakes import png

    body = {"inputs": {"image": base64.b64encode(png((10, 20, 30), 32)).decode(),
                       "labels": ["cat", "dog", "car"]}}
    keyed_headers = {"Authorization": f"Bearer {tokens[0]}"}
    usage_headers = {"Authorization": f"Bearer {tokens[1]}"}

    async def anon(client):
        r = await client.post("/anon/v1/pipelines/three_steps", json=body)
        assert r.status_code == 200, r.text
        return r

    async def keyed(client):
        r = await client.post("/keyed/v1/pipelines/three_steps", json=body,
                              headers=keyed_headers)
        assert r.status_code == 200, r.text
        return r

    async def usage_only(client):
        r = await client.post("/keyed/v1/pipelines/three_steps", json=body,
                              headers=usage_headers)
        assert r.status_code == 200, r.text
        return r

    paths = (anon, keyed, usage_only)
    for send in paths:  # warm, and fill each router's pipeline cache
        await closed_loop(send, 50, 4, base_url)
    import httpx

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        for send in paths:  # what is measured is a cache hit on both paths
            assert (await send(client)).headers["x-fusion-cache"] == "hit"
    print(f"cached 3-step pipeline (whole-pipeline cache hit), {requests} requests per cell, "
          "one Serve instance, HTTP through Serve's proxy\n")
    for concurrency in (1, 16):
        n = requests if concurrency == 1 else requests * 2
        rounds = 10
        totals = {send: Load([], 0.0) for send in paths}
        for i in range(rounds):
            for send in paths if i % 2 == 0 else paths[::-1]:
                totals[send] += await closed_loop(send, n // rounds, concurrency, base_url)
        a = totals[anon]
        print(row(f"anonymous        concurrency {concurrency:>2}", a))
        for label, send in (("key, usage only", usage_only), ("key+limits+usage", keyed)):
            k = totals[send]
            print(row(f"{label:<16} concurrency {concurrency:>2}", k))
            print(f"{'ratio ' + label + ' / anonymous':<44} median {k.median / a.median:8.3f} x"
                  f"   throughput {k.throughput / a.throughput:6.3f} x")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--observe", action="store_true",
                        help="also measure routers with metrics, access log and tracing on")
    parser.add_argument("--tenants", action="store_true",
                        help="measure per-key enforcement + usage on a cached request instead")
    args = parser.parse_args()
    if args.tenants:
        import tempfile

        from tests.redis_server import redis_url

        redis = redis_url()
        db_url = f"sqlite:///{tempfile.mkdtemp(prefix='fusion-bench-')}/fusion.db"
        base_url = start_serve()
        try:
            tokens = deploy_tenants(db_url, redis)
            asyncio.run(measure_tenants(base_url, args.requests, tokens))
        finally:
            stop_serve()
        return
    sink, otlp_url = None, None
    if args.observe:  # a collector stand-in in its own process, as a real one would be
        port = free_port()
        sink = subprocess.Popen([sys.executable, "-m", "tests.otlp_receiver", str(port)],
                                cwd=ROOT)
        otlp_url = f"http://127.0.0.1:{port}"
    base_url = start_serve()
    try:
        deploy(base_url, otlp_url)
        asyncio.run(measure(base_url, args.requests, args.observe))
    finally:
        stop_serve()
        if sink is not None:
            sink.terminate()
            sink.wait(10)


if __name__ == "__main__":
    main()
