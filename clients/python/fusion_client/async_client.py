"""The asyncio client, :class:`AsyncFusionClient`: the twin of
:class:`fusion_client.client.FusionClient`, with the same retry rules (see that module)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import httpx

from fusion_client._base import TimeoutTypes, _BaseClient, check_texts
from fusion_client._core import (
    REQUEST_ID_HEADER,
    EventStreamParser,
    Operation,
    Request,
    Response,
    check_response,
    is_event_stream,
    merge_inputs,
    transport_error,
)
from fusion_client.chat import ChatResult, ChatStreamParser, Messages, chat_request, parse_chat
from fusion_client.retrieval import (
    RerankResult,
    embeddings_request,
    is_image,
    parse_embeddings,
    parse_rerank,
    rerank_request,
)
from fusion_client.retry import Deadline
from fusion_client.types import (
    BatchResult,
    CacheStats,
    CallResult,
    Event,
    ModelInfo,
    PipelineInfo,
    PipelineResult,
)


class AsyncFusionClient(_BaseClient):
    """The asyncio twin of :class:`FusionClient`: same arguments, same methods, awaited
    (``stream`` returns an async iterator)."""

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: TimeoutTypes = 60.0, retries: int = 3, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 decode_images: bool = True, headers: Mapping[str, str] | None = None,
                 backoff: float = 0.5, max_backoff: float = 8.0) -> None:
        super().__init__(base_url, api_key, timeout, retries, decode_images, backoff,
                         max_backoff)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=timeout,
                                       transport=transport, headers=self._headers(headers))
        self._sleep: Callable[[float], Any] = asyncio.sleep

    # -- plumbing --
    async def aclose(self) -> None:
        await self._http.aclose()

    close = aclose

    async def __aenter__(self) -> AsyncFusionClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _drive(self, op: Operation) -> Any:
        try:
            request = next(op)
            while True:
                request = op.send(await self._send(request))
        except StopIteration as stop:
            return stop.value

    async def _send(self, req: Request) -> Response:
        deadline = Deadline(req.headers, self._clock)
        attempt = 0
        while True:
            try:
                r = await self._http.request(req.method, req.path, params=req.params,
                                             json=req.json,
                                             headers=deadline.headers(req.headers, attempt))
            except httpx.TransportError as exc:
                delay = deadline.fit(self.retry_policy.delay_after_error(attempt, exc))
                if delay is None:
                    raise transport_error(exc, self._timeout_seconds()) from exc
            else:
                delay = deadline.fit(self.retry_policy.delay_after_status(
                    attempt, r.status_code, r.headers))
                if delay is None:
                    return check_response(r.status_code, r.headers, r.content)
            await self._sleep(delay)
            attempt += 1

    # -- API --
    async def health(self) -> dict:
        return await self._drive(self._proto.health())

    async def pipelines(self) -> list[PipelineInfo]:
        return await self._drive(self._proto.pipelines())

    async def pipeline(self, name: str) -> PipelineInfo | None:
        return await self._drive(self._proto.pipeline_info(name))

    async def models(self) -> list[ModelInfo]:
        return await self._drive(self._proto.models())

    async def run(self, pipeline: str, inputs: Mapping[str, Any] | None = None, /, *,
                  cache_control: str | None = None, timeout_s: float | None = None,
                  **kwargs: Any) -> PipelineResult:
        return await self._drive(self._proto.run(pipeline, merge_inputs(inputs, kwargs),
                                                 cache_control, timeout_s))

    async def stream(self, pipeline: str, inputs: Mapping[str, Any] | None = None, /, *,
                     cache_control: str | None = None, timeout_s: float | None = None,
                     **kwargs: Any) -> AsyncIterator[Event]:
        """``async for event in client.stream(...)``."""
        request = await self._drive(self._proto.stream_request(
            pipeline, merge_inputs(inputs, kwargs), cache_control, timeout_s))
        deadline = Deadline(request.headers, self._clock)
        attempt = 0
        started = False
        while True:
            try:
                async with self._http.stream(
                        request.method, request.path, params=request.params,
                        json=request.json,
                        headers=deadline.headers(request.headers, attempt)) as r:
                    rid = r.headers.get(REQUEST_ID_HEADER)
                    if r.status_code >= 400 or not is_event_stream(r.headers):
                        await r.aread()
                        delay = deadline.fit(self.retry_policy.delay_after_status(
                            attempt, r.status_code, r.headers))
                        if delay is None:
                            yield self._proto.plain_stream_answer(r.status_code, r.headers,
                                                                  r.content)
                            return
                    else:
                        parser = EventStreamParser(self._proto, rid)
                        async for chunk in r.aiter_text():
                            for event in parser.feed(chunk):
                                started = True
                                yield event
                            if parser.done:
                                return
                        for event in parser.close():
                            yield event
                        return
            except httpx.TransportError as exc:
                delay = None if started else deadline.fit(
                    self.retry_policy.delay_after_error(attempt, exc))
                if delay is None:
                    raise transport_error(exc, self._timeout_seconds()) from exc
            await self._sleep(delay)
            attempt += 1

    async def call(self, model: str, task: str, inputs: Mapping[str, Any] | None = None, /, *,
                   cache_control: str | None = None, timeout_s: float | None = None,
                   **kwargs: Any) -> CallResult:
        return await self._drive(self._proto.call(model, task, merge_inputs(inputs, kwargs),
                                                  cache_control, timeout_s))

    async def call_many(self, model: str, task: str, items: list[Mapping[str, Any]], /, *,
                        cache_control: str | None = None) -> BatchResult:
        return await self._drive(self._proto.call_many(model, task, list(items), cache_control))

    async def embed(self, texts: list[Any], /, *, model: str = "text", task: str = "embed",
                    cache_control: str | None = None) -> list[list[float]]:
        if any(is_image(t) for t in texts):  # images: /v1/embeddings (see FusionClient.embed)
            resp = await self._send(embeddings_request(texts, model=model,
                                                       cache_control=cache_control))
            return parse_embeddings(resp.body, resp.request_id)
        result = await self.call_many(model, task, [{"text": t} for t in check_texts(texts)],
                                      cache_control=cache_control)
        return [o["embedding"] for o in result.outputs]

    async def rerank(self, query: str, documents: list[Any], /, *, model: str = "text",
                     top_n: int | None = None, return_documents: bool = False,
                     cache_control: str | None = None,
                     timeout_s: float | None = None) -> list[RerankResult]:
        """``FusionClient.rerank``: documents ranked by relevance to ``query``, best first."""
        resp = await self._send(rerank_request(query, documents, model=model, top_n=top_n,
                                               return_documents=return_documents,
                                               cache_control=cache_control,
                                               timeout_s=timeout_s))
        return parse_rerank(resp.body, resp.request_id)

    async def chat(self, messages: Messages = None, /, *, model: str = "llm",
                   prompt: str | None = None, system: str | None = None,
                   cache_control: str | None = None, timeout_s: float | None = None,
                   **params: Any) -> ChatResult:
        req = chat_request(messages, model=model, prompt=prompt, system=system,
                           cache_control=cache_control, timeout_s=timeout_s, **params)
        resp = await self._send(req)
        return parse_chat(resp.body, resp.request_id,
                          params.get("response_format") is not None)

    async def stream_chat(self, messages: Messages = None, /, *, model: str = "llm",
                          prompt: str | None = None, system: str | None = None,
                          cache_control: str | None = None, timeout_s: float | None = None,
                          **params: Any) -> AsyncIterator[str]:
        """``async for text in client.stream_chat(...)``."""
        req = chat_request(messages, model=model, prompt=prompt, system=system, stream=True,
                           cache_control=cache_control, timeout_s=timeout_s, **params)
        try:
            async with self._http.stream(req.method, req.path, json=req.json,
                                         headers=req.headers) as r:
                rid = r.headers.get(REQUEST_ID_HEADER)
                if r.status_code >= 400 or not is_event_stream(r.headers):
                    await r.aread()
                    yield parse_chat(check_response(r.status_code, r.headers,
                                                    r.content).body, rid).text
                    return
                parser = ChatStreamParser(rid)
                async for chunk in r.aiter_text():
                    for text in parser.feed(chunk):
                        yield text
                    if parser.done:
                        return
                for text in parser.close():
                    yield text
        except httpx.TransportError as exc:
            raise transport_error(exc, self._timeout_seconds()) from exc

    async def cache_stats(self) -> CacheStats:
        return await self._drive(self._proto.cache_stats())

    async def clear_cache(self) -> int:
        return await self._drive(self._proto.clear_cache())

    # -- learned fusion: the same as FusionClient's --
    async def feedback(self, request_id: str, label: str, *, step: str | None = None,
                       weight: float | None = None, pipeline: str | None = None) -> dict:
        return await self._drive(self._proto.feedback(request_id, label, step, weight,
                                                      pipeline))

    async def import_feedback(self, items: list[Mapping[str, Any]]) -> dict:
        return await self._drive(self._proto.import_feedback(items))

    async def fit(self, pipeline: str, *, step: str | None = None, since: float | None = None,
                  until: float | None = None, min_labels: int | None = None,
                  test_fraction: float | None = None) -> dict:
        return await self._drive(self._proto.fit(pipeline, step, since, until, min_labels,
                                                 test_fraction))

    async def profiles(self, pipeline: str) -> dict:
        return await self._drive(self._proto.profiles(pipeline))

    async def activate_profile(self, pipeline: str, profile: str, *, shadow: bool = False,
                               step: str | None = None) -> dict:
        return await self._drive(self._proto.activate_profile(pipeline, profile, shadow,
                                                              step))


    async def create_key(self, name: str, **fields: Any) -> dict:
        """See :meth:`FusionClient.create_key`."""
        return await self._drive(self._proto.create_key(name, fields))

    async def list_keys(self, owner: str | None = None) -> list[dict]:
        return await self._drive(self._proto.list_keys(owner))

    async def update_key(self, key_id: str, **changes: Any) -> dict:
        return await self._drive(self._proto.update_key(key_id, changes))

    async def revoke_key(self, key_id: str) -> dict:
        return await self._drive(self._proto.revoke_key(key_id))

    async def usage(self, *, key_id: str | None = None, day_from: str | None = None,
                    day_to: str | None = None, model: str | None = None,
                    pipeline: str | None = None) -> list[dict]:
        return await self._drive(self._proto.usage({"key_id": key_id, "from": day_from,
                                                    "to": day_to, "model": model,
                                                    "pipeline": pipeline}))
