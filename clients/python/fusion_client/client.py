"""The clients: :class:`FusionClient` (blocking) and :class:`AsyncFusionClient` (asyncio).

Both expose the same methods and share all logic through :mod:`fusion_client._core`; the two
classes here only perform I/O (send requests, sleep between retries, read streams).

**Retries.** GET and DELETE are idempotent. POST ``run``/``call``/``stream`` are treated as
idempotent too: the gateway caches every step by content address and coalesces identical
requests in flight, so sending the same request twice computes it at most once and returns the
same answer. They are retried on HTTP 503 and on connection failures (never on 4xx, other 5xx
or a read timeout), ``retries`` times, with exponential backoff and jitter, honouring
``Retry-After``. A stream is only retried before its first event arrived. ``timeout_s`` is one
budget for the call: a retry sends what is left of it (``X-Request-Timeout``), and a retry
whose wait would use it up is not made — the 503 is the answer (:class:`retry.Deadline`).

The asyncio twin lives in :mod:`fusion_client.async_client` and is re-exported here, as are
the shared helpers (:mod:`fusion_client._base`) and :class:`SyncOverAsyncTransport`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import httpx

from fusion_client._base import (
    TimeoutTypes,
    _BaseClient,
    check_texts,
    resolve_api_key,
    resolve_base_url,
)
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
from fusion_client.async_client import AsyncFusionClient
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
from fusion_client.transport import SyncOverAsyncTransport
from fusion_client.types import (
    BatchResult,
    CacheStats,
    CallResult,
    Event,
    ModelInfo,
    PipelineInfo,
    PipelineResult,
)

__all__ = ["AsyncFusionClient", "FusionClient", "SyncOverAsyncTransport", "TimeoutTypes",
           "resolve_api_key", "resolve_base_url"]


class FusionClient(_BaseClient):
    """Blocking client of the fusion gateway.

    ``base_url`` defaults to ``$FUSION_URL`` or ``http://127.0.0.1:8000``; ``api_key`` to
    ``$FUSION_API_KEY`` (sent as ``Authorization: Bearer``). ``timeout`` is seconds per request
    (or an ``httpx.Timeout``); ``retries`` how many times a failed attempt is repeated (see the
    module doc). ``transport`` replaces the network: any ``httpx`` transport, e.g.
    ``httpx.MockTransport`` or ``httpx.ASGITransport(app)`` for an in-process gateway (an
    async transport is driven on a private event loop thread). ``decode_images=False`` leaves
    image outputs as encoded bytes instead of PIL images.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None,
                 timeout: TimeoutTypes = 60.0, retries: int = 3, *,
                 transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
                 decode_images: bool = True, headers: Mapping[str, str] | None = None,
                 backoff: float = 0.5, max_backoff: float = 8.0) -> None:
        super().__init__(base_url, api_key, timeout, retries, decode_images, backoff,
                         max_backoff)
        if transport is not None and not isinstance(transport, httpx.BaseTransport):
            transport = SyncOverAsyncTransport(transport)
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout, transport=transport,
                                  headers=self._headers(headers))
        self._sleep: Callable[[float], Any] = time.sleep

    # -- plumbing --
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> FusionClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _drive(self, op: Operation) -> Any:
        try:
            request = next(op)
            while True:
                request = op.send(self._send(request))
        except StopIteration as stop:
            return stop.value

    def _send(self, req: Request) -> Response:
        deadline = Deadline(req.headers, self._clock)
        attempt = 0
        while True:
            try:
                r = self._http.request(req.method, req.path, params=req.params, json=req.json,
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
            self._sleep(delay)
            attempt += 1

    # -- API --
    def health(self) -> dict:
        """``GET /healthz``."""
        return self._drive(self._proto.health())

    def pipelines(self) -> list[PipelineInfo]:
        """The pipelines the gateway serves, with their declared input/output types."""
        return self._drive(self._proto.pipelines())

    def pipeline(self, name: str) -> PipelineInfo | None:
        """One pipeline's declaration (from a cached listing), or ``None``."""
        return self._drive(self._proto.pipeline_info(name))

    def models(self) -> list[ModelInfo]:
        """The models the gateway serves."""
        return self._drive(self._proto.models())

    def run(self, pipeline: str, inputs: Mapping[str, Any] | None = None, /, *,
            cache_control: str | None = None, timeout_s: float | None = None,
            **kwargs: Any) -> PipelineResult:
        """Run a pipeline: ``client.run("caption_then_classify", image=path, labels=[...])``.

        Inputs come as keywords and/or a mapping; see :mod:`fusion_client.encoding` for the
        accepted value kinds. ``cache_control`` is ``"no-cache"`` (recompute, then store) or
        ``"no-store"`` (bypass the cache). ``timeout_s`` is the deadline the gateway works
        to (``X-Request-Timeout``): a step it cannot finish in time raises :class:`Timeout`
        naming the step; keep the client's own ``timeout`` above it.
        """
        return self._drive(self._proto.run(pipeline, merge_inputs(inputs, kwargs),
                                           cache_control, timeout_s))

    def stream(self, pipeline: str, inputs: Mapping[str, Any] | None = None, /, *,
               cache_control: str | None = None, timeout_s: float | None = None,
               **kwargs: Any) -> Iterator[Event]:
        """Run a pipeline and iterate over its events as they happen: :class:`StartEvent`
        when a step begins, :class:`ProgressEvent`, :class:`TokenEvent` (a language-model
        step's text), :class:`StepEvent` when a step ends, then one :class:`ResultEvent`.
        An ``error`` event raises the typed error; events this SDK does not know are
        skipped."""
        request = self._drive(self._proto.stream_request(
            pipeline, merge_inputs(inputs, kwargs), cache_control, timeout_s))
        return self._stream(request)

    def _stream(self, req: Request) -> Iterator[Event]:
        deadline = Deadline(req.headers, self._clock)
        attempt = 0
        started = False
        while True:
            try:
                with self._http.stream(req.method, req.path, params=req.params, json=req.json,
                                       headers=deadline.headers(req.headers, attempt)) as r:
                    rid = r.headers.get(REQUEST_ID_HEADER)
                    if r.status_code >= 400 or not is_event_stream(r.headers):
                        r.read()
                        delay = deadline.fit(self.retry_policy.delay_after_status(
                            attempt, r.status_code, r.headers))
                        if delay is None:
                            yield self._proto.plain_stream_answer(r.status_code, r.headers,
                                                                  r.content)
                            return
                    else:
                        parser = EventStreamParser(self._proto, rid)
                        for chunk in r.iter_text():
                            for event in parser.feed(chunk):
                                started = True
                                yield event
                            if parser.done:
                                return
                        yield from parser.close()
                        return
            except httpx.TransportError as exc:
                delay = None if started else deadline.fit(
                    self.retry_policy.delay_after_error(attempt, exc))
                if delay is None:
                    raise transport_error(exc, self._timeout_seconds()) from exc
            self._sleep(delay)
            attempt += 1

    def call(self, model: str, task: str, inputs: Mapping[str, Any] | None = None, /, *,
             cache_control: str | None = None, timeout_s: float | None = None,
             **kwargs: Any) -> CallResult:
        """Call one task of one model: ``client.call("captioner", "caption", image=path)``.

        The models listing carries no input types, so ``image``/``audio`` inputs are recognised
        by name (a ``str`` there is read as a file path when such a file exists)."""
        return self._drive(self._proto.call(model, task, merge_inputs(inputs, kwargs),
                                            cache_control, timeout_s))

    def call_many(self, model: str, task: str, items: list[Mapping[str, Any]], /, *,
                  cache_control: str | None = None) -> BatchResult:
        """One task over many items in one request, run by the model as one batch:
        ``client.call_many("clip", "embed_image", [{"image": "a.png"}, {"image": "b.png"}])``.
        Results come back in the order sent, each with its ``cached`` flag."""
        return self._drive(self._proto.call_many(model, task, list(items), cache_control))

    def embed(self, texts: list[Any], /, *, model: str = "text", task: str = "embed",
              cache_control: str | None = None) -> list[list[float]]:
        """Embeddings of ``texts``, in order, computed as one batch (``task="embed_text"`` for
        a CLIP model). With a CLIP model, items may be images too (``bytes``, a
        ``pathlib.Path``, a PIL image): then they go through ``/v1/embeddings``, texts and
        images in one request and one vector space."""
        if any(is_image(t) for t in texts):
            resp = self._send(embeddings_request(texts, model=model,
                                                 cache_control=cache_control))
            return parse_embeddings(resp.body, resp.request_id)
        return [o["embedding"] for o in self.call_many(
            model, task, [{"text": t} for t in check_texts(texts)],
            cache_control=cache_control).outputs]

    def rerank(self, query: str, documents: list[Any], /, *, model: str = "text",
               top_n: int | None = None, return_documents: bool = False,
               cache_control: str | None = None,
               timeout_s: float | None = None) -> list[RerankResult]:
        """Documents ranked by relevance to ``query``, best first (``/v1/rerank``): texts, or
        images with a CLIP model. Each result's ``index`` points into ``documents``."""
        resp = self._send(rerank_request(query, documents, model=model, top_n=top_n,
                                         return_documents=return_documents,
                                         cache_control=cache_control, timeout_s=timeout_s))
        return parse_rerank(resp.body, resp.request_id)

    def chat(self, messages: Messages = None, /, *, model: str = "llm",
             prompt: str | None = None, system: str | None = None,
             cache_control: str | None = None, timeout_s: float | None = None,
             **params: Any) -> ChatResult:
        """Ask a language model: ``client.chat("hello")`` or ``client.chat([{"role": "user",
        "content": "hello"}], max_tokens=64, temperature=0)``. ``params``: ``max_tokens``,
        ``temperature``, ``top_p``, ``stop``, ``seed``, ``n``, ``response_format`` (the
        answer parsed into ``.parsed``), ``tools``, ``tool_choice``, ``parallel_tool_calls``
        (calls in ``.tool_calls``) (``/v1/chat/completions``).
        Temperature 0 or a seed makes the answer deterministic, and cached."""
        req = chat_request(messages, model=model, prompt=prompt, system=system,
                           cache_control=cache_control, timeout_s=timeout_s, **params)
        resp = self._send(req)
        return parse_chat(resp.body, resp.request_id,
                          params.get("response_format") is not None)

    def stream_chat(self, messages: Messages = None, /, *, model: str = "llm",
                    prompt: str | None = None, system: str | None = None,
                    cache_control: str | None = None, timeout_s: float | None = None,
                    **params: Any) -> Iterator[str]:
        """``chat``, yielding the answer's text as the model generates it. Leaving the loop
        early closes the connection, which stops the generation on the gateway."""
        req = chat_request(messages, model=model, prompt=prompt, system=system, stream=True,
                           cache_control=cache_control, timeout_s=timeout_s, **params)
        try:
            with self._http.stream(req.method, req.path, json=req.json,
                                   headers=req.headers) as r:
                rid = r.headers.get(REQUEST_ID_HEADER)
                if r.status_code >= 400 or not is_event_stream(r.headers):
                    r.read()
                    yield parse_chat(check_response(r.status_code, r.headers,
                                                    r.content).body, rid).text
                    return
                parser = ChatStreamParser(rid)
                for chunk in r.iter_text():
                    yield from parser.feed(chunk)
                    if parser.done:
                        return
                yield from parser.close()
        except httpx.TransportError as exc:
            raise transport_error(exc, self._timeout_seconds()) from exc

    def cache_stats(self) -> CacheStats:
        """The gateway's cache counters."""
        return self._drive(self._proto.cache_stats())

    def clear_cache(self) -> int:
        """Clear the gateway's cache namespace (admin key); returns the number deleted."""
        return self._drive(self._proto.clear_cache())

    # -- learned fusion (docs/how-to/learned-fusion.md) --
    def feedback(self, request_id: str, label: str, *, step: str | None = None,
                 weight: float | None = None, pipeline: str | None = None) -> dict:
        """Label a fused answer by its ``request_id`` (``PipelineResult.request_id``); a
        second label for the same answer replaces the first."""
        return self._drive(self._proto.feedback(request_id, label, step, weight, pipeline))

    def import_feedback(self, items: list[Mapping[str, Any]]) -> dict:
        """Many labels at once: ``{"imported", "replaced", "errors": [{index, code, ...}]}``."""
        return self._drive(self._proto.import_feedback(items))

    def fit(self, pipeline: str, *, step: str | None = None, since: float | None = None,
            until: float | None = None, min_labels: int | None = None,
            test_fraction: float | None = None) -> dict:
        """Fit a fusion profile from the pipeline's labelled answers (admin key):
        ``{"profile": id, "evaluation": {...}, "params": {...}}``; stored inactive."""
        return self._drive(self._proto.fit(pipeline, step, since, until, min_labels,
                                           test_fraction))

    def profiles(self, pipeline: str) -> dict:
        """The pipeline's fusion profiles with their evaluation, state and live accuracy."""
        return self._drive(self._proto.profiles(pipeline))

    def activate_profile(self, pipeline: str, profile: str, *, shadow: bool = False,
                         step: str | None = None) -> dict:
        """Serve a profile (``handwritten``: the pipeline's own weights; rollback: an older
        id), or run it as the shadow (admin key)."""
        return self._drive(self._proto.activate_profile(pipeline, profile, shadow, step))
    # -- keys (admin key) and usage: docs/tenants.md --
    def create_key(self, name: str, **fields: Any) -> dict:
        """Issue a key (admin key): ``models``/``tasks``/``pipelines`` (globs), ``rpm``,
        ``tpm``, ``max_concurrency``, ``quota_*``, ``expires_at``, ``owner``, ``scopes``. The
        answer's ``key`` is the secret, shown this once."""
        return self._drive(self._proto.create_key(name, fields))

    def list_keys(self, owner: str | None = None) -> list[dict]:
        """Every issued key, without secrets (admin key)."""
        return self._drive(self._proto.list_keys(owner))

    def update_key(self, key_id: str, **changes: Any) -> dict:
        """Change a key's limits, allow-lists, owner or expiry (``None`` clears one)."""
        return self._drive(self._proto.update_key(key_id, changes))

    def revoke_key(self, key_id: str) -> dict:
        """Revoke a key: every router replica refuses it within seconds (admin key)."""
        return self._drive(self._proto.revoke_key(key_id))

    def usage(self, *, key_id: str | None = None, day_from: str | None = None,
              day_to: str | None = None, model: str | None = None,
              pipeline: str | None = None) -> list[dict]:
        """Usage rows per key, model or pipeline and UTC day: this key's own, or everyone's
        with an admin key (``key_id`` filters); days as ``YYYY-MM-DD``."""
        return self._drive(self._proto.usage({"key_id": key_id, "from": day_from,
                                              "to": day_to, "model": model,
                                              "pipeline": pipeline}))
