"""Tokens/s of the ``llm`` family through the gateway vs the same model in-process.

    python ops/bench/llm.py [--source tiny:llm] [--tokens 64] [--requests 16] [--rounds 2]
    python ops/bench/llm.py --constrained [--source shape:qwen2.5-0.5b-instruct] ...

In-process: the backend the replica loads (``LlmModel``, 1 torch thread like the profile),
one request at a time and a batch of 8 (what ``@serve.batch`` hands the replica). Gateway:
Serve on a local Ray with that model and the router (both 0.1 CPU, as in
``ops/serve/local.yaml``), over HTTP through Serve's proxy: ``/v1/chat/completions`` with
one client (JSON, then SSE streaming: also the time to the first token) and with 8 clients.
Every request is greedy with ``Cache-Control: no-store``, so each one really generates. The
two sides alternate in rounds; the table prints completion tokens/s and the ratio
gateway / in-process at the same concurrency.

``--constrained``: what constrained decoding costs (``response_format`` with a JSON schema,
``deployments.grammar``), in-process only (the grammar runs in the replica): the same greedy
request with and without the schema, one at a time and as a batch, alternating in rounds.
The schema is one long string (``{"answer": "..."}``, ``minLength`` beyond what
``max_tokens`` can write), so both sides generate ``max_tokens`` tokens per request and the
figure is the per-token cost of the grammar (compiling it per request is included).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

import httpx
from _common import ROOT, start_serve, stop_serve

PROMPT = [{"role": "user", "content": "describe the photo in one sentence."}]


def schema(tokens: int) -> dict:
    """``{"answer": "..."}`` whose string is too long to close within ``tokens`` tokens (a
    token is at most 8 characters here), so both sides generate ``max_tokens`` tokens."""
    answer = {"type": "string", "minLength": 8 * tokens}
    return {"type": "json_schema", "json_schema": {"name": "answer", "strict": True, "schema": {
        "type": "object", "required": ["answer"], "properties": {"answer": answer}}}}


def load_model(source: str, threads: int = 1):
    from deployments.llm import LlmModel
    from fusion.config import ModelConfig

    cfg = ModelConfig.model_validate({"name": "llm", "family": "llm", "source": source,
                                      "threads": threads})
    return LlmModel.load(cfg)


def in_process(source: str, tokens: int, requests: int, batch: int,
               response_format: dict | None = None, model=None) -> dict[str, float]:
    model = model or load_model(source)
    item = model.prepare("chat", {"messages": PROMPT, "temperature": 0, "max_tokens": tokens,
                                  "response_format": response_format})
    model.run("chat", [item])  # warm-up
    out: dict[str, float] = {}
    for label, size in (("c=1", 1), (f"c={batch}", batch)):
        done, started = 0, time.perf_counter()
        for _ in range(max(1, requests // size)):
            results = model.run("chat", [item] * size)
            done += sum(r["usage"]["completion_tokens"] for r in results)
        out[label] = done / (time.perf_counter() - started)
    return out


async def _json_load(url: str, tokens: int, requests: int, concurrency: int) -> float:
    body = {"model": "llm", "messages": PROMPT, "temperature": 0, "max_tokens": tokens}
    done, left = 0, requests
    async with httpx.AsyncClient(base_url=url, timeout=300) as client:
        async def worker() -> None:
            nonlocal done, left
            while left > 0:
                left -= 1
                r = await client.post("/v1/chat/completions", json=body,
                                      headers={"Cache-Control": "no-store"})
                r.raise_for_status()
                done += r.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return done / (time.perf_counter() - started)


def _stream_load(url: str, tokens: int, requests: int) -> tuple[float, float]:
    """Tokens/s of streamed answers, one at a time, and the median time to first token."""
    body = {"model": "llm", "messages": PROMPT, "temperature": 0, "max_tokens": tokens,
            "stream": True, "stream_options": {"include_usage": True}}
    done, firsts = 0, []
    started = time.perf_counter()
    with httpx.Client(base_url=url, timeout=300) as client:
        for _ in range(requests):
            sent = time.perf_counter()
            first = None
            with client.stream("POST", "/v1/chat/completions", json=body,
                               headers={"Cache-Control": "no-store"}) as r:
                for line in r.iter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if first is None and chunk["choices"] and \
                            chunk["choices"][0]["delta"].get("content"):
                        first = time.perf_counter() - sent
                    if chunk.get("usage"):
                        done += chunk["usage"]["completion_tokens"]
            firsts.append((first or 0) * 1000)
    return done / (time.perf_counter() - started), statistics.median(firsts)


def constrained(args) -> None:
    """Tokens/s with and without a JSON schema, in-process, side by side in rounds."""
    from deployments import grammar

    model = load_model(args.source, args.threads)
    rows: dict[str, list[float]] = {}
    spent = [0.0]  # seconds inside the grammar's logits processor
    masked = grammar.GrammarLogits.__call__

    def timed(self, input_ids, scores):
        started = time.perf_counter()
        try:
            return masked(self, input_ids, scores)
        finally:
            spent[0] += time.perf_counter() - started

    grammar.GrammarLogits.__call__ = timed
    for _ in range(args.rounds):
        for name, fmt in (("free", None), ("JSON schema", schema(args.tokens))):
            spent[0], started = 0.0, time.perf_counter()
            for label, value in in_process(args.source, args.tokens, args.requests,
                                           args.batch, fmt, model).items():
                rows.setdefault(f"{name} {label}", []).append(value)
            if fmt is not None:  # the share of the constrained run spent masking
                rows.setdefault("grammar share of time, %", []).append(
                    100 * spent[0] / (time.perf_counter() - started))
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n{args.source}, greedy, max_tokens {args.tokens}, {args.rounds} rounds, "
          f"{args.threads} torch thread(s), device {model.device} "
          f"(median of rounds; completion tokens/s)  [{ROOT.name}]")
    for label, value in med.items():
        print(f"  {label:<24} {value:9.1f}   (rounds: "
              f"{', '.join(f'{v:.1f}' for v in rows[label])})")
    for c in ("c=1", f"c={args.batch}"):
        ratio = med[f"JSON schema {c}"] / med[f"free {c}"]
        print(f"  JSON schema / free, {c:<5}  {ratio:.3f}x  (cost {100 * (1 - ratio):+.1f} %)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--source", default="tiny:llm")
    ap.add_argument("--tokens", type=int, default=64, help="max_tokens per request")
    ap.add_argument("--requests", type=int, default=16, help="requests per measurement")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="concurrency = replica batch size")
    ap.add_argument("--constrained", action="store_true",
                    help="in-process tokens/s with and without a JSON schema")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (--constrained)")
    args = ap.parse_args()
    if args.constrained:
        return constrained(args)

    from ray import serve

    from fusion.serve.app import build_app

    url = start_serve(num_cpus=2)
    config = {"router": {"num_cpus": 0.1}, "cache": {"redis_url": None},
              "models": [{"name": "llm", "family": "llm", "source": args.source,
                          "num_cpus": 0.1, "threads": 1, "max_batch_size": args.batch}]}
    serve.run(build_app(config), name="fusion", route_prefix="/")
    rows: dict[str, list[float]] = {}
    try:
        asyncio.run(_json_load(url, args.tokens, 2, 1))  # warm-up: handles, replica
        for _ in range(args.rounds):
            for label, value in in_process(args.source, args.tokens, args.requests,
                                           args.batch).items():
                rows.setdefault(f"in-process {label}", []).append(value)
            rows.setdefault("gateway c=1 (JSON)", []).append(
                asyncio.run(_json_load(url, args.tokens, args.requests, 1)))
            rate, ttft = _stream_load(url, args.tokens, args.requests)
            rows.setdefault("gateway c=1 (SSE stream)", []).append(rate)
            rows.setdefault("time to first token, ms (SSE)", []).append(ttft)
            rows.setdefault(f"gateway c={args.batch} (JSON)", []).append(
                asyncio.run(_json_load(url, args.tokens, args.requests * 2, args.batch)))
    finally:
        stop_serve()
    med = {k: statistics.median(v) for k, v in rows.items()}
    print(f"\n{args.source}, greedy, max_tokens {args.tokens}, {args.rounds} rounds "
          f"(median of rounds; completion tokens/s)  [{ROOT.name}]")
    for label, value in med.items():
        print(f"  {label:<34} {value:9.1f}   (rounds: "
              f"{', '.join(f'{v:.1f}' for v in rows[label])})")
    one, many = med["in-process c=1"], med[f"in-process c={args.batch}"]
    print(f"  ratio gateway/in-process c=1 JSON    {med['gateway c=1 (JSON)'] / one:.2f}x")
    print(f"  ratio gateway/in-process c=1 stream  {med['gateway c=1 (SSE stream)'] / one:.2f}x")
    print(f"  ratio gateway/in-process c={args.batch} JSON    "
          f"{med[f'gateway c={args.batch} (JSON)'] / many:.2f}x")


if __name__ == "__main__":
    main()
