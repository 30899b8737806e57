"""OpenAI-compatible text generation: ``POST /v1/chat/completions`` and ``/v1/completions``.

Over the ``Gateway`` like every other route: each choice is one cached model call
(``Gateway.call_model``), so a temperature-0 or seeded request is cached and coalesced, and
a sampled one is not. ``stream: true`` answers OpenAI's SSE chunks, ending in
``data: [DONE]``.

Why it is built this way:

- The bodies are Pydantic models (so the OpenAPI document describes them); the error
  renderer names a bad field the way the client wrote it (``messages[1].role``) in OpenAI's
  error body. Fields OpenAI defines that the gateway cannot honour are refused, not ignored.
- A stream answers its status only once the first event is known: the replica checks the
  prompt against the context before its first token, so a prompt too long for the model is a
  400 with ``param``, never a 200 followed by an error.
- ``image_url`` parts (data URLs) are read by the gateway's captioner and OCR models, and the
  LLM sees their text: a text-only model can answer about an image.
- A client that leaves mid-stream cancels the calls (Starlette closes the generator), which
  cancels the replica's stream, which stops ``generate`` at the next token. A client that
  leaves a non-streamed request is noticed too (``http.disconnect`` while the choices run):
  the calls are cancelled, and the replica stops that row at its next token.
- With ``tools``, a choice's ``<tool_call>`` blocks become ``tool_calls`` (the replica
  parses them); a stream holds back text that may start one and sends the calls as
  ``tool_calls`` deltas when the choice ends, as OpenAI streams them.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from fusion.chat import chat_messages
from fusion.core.gateway import Gateway
from fusion.core.run_types import CachePolicy
from fusion.errors import BadInput, FusionError
from fusion.http.auth import require_key
from fusion.http.context import cache_policy, gateway, request_deadline, request_id
from fusion.http.errors import sse_error
from fusion.http.openai.chat_body import (
    MAX_CHOICES,
    ChatBody,
    CompletionBody,
    GenerationBody,
    generation_params,
)
from fusion.http.openai.compat import OPENAI_ERRORS, pick_model
from fusion.structured import safe_prefix

log = logging.getLogger("fusion.http.openai.chat")

router = APIRouter(tags=["openai"], dependencies=[Depends(require_key)])


def _reader(gw: Gateway, task: str) -> str | None:
    return next((n for n, m in gw.models.items() if task in m.tasks), None)


def _data_url(url: Any, where: str) -> bytes:
    if not isinstance(url, str) or not url.startswith("data:") or ";base64," not in url:
        raise BadInput(f"{where} must be a data URL (data:image/png;base64,...): the gateway "
                       "fetches nothing", field=where)
    try:
        return base64.b64decode(url.split(";base64,", 1)[1], validate=True)
    except (binascii.Error, ValueError):
        raise BadInput(f"{where} is not valid base64", field=where) from None


async def read_images(gw: Gateway, messages: Any, policy: CachePolicy,
                      deadline: float | None) -> Any:
    """``messages`` with each ``image_url`` part replaced by a text part: what the
    captioner and the OCR model read in it (run together, cached like any step)."""
    if not isinstance(messages, list):
        return messages
    out = []
    for i, msg in enumerate(messages):
        content = msg.get("content") if isinstance(msg, dict) else None
        if not isinstance(content, list):
            out.append(msg)
            continue
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "image_url":
                where = f"messages[{i}].content[{j}].image_url.url"
                url = part.get("image_url")
                image = _data_url(url.get("url") if isinstance(url, dict) else url, where)
                parts.append({"type": "text",
                              "text": await _describe(gw, image, where, policy, deadline)})
            else:
                parts.append(part)
        out.append({**msg, "content": parts})
    return out


async def _describe(gw: Gateway, image: bytes, where: str, policy: CachePolicy,
                    deadline: float | None) -> str:
    captioner, ocr = _reader(gw, "caption"), _reader(gw, "ocr")
    if captioner is None and ocr is None:
        raise BadInput("this gateway serves no captioner or OCR model to read images",
                       field=where)

    async def read(model: str | None, task: str) -> str:
        if model is None:
            return ""
        try:
            out, _ = await gw.call_model(model, task, {"image": image}, policy,
                                         deadline=deadline)
        except FusionError as err:
            if err.status < 500 and err.field:
                raise type(err)(err.message, field=where) from None
            raise
        return out["text"].strip()

    caption, text = await asyncio.gather(read(captioner, "caption"), read(ocr, "ocr"))
    lines = [f"[An image. It shows: {caption or 'nothing recognisable'}."]
    if text:
        lines.append(f"Text in the image: {text}")
    return "\n".join(lines) + "]"


Call = tuple[str, dict[str, Any]]  # (task, inputs) of one choice


class ClientGone(Exception):
    """The client disconnected before its non-streamed answer was ready."""


class Completion:
    """The n calls of one request, run together; events land on one queue in order."""

    def __init__(self, gw: Gateway, model: str, calls: list[Call], policy: CachePolicy,
                 deadline: float | None, stream: bool) -> None:
        self.gw, self.model, self.calls = gw, model, calls
        self.policy, self.deadline, self.stream = policy, deadline, stream
        self.queue: asyncio.Queue[tuple[str, int, Any]] = asyncio.Queue()
        self.jobs: list[asyncio.Task] = []
        self.request_id = "-"

    def start(self) -> None:
        self.jobs = [asyncio.create_task(self._one(i, task, inputs))
                     for i, (task, inputs) in enumerate(self.calls)]

    async def _one(self, index: int, task: str, inputs: dict[str, Any]) -> None:
        async def on_event(event: dict) -> None:
            if event.get("event") == "token":
                await self.queue.put(("token", index, event["text"]))

        try:
            out, _ = await self.gw.call_model(self.model, task, inputs, self.policy,
                                              on_event=on_event if self.stream else None,
                                              deadline=self.deadline)
            await self.queue.put(("done", index, out))
        except FusionError as err:
            await self.queue.put(("error", index, err))
        except Exception as exc:  # a bug: logged by the caller as a 500
            await self.queue.put(("error", index, exc))

    def cancel(self) -> None:
        for job in self.jobs:
            if not job.done():
                job.cancel()

    async def results(self, request: Request | None = None) -> list[dict]:
        """Every choice's result; a client that disconnects meanwhile cancels the calls."""
        watch = asyncio.ensure_future(_disconnected(request)) if request is not None else None
        try:
            return await self._results(watch)
        except BaseException:
            self.cancel()
            raise
        finally:
            if watch is not None:
                watch.cancel()

    async def _results(self, watch: asyncio.Future | None) -> list[dict]:
        out: list[dict] = [{} for _ in self.calls]
        left = len(self.calls)
        while left:
            getter = asyncio.ensure_future(self.queue.get())
            if watch is not None:
                await asyncio.wait({getter, watch}, return_when=asyncio.FIRST_COMPLETED)
                if not getter.done():
                    getter.cancel()
                    log.info("%s: the client left; its generation is cancelled",
                             self.request_id)
                    raise ClientGone()
            kind, index, value = await getter
            if kind == "error":
                self.cancel()
                raise value
            if kind == "done":
                out[index], left = value, left - 1
        return out


