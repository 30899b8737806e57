"""Chat with a language model the gateway serves: requests to ``/v1/chat/completions`` and
the parsing of its answers, sans I/O (the clients in :mod:`fusion_client.client` send them).

``FusionClient.chat(...)`` returns a :class:`ChatResult`; ``stream_chat(...)`` yields the
answer's text as it is generated. ``response_format`` (JSON mode, a JSON schema: see
:func:`json_schema`) makes the answer JSON, parsed into ``ChatResult.parsed``; ``tools``
lets the model call functions (``ChatResult.tool_calls``, arguments as JSON strings).
Both speak the OpenAI wire format the gateway serves, so errors arrive as OpenAI error
bodies and are raised as this SDK's typed exceptions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from fusion_client._core import Request, _cache_headers, _deadline_headers, error_from_body
from fusion_client.errors import ServerError
from fusion_client.sse import SSEDecoder

Messages = str | Sequence[Mapping[str, Any]] | None
GENERATION_PARAMS = ("max_tokens", "temperature", "top_p", "stop", "seed", "n",
                     "response_format", "tools", "tool_choice", "parallel_tool_calls")


class ChatUsage(BaseModel):
    model_config = ConfigDict(extra="allow")

    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class ChatResult(BaseModel):
    """One chat answer: ``text`` (the first choice), every choice's text, why it ended
    (``stop``: end of text or a stop string; ``length``: ``max_tokens``), token counts."""

    model_config = ConfigDict(extra="allow")

    text: str
    finish_reason: str | None = None
    choices: list[str] = Field(default_factory=list)
    parsed: Any = None  # the JSON answer of a response_format request (None if cut short)
    tool_calls: list[dict[str, Any]] = Field(default_factory=list)  # OpenAI's shape
    usage: ChatUsage = Field(default_factory=ChatUsage)
    model: str | None = None
    request_id: str | None = None


def json_schema(schema: Mapping[str, Any], name: str = "response", strict: bool = True
                ) -> dict[str, Any]:
    """The ``response_format`` asking for JSON valid against ``schema``."""
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": dict(schema), "strict": strict}}


def conversation(messages: Messages, prompt: str | None, system: str | None
                 ) -> list[dict[str, Any]]:
    """OpenAI ``messages`` from a list of them, or from one user prompt (a string)."""
    if isinstance(messages, str):
        prompt, messages = messages, None
    if messages is not None and prompt is not None:
        raise ValueError("give messages or prompt, not both")
    if messages is None:
        if prompt is None:
            raise ValueError("chat needs messages or a prompt")
        messages = [{"role": "user", "content": prompt}]
    out = [dict(m) for m in messages]
    if system is not None:
        out.insert(0, {"role": "system", "content": system})
    return out


def chat_request(messages: Messages, *, model: str, prompt: str | None = None,
                 system: str | None = None, stream: bool = False,
                 cache_control: str | None = None, timeout_s: float | None = None,
                 **params: Any) -> Request:
    unknown = sorted(set(params) - set(GENERATION_PARAMS))
    if unknown:
        raise TypeError(f"unknown chat parameter(s) {unknown}; known: {GENERATION_PARAMS}")
    body: dict[str, Any] = {"model": model, "messages": conversation(messages, prompt, system),
                            **{k: v for k, v in params.items() if v is not None}}
    headers = {**_cache_headers(cache_control), **_deadline_headers(timeout_s)}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        headers["Accept"] = "text/event-stream"
    return Request("POST", "/v1/chat/completions", json=body, headers=headers)


def _parsed(text: str, finish_reason: str | None, structured: bool) -> Any:
    if not structured or finish_reason != "stop":
        return None
    try:
        return json.loads(text)
    except ValueError:
        return None


def parse_chat(body: Any, request_id: str | None, structured: bool = False) -> ChatResult:
    """``structured``: the request had a ``response_format``; the answer is parsed."""
    if not isinstance(body, dict) or not isinstance(body.get("choices"), list) \
            or not body["choices"]:
        raise ServerError("the gateway's chat answer has no choices", request_id=request_id)
    texts = [(c.get("message") or {}).get("content") or "" for c in body["choices"]]
    reason = body["choices"][0].get("finish_reason")
    calls = (body["choices"][0].get("message") or {}).get("tool_calls") or []
    return ChatResult(text=texts[0], finish_reason=reason, choices=texts,
                      parsed=_parsed(texts[0], reason, structured), tool_calls=calls,
                      usage=ChatUsage.model_validate(body.get("usage") or {}),
                      model=body.get("model"), request_id=request_id)


class ChatStreamParser:
    """SSE chunks of a chat stream in, text deltas of choice 0 out; ``result`` holds the
    whole answer once ``data: [DONE]`` came. An error chunk raises the typed error."""

    def __init__(self, request_id: str | None, structured: bool = False) -> None:
        self.request_id = request_id
        self.structured = structured
        self._calls: dict[int, dict[str, Any]] = {}  # choice 0's tool calls, by index
        self._decoder = SSEDecoder()
        self.done = False
        self._texts: dict[int, list[str]] = {}
        self._reasons: dict[int, str | None] = {}
        self._usage: dict[str, Any] = {}
        self._model: str | None = None

    def feed(self, chunk: str) -> Iterator[str]:
        for event in self._decoder.feed(chunk):
            yield from self._event(event.data)

    def close(self) -> Iterator[str]:
        for event in self._decoder.close():
            yield from self._event(event.data)
        if not self.done:
            raise ServerError("the chat stream ended before [DONE]", request_id=self.request_id)

    def _event(self, data: str) -> Iterator[str]:
        if self.done or not data:
            return
        if data.strip() == "[DONE]":
            self.done = True
            return
        try:
            chunk = json.loads(data)
        except ValueError as exc:
            raise ServerError(f"malformed chat chunk from the gateway: {exc}",
                              request_id=self.request_id) from exc
        if isinstance(chunk, dict) and "error" in chunk:
            raise error_from_body(chunk, status=None, request_id=self.request_id)
        self._model = chunk.get("model", self._model)
        self._usage = chunk.get("usage") or self._usage
        for choice in chunk.get("choices") or []:
            index = choice.get("index", 0)
            text = (choice.get("delta") or {}).get("content")
            if index == 0:
                self._tool_deltas((choice.get("delta") or {}).get("tool_calls") or [])
            if choice.get("finish_reason"):
                self._reasons[index] = choice["finish_reason"]
            if text:
                self._texts.setdefault(index, []).append(text)
                if index == 0:
                    yield text

    def _tool_deltas(self, deltas: list[dict[str, Any]]) -> None:
        """OpenAI streams a call as its id and name, then pieces of its arguments."""
        for delta in deltas:
            call = self._calls.setdefault(delta.get("index", 0), {
                "id": None, "type": "function", "function": {"name": None, "arguments": ""}})
            call["id"] = delta.get("id") or call["id"]
            fn = delta.get("function") or {}
            call["function"]["name"] = fn.get("name") or call["function"]["name"]
            call["function"]["arguments"] += fn.get("arguments") or ""

    @property
    def result(self) -> ChatResult:
        count = max([*self._texts, *self._reasons, 0]) + 1
        texts = ["".join(self._texts.get(i, [])) for i in range(count)]
        reason = self._reasons.get(0)
        return ChatResult(text=texts[0], finish_reason=reason, choices=texts,
                          parsed=_parsed(texts[0], reason, self.structured),
                          tool_calls=[self._calls[i] for i in sorted(self._calls)],
                          usage=ChatUsage.model_validate(self._usage), model=self._model,
                          request_id=self.request_id)
