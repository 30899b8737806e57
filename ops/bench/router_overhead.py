"""Router overhead: a 3-step pipeline through the fusion router versus a hand-written chain.

Both paths run in one Serve instance over the same no-op model deployments (they answer each
task with a well-formed constant, so the model costs nothing and only the plumbing is
measured), both are reached over HTTP through Serve's proxy, and both receive the same JSON
body with a base64 image. The router runs with its cache disabled, so every request walks
the whole graph; the chain is what a user would write by hand: decode, three awaited
``DeploymentHandle`` calls, encode.

    python ops/bench/router_overhead.py [--requests 300]

Prints median/p90 latency and throughput for each path at concurrency 1 and 16, and the
ratio router / chain (goal: ≤ 1.1 at the median).
"""



import argparse
import asyncio
import base64

from _common import Load, closed_loop, row, start_serve, stop_serve
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

    async def call(self, task: str, inputs: dict) -> dict:
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


def deploy(base_url: str) -> None:
    from fusion.config import AppConfig
    from fusion.ingress import Router

    config = AppConfig.model_validate({
        "models": [{"name": "captioner", "family": "caption", "source": "tiny:caption"},
                   {"name": "text", "family": "text", "source": "tiny:text-embedding"}],
        "pipeline_dirs": [], "pipelines": [PIPELINE], "cache": {"enabled": False},
        "router": {"num_cpus": 0.1}})
    captioner = NoopModel.options(name="captioner").bind("captioner")
    text = NoopModel.options(name="text").bind("text")
    router = Router.options(ray_actor_options={"num_cpus": 0.1},
                            max_ongoing_requests=256).bind(
        config.model_dump(mode="json"), {"captioner": captioner, "text": text})
    serve.run(router, name="fusion", route_prefix="/")
    captioner_h = serve.get_deployment_handle("captioner", app_name="fusion")
    text_h = serve.get_deployment_handle("text", app_name="fusion")
    serve.run(HandChain.bind(captioner_h, text_h), name="chain", route_prefix="/chain")


async def measure(base_url: str, requests: int) -> None:
    from tests.fakes import png

    body = {"inputs": {"image": base64.b64encode(png((10, 20, 30), 32)).decode(),
                       "labels": ["cat", "dog", "car"]}}

    async def router(client):
        return await client.post("/v1/pipelines/three_steps", json=body)

    async def chain(client):
        return await client.post("/chain/", json=body)

    for send in (router, chain):  # warm both paths (connections, handles, code paths)
        await closed_loop(send, 50, 4, base_url)
    print(f"3-step pipeline over no-op models, {requests} requests per cell, one Serve "
          "instance, HTTP through Serve's proxy\n")
    for concurrency in (1, 16):
        n = requests if concurrency == 1 else requests * 2
        # many short alternating rounds (ABBA...), so drift in the machine's load hits both
        # paths alike; on 2 shared cores a single long run of each swings by ±10 %
        rounds = 10
        totals = {router: Load([], 0.0), chain: Load([], 0.0)}
        for i in range(rounds):
            for send in (router, chain) if i % 2 == 0 else (chain, router):
                totals[send] += await closed_loop(send, n // rounds, concurrency, base_url)
        r, c = totals[router], totals[chain]
        print(row(f"router        concurrency {concurrency:>2}", r))
        print(row(f"hand chain    concurrency {concurrency:>2}", c))
        print(f"{'ratio router / chain':<44} median {r.median / c.median:8.3f} x   "
              f"throughput {r.throughput / c.throughput:6.3f} x\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    base_url = start_serve()
    try:
        deploy(base_url)
        asyncio.run(measure(base_url, args.requests))
    finally:
        stop_serve()


if __name__ == "__main__":
    main()