async def _disconnected(request: Request) -> None:
    """Returns when the client has gone (the body is read already: what comes next on the
    ASGI channel is ``http.disconnect``)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _message(out: dict) -> dict[str, Any]:
    """A choice's assistant message: content, and tool_calls when the model called any."""
    calls = out.get("tool_calls")
    if calls:
        return {"role": "assistant", "content": out["text"] or None, "tool_calls": calls}
    return {"role": "assistant", "content": out["text"]}


def _usage(outs: list[dict], calls: list[Call]) -> dict[str, int]:
    """Prompt tokens once per distinct prompt (n choices share one), completions summed."""
    prompts: dict[str, int] = {}
    for (_, inputs), out in zip(calls, outs, strict=True):
        key = json.dumps(inputs.get("messages") or inputs.get("prompt"), sort_keys=True)
        prompts[key] = out["usage"]["prompt_tokens"]
    prompt = sum(prompts.values())
    completion = sum(o["usage"]["completion_tokens"] for o in outs)
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion}


def _sse(data: Any) -> bytes:
    text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    return f"data: {text}\n\n".encode()


@dataclass
class Context:
    """The per-request context a completion runs with (from the route's dependencies)."""

    gw: Gateway
    policy: CachePolicy
    deadline: float | None
    request_id: str


