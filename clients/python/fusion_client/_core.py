"""Everything the sync and async clients share, with no I/O ("sans-IO").

Each API operation is a generator: it yields a :class:`Request`, receives the checked
:class:`Response` back (errors already raised), may yield more requests (``run`` first looks up
the pipeline's declared input types, once per client) and finally returns the typed result.
The sync client drives these generators with ``httpx.Client``, the async one with
``httpx.AsyncClient``; request building, SSE parsing and value encoding live here, error
mapping in :mod:`fusion_client._http` and retry timing in :mod:`fusion_client.retry`.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

# REQUEST_ID_HEADER, transport_error and RetryPolicy are re-exported: _core was their home
from fusion_client._http import REQUEST_ID_HEADER as REQUEST_ID_HEADER
from fusion_client._http import Request, Response, check_response, error_from_body
from fusion_client._http import transport_error as transport_error
from fusion_client._version import __version__
from fusion_client.encoding import decode_outputs, encode_inputs
from fusion_client.errors import ServerError
from fusion_client.retry import RetryPolicy as RetryPolicy
from fusion_client.sse import ServerSentEvent, SSEDecoder
from fusion_client.types import (
    BatchResult,
    CacheStats,
    CallResult,
    Event,
    ModelInfo,
    PipelineInfo,
    PipelineResult,
    ProgressEvent,
    ResultEvent,
    StartEvent,
    StepEvent,
    TokenEvent,
)

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8000"
CACHE_CONTROL_VALUES = ("no-cache", "no-store")
TIMEOUT_HEADER = "X-Request-Timeout"

Operation = Generator[Request, Response, T]


# ---- the protocol ------------------------------------------------------------------------

def _seg(name: str) -> str:
    return quote(str(name), safe="")


def _cache_headers(cache_control: str | None) -> dict[str, str]:
    if cache_control is None:
        return {}
    if cache_control not in CACHE_CONTROL_VALUES:
        raise ValueError(f"cache_control must be one of {CACHE_CONTROL_VALUES}, "
                         f"got {cache_control!r}")
    return {"Cache-Control": cache_control}


def _deadline_headers(timeout_s: float | None) -> dict[str, str]:
    """``X-Request-Timeout``: the gateway refuses steps it cannot start in time and answers
    504 naming the step that ran out, instead of computing an answer nobody waits for."""
    if timeout_s is None:
        return {}
    if isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or timeout_s <= 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    return {TIMEOUT_HEADER: f"{timeout_s:g}"}


def merge_inputs(inputs: Mapping[str, Any] | None, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(inputs or {})
    merged.update(kwargs)
    return merged


def _without_none(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if v is not None}


class Protocol:
    """Request building and response parsing for one client (holds the pipeline types cache)."""

    def __init__(self, api_key: str | None = None, decode_images: bool = True) -> None:
        self.api_key = api_key
        self.decode_images = decode_images
        self._pipelines: dict[str, PipelineInfo] | None = None

    def default_headers(self) -> dict[str, str]:
        headers = {"User-Agent": f"fusion-client/{__version__}", "Accept": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    # -- listings --
    def health(self) -> Operation[dict]:
        resp = yield Request("GET", "/healthz")
        return resp.body

    def pipelines(self) -> Operation[list[PipelineInfo]]:
        resp = yield Request("GET", "/v1/pipelines")
        items = [PipelineInfo.model_validate(p) for p in _list_field(resp, "pipelines")]
        self._pipelines = {p.name: p for p in items}
        return items

    def models(self) -> Operation[list[ModelInfo]]:
        resp = yield Request("GET", "/v1/models")
        return [ModelInfo.model_validate(m) for m in _list_field(resp, "models")]

    def cache_stats(self) -> Operation[CacheStats]:
        resp = yield Request("GET", "/v1/cache/stats")
        return CacheStats.model_validate(resp.body or {})

    def clear_cache(self) -> Operation[int]:
        resp = yield Request("DELETE", "/v1/cache")
        body = resp.body if isinstance(resp.body, dict) else {}
        return int(body.get("deleted", 0))

    # -- keys and usage (docs/tenants.md) --
    def create_key(self, name: str, fields: Mapping[str, Any]) -> Operation[dict]:
        resp = yield Request("POST", "/v1/admin/keys", json={"name": name, **fields})
        return resp.body

    def list_keys(self, owner: str | None = None) -> Operation[list[dict]]:
        params = {"owner": owner} if owner else None
        resp = yield Request("GET", "/v1/admin/keys", params=params)
        return _list_field(resp, "data")

    def update_key(self, key_id: str, changes: Mapping[str, Any]) -> Operation[dict]:
        resp = yield Request("PATCH", f"/v1/admin/keys/{_seg(key_id)}", json=dict(changes))
        return resp.body

    def revoke_key(self, key_id: str) -> Operation[dict]:
        resp = yield Request("DELETE", f"/v1/admin/keys/{_seg(key_id)}")
        return resp.body

    def usage(self, filters: Mapping[str, str | None]) -> Operation[list[dict]]:
        params = {k: v for k, v in filters.items() if v}
        resp = yield Request("GET", "/v1/usage", params=params or None)
        return _list_field(resp, "data")

    def pipeline_info(self, name: str) -> Operation[PipelineInfo | None]:
        """The declared pipeline, from the cached listing (fetched again when name is new)."""
        if self._pipelines is None or name not in self._pipelines:
            yield from self.pipelines()
        return (self._pipelines or {}).get(name)

    # -- runs --
    def _pipeline_request(self, name: str, inputs: Mapping[str, Any],
                          cache_control: str | None, stream: bool,
                          timeout_s: float | None = None) -> Operation[Request]:
        headers = {**_cache_headers(cache_control), **_deadline_headers(timeout_s)}
        info = yield from self.pipeline_info(name)
        body = {"inputs": encode_inputs(inputs, info.input_types if info else None)}
        params = None
        if stream:
            params = {"stream": "true"}
            headers["Accept"] = "text/event-stream"
        return Request("POST", f"/v1/pipelines/{_seg(name)}", params=params, json=body,
                       headers=headers)

    def run(self, name: str, inputs: Mapping[str, Any], cache_control: str | None = None,
            timeout_s: float | None = None) -> Operation[PipelineResult]:
        request = yield from self._pipeline_request(name, inputs, cache_control, stream=False,
                                                    timeout_s=timeout_s)
        resp = yield request
        return self.parse_pipeline_result(resp.body, resp.request_id,
                                          resp.headers.get("x-fusion-cache"))

    def stream_request(self, name: str, inputs: Mapping[str, Any],
                       cache_control: str | None = None,
                       timeout_s: float | None = None) -> Operation[Request]:
        return (yield from self._pipeline_request(name, inputs, cache_control, stream=True,
                                                  timeout_s=timeout_s))

    def call(self, model: str, task: str, inputs: Mapping[str, Any],
             cache_control: str | None = None,
             timeout_s: float | None = None) -> Operation[CallResult]:
        body = {"inputs": encode_inputs(inputs, None)}
        resp = yield Request("POST", f"/v1/models/{_seg(model)}/{_seg(task)}", json=body,
                             headers={**_cache_headers(cache_control),
                                      **_deadline_headers(timeout_s)})
        data = dict(resp.body) if isinstance(resp.body, dict) else {}
        types = data.get("types") or {}
        data["outputs"] = decode_outputs(data.get("outputs") or {}, types, self.decode_images)
        data.setdefault("request_id", resp.request_id)
        return CallResult.model_validate(data)

    def call_many(self, model: str, task: str, items: list[Mapping[str, Any]],
                  cache_control: str | None = None) -> Operation[BatchResult]:
        if isinstance(items, Mapping | str | bytes) or not items:
            raise ValueError("items must be a non-empty list of input mappings")
        body = {"inputs": [encode_inputs(item, None) for item in items]}
        resp = yield Request("POST", f"/v1/models/{_seg(model)}/{_seg(task)}", json=body,
                             headers=_cache_headers(cache_control))
        data = dict(resp.body) if isinstance(resp.body, dict) else {}
        types = data.get("types") or {}
        data["outputs"] = [decode_outputs(o or {}, types, self.decode_images)
                           for o in data.get("outputs") or []]
        data.setdefault("request_id", resp.request_id)
        return BatchResult.model_validate(data)

    def parse_pipeline_result(self, body: Any, request_id: str | None = None,
                              cache_header: str | None = None) -> PipelineResult:
        if not isinstance(body, dict) or "outputs" not in body:
            raise ServerError("the gateway's result has no 'outputs'", request_id=request_id)
        data = dict(body)
        types = data.get("types") or {}
        data["outputs"] = decode_outputs(data.get("outputs") or {}, types, self.decode_images)
        if not data.get("request_id"):
            data["request_id"] = request_id
        if not data.get("cache") and cache_header:
            data["cache"] = cache_header
        return PipelineResult.model_validate(data)

    # -- learned fusion (docs/how-to/learned-fusion.md) --
    def feedback(self, request_id: str, label: str, step: str | None = None,
                 weight: float | None = None, pipeline: str | None = None) -> Operation[dict]:
        body = _without_none({"request_id": request_id, "label": label, "step": step,
                              "weight": weight, "pipeline": pipeline})
        resp = yield Request("POST", "/v1/feedback", json=body)
        return dict(resp.body or {})

    def import_feedback(self, items: list[Mapping[str, Any]]) -> Operation[dict]:
        resp = yield Request("POST", "/v1/feedback/import", json={"items": list(items)})
        return dict(resp.body or {})

    def fit(self, pipeline: str, step: str | None = None, since: float | None = None,
            until: float | None = None, min_labels: int | None = None,
            test_fraction: float | None = None) -> Operation[dict]:
        body = _without_none({"step": step, "since": since, "until": until,
                              "min_labels": min_labels, "test_fraction": test_fraction})
        resp = yield Request("POST", f"/v1/pipelines/{_seg(pipeline)}/fusion/fit", json=body)
        return dict(resp.body or {})

    def profiles(self, pipeline: str) -> Operation[dict]:
        resp = yield Request("GET", f"/v1/pipelines/{_seg(pipeline)}/fusion/profiles")
        return dict(resp.body or {})

    def activate_profile(self, pipeline: str, profile: str, shadow: bool = False,
                         step: str | None = None) -> Operation[dict]:
        resp = yield Request(
            "POST", f"/v1/pipelines/{_seg(pipeline)}/fusion/profiles/{_seg(profile)}/activate",
            json=_without_none({"shadow": shadow, "step": step}))
        return dict(resp.body or {})

    # -- streams --
    def parse_event(self, sse: ServerSentEvent, request_id: str | None) -> Event | None:
        """Typed event for one SSE event; raises the typed error on ``error``; ``None`` for
        events this SDK does not know (ignored, for forward compatibility)."""
        if sse.event not in ("start", "step", "progress", "token", "result", "error"):
            return None
        try:
            data = json.loads(sse.data) if sse.data else {}
        except ValueError as exc:
            raise ServerError(f"malformed {sse.event!r} event from the gateway: {exc}",
                              request_id=request_id) from exc
        if sse.event == "error":
            raise error_from_body(data, status=None, request_id=request_id,
                                  fallback_text=sse.data)
        if not isinstance(data, dict):
            raise ServerError(f"malformed {sse.event!r} event from the gateway",
                              request_id=request_id)
        if sse.event == "start":
            return StartEvent.model_validate(data)
        if sse.event == "step":
            return StepEvent.model_validate(data)
        if sse.event == "progress":
            return ProgressEvent.model_validate(data)
        if sse.event == "token":
            return TokenEvent.model_validate(data)
        return ResultEvent(result=self.parse_pipeline_result(data, request_id))

    def plain_stream_answer(self, status: int, headers: Mapping[str, str],
                            content: bytes) -> ResultEvent:
        """A stream request answered without an event stream: raise its error, or wrap the
        plain JSON result as the stream's one event."""
        resp = check_response(status, headers, content)
        return ResultEvent(result=self.parse_pipeline_result(
            resp.body, resp.request_id, headers.get("x-fusion-cache")))


