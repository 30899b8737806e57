"""A scripted fake gateway (``httpx.MockTransport``) to test the client's logic in isolation.

``FakeGateway`` answers by ``(method, path)`` from a table of handlers, or from a queue of
canned responses per route (for retry tests), and records every request it saw.
"""

from __future__ import annotations

import asyncio
import base64
import importlib.util
import io
import json
import sys
import wave
from collections import defaultdict, deque
from collections.abc import Callable
from typing import Any

import httpx
import pytest

if importlib.util.find_spec("fusion_client") is None:  # not installed: test the source tree
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1]))

from fusion_client import AsyncFusionClient, FusionClient

# A valid 2x1 RGB PNG, made without Pillow so tests without the extra can use it.
PNG = bytes.fromhex(
    "89504e470d0a1a0a0000000d49484452000000020000000108020000007b40e8dd"
    "0000000f49444154789c63fccfc0c0c0c0000006080101cb4776750000000049454e44ae426082")

PIPELINES = {"pipelines": [
    {"name": "caption_then_classify", "description": "Caption, then classify.",
     "inputs": {"image": {"type": "image", "required": True, "default": None},
                "labels": {"type": "list[text]", "required": True, "default": None}},
     "outputs": {"caption": "text", "labels": "labels"},
     "steps": {"caption": {"model": "captioner", "task": "caption", "needs": [], "when": None},
               "classify": {"model": "text", "task": "zero_shot", "needs": ["caption"],
                            "when": None}}},
    {"name": "text_to_image", "description": "Prompt to image.",
     "inputs": {"prompt": "text",
                "negative_prompt": {"type": "text", "required": False, "default": ""},
                "seed": {"type": "int", "required": False, "default": 0},
                "guidance": {"type": "float", "required": False, "default": 0.0},
                "then_caption": {"type": "bool", "required": False, "default": False}},
     "outputs": {"image": "image", "caption": "text"}, "steps": {}},
    {"name": "transcribe", "description": "", "inputs": {"audio": "audio"},
     "outputs": {"text": "text"}, "steps": {}},
    {"name": "gallery", "description": "", "inputs": {"images": "list[image]"},
     "outputs": {"images": "list[image]", "thumb": "image", "speech": "audio",
                 "vec": "embedding"}, "steps": {}},
]}

MODELS = {"models": [
    {"name": "captioner", "family": "caption", "backend": "transformers", "tasks": ["caption"],
     "source": "tiny:caption", "fingerprint": "abc", "device": "cpu", "dtype": "fp32"},
    {"name": "text", "family": "text", "backend": "embedding", "tasks": ["embed", "zero_shot"],
     "source": "tiny:text", "fingerprint": "def", "device": "cuda:0", "dtype": "fp16"},
]}

LABELS = [{"label": "cat", "score": 0.9}, {"label": "dog", "score": 0.1}]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def wav_info(data: bytes) -> tuple[int, int, int, int]:
    with wave.open(io.BytesIO(data), "rb") as w:
        return w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()


def sse(*events: tuple[str, Any]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()
                    for name, data in events)


def error_body(code: str, message: str, field: str | None = None, rid: str = "rid-1") -> dict:
    err = {"code": code, "message": message, "request_id": rid}
    if field:
        err["field"] = field
    return {"error": err}


def pipeline_result(outputs: dict, types: dict, cache: str = "miss", rid: str = "rid-1") -> dict:
    return {"outputs": outputs, "types": types,
            "steps": {"caption": {"ms": 12.5, "cached": False, "coalesced": False,
                                  "skipped": False}},
            "request_id": rid, "cache": cache}


def fresh(resp: httpx.Response) -> httpx.Response:
    """A copy: a client binds the response it receives to itself, so never hand one out twice."""
    return httpx.Response(resp.status_code, headers=resp.headers, content=resp.content)


Handler = Callable[[httpx.Request], httpx.Response]


class FakeGateway:
    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.routes: dict[tuple[str, str], Handler] = {
            ("GET", "/v1/pipelines"): lambda r: httpx.Response(200, json=PIPELINES),
            ("GET", "/v1/models"): lambda r: httpx.Response(200, json=MODELS),
            ("GET", "/healthz"): lambda r: httpx.Response(200, json={"status": "ok"}),
        }
        self.queued: dict[tuple[str, str], deque] = defaultdict(deque)

    def route(self, method: str, path: str, handler: Handler | dict | httpx.Response) -> None:
        if isinstance(handler, dict):
            body = handler
            handler = lambda r: httpx.Response(200, json=body)  # noqa: E731
        elif isinstance(handler, httpx.Response):
            resp = handler
            handler = lambda r: fresh(resp)  # noqa: E731
        self.routes[(method, path)] = handler

    def queue(self, method: str, path: str, *responses: httpx.Response | Exception) -> None:
        """Answer the next requests to this route with these, in order (then the route)."""
        self.queued[(method, path)].extend(responses)

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        key = (request.method, request.url.path)
        if self.queued.get(key):
            item = self.queued[key].popleft()
            if isinstance(item, Exception):
                if isinstance(item, httpx.RequestError):
                    item.request = request
                raise item
            return fresh(item)
        if key not in self.routes:
            return httpx.Response(404, json=error_body("not_found", f"no route {key}"))
        return self.routes[key](request)

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self.handler)

    def bodies(self, method: str = "POST") -> list[Any]:
        return [json.loads(r.content) for r in self.requests if r.method == method]

    def count(self, method: str, path: str) -> int:
        return sum(1 for r in self.requests if r.method == method and r.url.path == path)


class Sleeps(list):
    """Records the delays a client would have slept (sync and async)."""

    def sync(self, seconds: float) -> None:
        self.append(seconds)

    async def async_(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    monkeypatch.delenv("FUSION_URL", raising=False)
    monkeypatch.delenv("FUSION_API_KEY", raising=False)


@pytest.fixture
def gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def sleeps() -> Sleeps:
    return Sleeps()


@pytest.fixture
def client(gateway, sleeps):
    c = FusionClient(transport=gateway.transport)
    c._sleep = sleeps.sync
    yield c
    c.close()


@pytest.fixture
def make_async(gateway, sleeps):
    """Build an AsyncFusionClient on the fake gateway (use inside ``asyncio.run``)."""
    def make(**kwargs) -> AsyncFusionClient:
        c = AsyncFusionClient(transport=gateway.transport, **kwargs)
        c._sleep = sleeps.async_
        return c
    return make


class Run:
    """One ``fusion`` command's exit code and what it printed."""

    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err


@pytest.fixture
def fusion(gateway):
    """``fusion(*argv) -> Run``: the ``fusion`` command, in-process, on the fake gateway."""
    from fusion_client.cli import main

    def invoke(*argv: str) -> Run:
        out, err = io.StringIO(), io.StringIO()
        code = main(list(argv), transport=gateway.transport, stdout=out, stderr=err)
        return Run(code, out.getvalue(), err.getvalue())
    return invoke


@pytest.fixture
def cat(tmp_path):
    """A PNG file to pass as ``--image``."""
    path = tmp_path / "cat.png"
    path.write_bytes(PNG)
    return path


def run_async(coro):
    return asyncio.run(coro)