async def respond(ctx: Context, body: GenerationBody, model: str, calls: list[Call],
                  chat: bool, request: Request | None = None) -> Response:
    """Run the calls; a JSON completion, or an SSE stream of chunks ending in [DONE]."""
    gw, stream = ctx.gw, body.stream
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    kind = "chat.completion" if chat else "text_completion"
    head = {"id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}",
            "object": kind, "created": int(time.time()), "model": model,
            "system_fingerprint": (await gw.fingerprint(model))[-16:]}
    run = Completion(gw, model, calls, ctx.policy, ctx.deadline, stream)
    run.request_id = ctx.request_id
    run.start()
    if not stream:
        try:
            outs = await run.results(request)
        except ClientGone:  # nobody reads an answer now: nginx's "client closed request"
            return Response(status_code=499)
        choices = [{"index": i, "finish_reason": out["finish_reason"], "logprobs": None,
                    **({"message": _message(out)} if chat else {"text": out["text"]})}
                   for i, out in enumerate(outs)]
        return JSONResponse({**head, "choices": choices, "usage": _usage(outs, calls)})
    try:
        first = await run.queue.get()
    except BaseException:
        run.cancel()
        raise
    if first[0] == "error":
        run.cancel()
        raise first[2]
    tools = chat and any(inputs.get("tools") for _, inputs in calls)
    return StreamingResponse(_chunks(run, first, {**head, "object": f"{kind}.chunk"}, chat,
                                     include_usage, tools),
                             media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _chunks(run: Completion, first: tuple[str, int, Any], head: dict, chat: bool,
                  include_usage: bool, tools: bool = False) -> AsyncIterator[bytes]:
    def chunk(index: int, text: str | None, reason: str | None = None,
              role: bool = False, calls: list[dict] | None = None) -> bytes:
        if chat:
            delta = ({"role": "assistant", "content": ""} if role else
                     {"tool_calls": calls} if calls is not None else
                     {"content": text} if text is not None else {})
            choice = {"index": index, "delta": delta}
        else:
            choice = {"index": index, "text": text or ""}
        choice |= {"finish_reason": reason, "logprobs": None}
        return _sse({**head, "choices": [choice]})

    outs: list[dict] = [{} for _ in run.calls]
    left = len(run.calls)
    seen = [""] * len(run.calls)  # with tools: text so far, and how much went out
    sent = [""] * len(run.calls)
    try:
        if chat:
            for i in range(len(run.calls)):
                yield chunk(i, None, role=True)
        event = first
        while True:
            kind, index, value = event
            if kind == "token" and tools:  # hold back what may start a <tool_call>
                seen[index] += value
                safe = seen[index][:safe_prefix(seen[index])]
                if len(safe) > len(sent[index]):
                    yield chunk(index, safe[len(sent[index]):])
                    sent[index] = safe
            elif kind == "token":
                yield chunk(index, value)
            elif kind == "error":
                yield _sse(sse_error(value, run.request_id, openai=True))
                return
            else:
                outs[index], left = value, left - 1
                if tools:
                    for delta in _tool_deltas(value, sent[index]):
                        yield chunk(index, delta.get("content"), calls=delta.get("tool_calls"))
                yield chunk(index, None, value["finish_reason"])
                if not left:
                    break
            event = await run.queue.get()
        if include_usage:
            yield _sse({**head, "choices": [], "usage": _usage(outs, run.calls)})
        yield _sse("[DONE]")
    finally:
        run.cancel()  # the client left (or the stream ended): stop generating for it


def _tool_deltas(out: dict, sent: str) -> list[dict[str, Any]]:
    """The end of a choice with tools: the content not streamed yet, then each call as
    OpenAI streams one (id, type and name first; then its arguments)."""
    deltas: list[dict[str, Any]] = []
    text = out["text"] or ""
    if text.startswith(sent) and len(text) > len(sent):
        deltas.append({"content": text[len(sent):]})
    for i, call in enumerate(out.get("tool_calls") or []):
        deltas.append({"tool_calls": [{"index": i, "id": call["id"], "type": "function",
                                       "function": {"name": call["function"]["name"],
                                                    "arguments": ""}}]})
        deltas.append({"tool_calls": [{"index": i, "function": {
            "arguments": call["function"]["arguments"]}}]})
    return deltas


async def context(gw: Gateway = Depends(gateway), policy: CachePolicy = Depends(cache_policy),
                  deadline: float | None = Depends(request_deadline),
                  rid: str = Depends(request_id)) -> Context:
    """The route's context; the deadline counts from arrival, so reading the images of a
    chat is charged to ``X-Request-Timeout`` too."""
    return Context(gw, policy, deadline, rid)


_ANSWERS = {200: {"content": {"application/json": {"schema": {"type": "object"}},
                              "text/event-stream": {}},
                  "description": "the completion; with stream, OpenAI's SSE chunks"},
            **OPENAI_ERRORS}


def _model(gw: Gateway, body: GenerationBody, task: str) -> str:
    return pick_model(gw, body.model, task)


@router.post("/v1/chat/completions", responses=_ANSWERS)
async def chat_completions(body: ChatBody, request: Request,
                           ctx: Context = Depends(context)) -> Response:
    """OpenAI's chat completions over any ``chat`` model."""
    model = _model(ctx.gw, body, "chat")
    params = generation_params(body)
    raw = [m.model_dump(exclude_none=True) for m in body.messages]
    messages = await read_images(ctx.gw, raw, ctx.policy, ctx.deadline)
    messages = chat_messages({"messages": messages})  # 4xx before any stream
    calls = [("chat", {"messages": messages, **_nth(params, i, body.n)})
             for i in range(body.n)]
    return await respond(ctx, body, model, calls, chat=True, request=request)


@router.post("/v1/completions", responses=_ANSWERS)
async def completions(body: CompletionBody, request: Request,
                      ctx: Context = Depends(context)) -> Response:
    """OpenAI's (legacy) text completions over any ``complete`` model."""
    model = _model(ctx.gw, body, "complete")
    params = generation_params(body)
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts or not all(prompts):
        raise BadInput("prompt must be a non-empty string or list of strings", field="prompt")
    if len(prompts) * body.n > MAX_CHOICES:
        raise BadInput(f"prompts x n is over {MAX_CHOICES} choices", field="n")
    calls = [("complete", {"prompt": p, **_nth(params, i, body.n)})
             for p in prompts for i in range(body.n)]
    return await respond(ctx, body, model, calls, chat=False, request=request)


def _nth(params: dict[str, Any], i: int, n: int) -> dict[str, Any]:
    """The i-th of n choices: a seed moves by i, so seeded choices differ and each is
    reproducible (greedy ones are alike anyway, and computed once)."""
    if n > 1 and params.get("seed") is not None:
        return {**params, "seed": params["seed"] + i}
    return params