def _list_field(resp: Response, key: str) -> list[Any]:
    body = resp.body
    if isinstance(body, dict):
        body = body.get(key)
    if not isinstance(body, list):
        raise ServerError(f"the gateway's answer has no {key!r} list", status=resp.status,
                          request_id=resp.request_id)
    return body


class EventStreamParser:
    """SSE text chunks in, typed events out; done once the ``result`` event has come."""

    def __init__(self, proto: Protocol, request_id: str | None) -> None:
        self._proto = proto
        self._request_id = request_id
        self._decoder = SSEDecoder()
        self.done = False

    def _typed(self, events: list[ServerSentEvent]) -> Iterator[Event]:
        # a generator: events before an ``error`` event in the same chunk still come out
        for sse in events:
            if self.done:
                return
            event = self._proto.parse_event(sse, self._request_id)
            if event is not None:
                self.done = isinstance(event, ResultEvent)
                yield event

    def feed(self, chunk: str) -> Iterator[Event]:
        return self._typed(self._decoder.feed(chunk))

    def close(self) -> Iterator[Event]:
        """The stream ended: the last events, then ``ServerError`` if no result came."""
        if not self.done:
            yield from self._typed(self._decoder.close())
        if not self.done:
            raise ServerError("the stream ended before a result", request_id=self._request_id)


def is_event_stream(headers: Mapping[str, str]) -> bool:
    return headers.get("content-type", "").split(";")[0].strip().lower() == "text/event-stream"
