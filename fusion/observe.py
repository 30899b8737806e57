"""Metrics, access logs and the per-request record behind them, free of Ray.

Why a protocol: the gateway must be measurable in unit tests (a ``MemoryRecorder``) and in
Serve (``fusion.serve.metrics.RayRecorder``, which exports through ``ray.util.metrics`` so the
same code works on a cluster). Every metric the gateway exports is declared once in
``METRICS``; the Ray recorder, the Grafana dashboard test and the docs read that table.

Hooks are calls at the edges: the ASGI middleware (``ObserveMiddleware``) times each request
and writes its access-log line; the executor reports each step through ``Observer.step``.
Per-request facts that steps learn (which model refused, whether a step timed out) travel to
the request edge in a ``RequestRecord`` held in a context variable, so no signature changes.
"""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import logging
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from fusion.tracing import Tracing

# 2 ms cache hits to 30 s diffusion runs (and a bucket past it, so a 40 s run is not "+Inf").
LATENCY_BUCKETS_S = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                     20.0, 30.0, 60.0)
BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
EXPORT_PREFIX = "ray_"  # Ray's exporter prefixes every application metric with its namespace
STEP_OUTCOMES = ("computed", "cached", "coalesced", "skipped", "error")

Kind = Literal["counter", "histogram", "gauge"]


@dataclass(frozen=True)
class MetricDef:
    name: str
    kind: Kind
    description: str
    tags: tuple[str, ...]
    buckets: tuple[float, ...] = ()


_CACHE_COUNTERS = ("hits", "misses", "coalesced", "stores", "errors", "corrupt",
                   "skipped_too_large", "bytes_read", "bytes_written")

METRICS: dict[str, MetricDef] = {m.name: m for m in (
    MetricDef("fusion_requests_total", "counter", "HTTP requests by route, pipeline (or "
              "model) and status code", ("route", "pipeline", "status")),
    MetricDef("fusion_request_seconds", "histogram", "HTTP request latency at the router",
              ("route", "pipeline", "status"), LATENCY_BUCKETS_S),
    MetricDef("fusion_requests_in_flight", "gauge", "requests being served by this router "
              "replica", ()),
    MetricDef("fusion_step_seconds", "histogram", "pipeline step latency by outcome "
              "(computed, cached, coalesced, skipped, error)",
              ("pipeline", "step", "model", "task", "outcome"), LATENCY_BUCKETS_S),
    MetricDef("fusion_rejections_total", "counter", "requests refused with 503 (overloaded, "
              "no live replica), by the model that refused", ("pipeline", "model")),
    MetricDef("fusion_timeouts_total", "counter", "requests that ended in 504 (a step or "
              "request deadline), by the model that ran late", ("pipeline", "model")),
    MetricDef("fusion_queue_wait_seconds", "histogram", "time a model call waited in its "
              "replica (batch fill, forward-pass lock) before computing", ("model", "task"),
              LATENCY_BUCKETS_S),
    MetricDef("fusion_compute_seconds", "histogram", "time a model spent on the batch that "
              "carried the call", ("model", "task"), LATENCY_BUCKETS_S),
    MetricDef("fusion_batch_size", "histogram", "items per forward pass", ("model", "task"),
              BATCH_BUCKETS),
    MetricDef("fusion_router_batch_size", "histogram", "distinct items of the single calls "
              "the router gathered into one window (router_batch_wait_ms)", ("model", "task"),
              BATCH_BUCKETS),
    MetricDef("fusion_router_batch_wait_seconds", "histogram", "how long a router window "
              "stayed open before it was sent", ("model", "task"), LATENCY_BUCKETS_S),
    MetricDef("fusion_model_in_flight", "gauge", "calls inside this model replica (queued "
              "or computing)", ("model",)),
    MetricDef("fusion_replica_up", "gauge", "1 per live replica (model, or 'router')",
              ("model",)),
    MetricDef("fusion_feedback_total", "counter", "feedback labels received, by pipeline and "
              "the fusion profile that served the answer ('handwritten': the spec's weights)",
              ("pipeline", "profile")),
    MetricDef("fusion_profile_live_accuracy", "gauge", "share of labelled answers a fusion "
              "profile served whose top label was right", ("pipeline", "profile")),
    MetricDef("fusion_key_requests_total", "counter", "model calls and pipeline runs by key "
              "name (issued keys; 'static'/'admin'; 'anonymous') and outcome (ok, error)",
              ("key", "outcome")),
    MetricDef("fusion_key_rejections_total", "counter", "requests a key's rate limit, "
              "concurrency or quota refused (429), by key name and reason", ("key", "reason")),
    MetricDef("fusion_limiter_errors_total", "counter", "limit checks that could not reach "
              "Redis (then failed open or closed as auth.on_limiter_error says)", ()),
    MetricDef("fusion_cache_healthy", "gauge", "1 while the cache backend answers, else 0",
              ()),
    *(MetricDef(f"fusion_cache_{c}_total", "counter", f"cache {c} by model and task",
                ("model", "task")) for c in _CACHE_COUNTERS),
)}


def exported_series() -> set[str]:
    """The series names Prometheus sees for ``METRICS`` (with Ray's prefix and suffixes)."""
    names: set[str] = set()
    for m in METRICS.values():
        base = EXPORT_PREFIX + m.name
        if m.kind == "histogram":
            names |= {f"{base}_bucket", f"{base}_count", f"{base}_sum"}
        else:
            names.add(base)
    return names


# Counters whose label values a router knows when it starts: created at 0 then (see
# ``start_series``), so a dashboard's panel shows a flat 0, not "No data", until the first event.
_REFUSALS = ("fusion_rejections_total", "fusion_timeouts_total")


def start_series(pipelines: Mapping[str, Any], models: Mapping[str, Any],
                 cache: bool) -> list[tuple[str, dict[str, str]]]:
    """The counter series a router creates at 0 when it starts (``pipelines``: the gateway's
    ``PipelineSpec`` by name, ``models``: its ``ModelTasks`` by name; duck-typed, so this
    shared module imports neither the pipeline package nor the registry).

    Why: Prometheus has no series until its first sample, so a counter of rare events (a 504)
    is absent from a healthy gateway and its panel reads "No data", indistinguishable from a
    broken scrape. Label values known at start-up are the ones ``request_done`` and the cache
    use: a pipeline and each model its steps call (``step.uses_model``, or the built-in
    step's task), a model route (``name/task``) and its model, and the cache's ``(model, task)`` of
    every served task plus ``("pipeline", name)`` for whole-pipeline results. Labels only
    traffic decides (status codes, routes) are left to traffic.
    """
    series: list[tuple[str, dict[str, str]]] = []
    refused: set[tuple[str, str]] = set()
    for name, spec in pipelines.items():
        refused |= {(name, getattr(step, "uses_model", step.model) or step.task)
                    for step in spec.steps.values()}
    for model, served in models.items():
        refused |= {(f"{model}/{task}", model) for task in served.tasks}
    for pipeline, model in sorted(refused):
        series += [(n, {"pipeline": pipeline, "model": model}) for n in _REFUSALS]
    if cache:
        cached = {(m, t) for m, served in models.items() for t in served.tasks}
        cached |= {("pipeline", name) for name in pipelines}
        series += [(f"fusion_cache_{c}_total", {"model": m, "task": t})
                   for m, t in sorted(cached) for c in _CACHE_COUNTERS]
    return series


class Recorder(Protocol):
    """Where measurements go; names are keys of ``METRICS``, tags its tag keys.

    ``inc`` by 0 creates a counter's series without counting anything (``start_series``).
    """

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None: ...

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None: ...

    def set(self, name: str, value: float, tags: dict[str, str]) -> None: ...


class MemoryRecorder:
    """A recorder that keeps everything in lists: for tests and for reading back."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, tuple], float] = {}
        self.observations: list[tuple[str, float, dict[str, str]]] = []
        self.gauges: dict[tuple[str, tuple], float] = {}

    @staticmethod
    def _key(name: str, tags: dict[str, str]) -> tuple[str, tuple]:
        if name not in METRICS:
            raise KeyError(f"{name} is not declared in fusion.observe.METRICS")
        if set(tags) != set(METRICS[name].tags):
            raise KeyError(f"{name} takes tags {METRICS[name].tags}, got {sorted(tags)}")
        return name, tuple(sorted(tags.items()))

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        key = self._key(name, tags)
        self.counts[key] = self.counts.get(key, 0) + value

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._key(name, tags)
        self.observations.append((name, value, dict(tags)))

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self.gauges[self._key(name, tags)] = value

    def count(self, name: str, **tags: str) -> float:
        return sum(v for (n, t), v in self.counts.items()
                   if n == name and tags.items() <= dict(t).items())

    def observed(self, name: str, **tags: str) -> list[tuple[float, dict[str, str]]]:
        return [(v, t) for n, v, t in self.observations
                if n == name and tags.items() <= t.items()]


@dataclass
class RequestRecord:
    """What one request's steps tell its edge: the model at fault for a 503/504."""

    failed_model: str = ""


_record: contextvars.ContextVar[RequestRecord | None] = contextvars.ContextVar(
    "fusion_request_record", default=None)


def outcome_of(report: Any) -> str:
    """A step report's outcome label (``StepReport`` from the executor)."""
    if report.skipped:
        return "skipped"
    if report.coalesced:
        return "coalesced"
    return "cached" if report.cached else "computed"


_access = logging.getLogger("fusion.access")


def _ensure_access_handler() -> None:
    """Access lines go to stderr as written (one JSON object a line), whatever the host
    process configured for the root logger: a log shipper must be able to parse each line."""
    if _access.level == logging.NOTSET:
        _access.setLevel(logging.INFO)
    if not _access.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _access.addHandler(handler)
        _access.propagate = False


class Observer:
    """The router replica's metrics recorder, tracer and access-log switch, in one place."""

    def __init__(self, recorder: Recorder | None = None, tracing: Tracing | None = None,
                 access_log: str = "off") -> None:
        self.recorder = recorder
        self.tracing = tracing
        self.access_log = access_log
        self._in_flight = 0
        if access_log != "off":
            _ensure_access_handler()

    def span(self, name: str, attributes: dict[str, Any]) -> contextlib.AbstractContextManager:
        """A child span of the current one, or nothing at all when tracing is off."""
        if self.tracing is None:
            return _NO_SPAN
        return self.tracing.span(name, attributes)

    def carrier(self) -> dict[str, str]:
        """Trace context to send with a model call ({} when tracing is off)."""
        return self.tracing.carrier() if self.tracing is not None else {}

    def step(self, pipeline: str, step: str, model: str, task: str, outcome: str,
             seconds: float, status: int = 0) -> None:
        """One step done (or failed with ``status``): its latency by outcome."""
        if status in (503, 504):
            record = _record.get()
            if record is not None and not record.failed_model:
                record.failed_model = model
        if self.recorder is not None:
            self.recorder.observe("fusion_step_seconds", seconds, {
                "pipeline": pipeline, "step": step, "model": model, "task": task,
                "outcome": outcome})

    def start(self, pipelines: Mapping[str, Any], models: Mapping[str, Any],
              cache_healthy: bool | None) -> None:
        """Export, from the router's start, every series a dashboard plots that does not
        wait for traffic: this replica up, nothing in flight, the cache's health
        (``cache_healthy`` None: no cache) and the counters of ``start_series`` at 0."""
        rec = self.recorder
        if rec is None:
            return
        rec.set("fusion_replica_up", 1, {"model": "router"})
        rec.set("fusion_requests_in_flight", self._in_flight, {})
        if cache_healthy is not None:
            rec.set("fusion_cache_healthy", 1 if cache_healthy else 0, {})
        for name, tags in start_series(pipelines, models, cache_healthy is not None):
            rec.inc(name, tags, 0)

    def request_started(self) -> RequestRecord:
        record = RequestRecord()
        _record.set(record)
        if self.recorder is not None:
            self._in_flight += 1
            self.recorder.set("fusion_requests_in_flight", self._in_flight, {})
        return record

    def request_done(self, record: RequestRecord, route: str, pipeline: str, status: int,
                     seconds: float) -> None:
        rec = self.recorder
        if rec is None:
            return
        self._in_flight -= 1
        rec.set("fusion_requests_in_flight", self._in_flight, {})
        if status == 404:  # a name the client made up: not a label value (cardinality)
            pipeline = ""
        tags = {"route": route, "pipeline": pipeline, "status": str(status)}
        rec.inc("fusion_requests_total", tags)
        rec.observe("fusion_request_seconds", seconds, tags)
        if status == 503:
            rec.inc("fusion_rejections_total", {"pipeline": pipeline,
                                                "model": record.failed_model})
        elif status == 504:
            rec.inc("fusion_timeouts_total", {"pipeline": pipeline,
                                              "model": record.failed_model})


_NO_SPAN = contextlib.nullcontext()
NULL_OBSERVER = Observer()

def key_id(authorization: str) -> str:
    """A short, stable id of the API key (never the key): correlates a client's lines. An
    issued key (``fsk_<id>_<secret>``) is logged by its id, the one ``/v1/usage`` shows; a
    static key as ``static-`` and its digest's first 12 hex digits."""
    scheme, _, key = authorization.partition(" ")
    key = key.strip()
    if scheme.lower() != "bearer" or not key:
        return "-"
    if key.startswith("fsk_") and key.count("_") >= 2:
        return key.split("_", 2)[1][:32]
    return "static-" + hashlib.sha256(key.encode()).hexdigest()[:12]


def access_line(fmt: str, entry: dict[str, Any]) -> str:
    if fmt == "json":
        return json.dumps(entry, separators=(",", ":"))
    return " ".join(f"{k}={v}" for k, v in entry.items())


def _route_of(scope: dict) -> tuple[str, str]:
    """The route template (bounded label values, unlike raw paths) and its pipeline or model."""
    route = scope.get("route")
    template = getattr(route, "path", None) or "unmatched"
    params = scope.get("path_params") or {}
    target = params.get("name", "")
    if "task" in params:
        target = f"{target}/{params['task']}"
    return template, str(target)


class ObserveMiddleware:
    """Times every request, counts it by route and status, writes its access-log line, and
    (when tracing is on) wraps it in a server span continuing the caller's ``traceparent``.

    Plain ASGI, as ``RequestIdMiddleware``: no task or stream copy per request.
    """

    def __init__(self, app, get_observer: Callable[[], Observer]) -> None:
        self.app = app
        self.get_observer = get_observer

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        obs = self.get_observer()
        if obs.recorder is None and obs.tracing is None and obs.access_log == "off":
            return await self.app(scope, receive, send)
        started = time.perf_counter()
        path = scope.get("path", "")
        record = obs.request_started()
        status, cache = 500, "-"
        span = obs.tracing.request_span(scope) if obs.tracing is not None else None
        trace_header = obs.tracing.trace_header(span) if span is not None else None

        async def send_observed(message) -> None:
            nonlocal status, cache
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = message.get("headers", [])
                cache = next((v.decode("latin-1") for k, v in headers
                              if k == b"x-fusion-cache"), "-")
                if trace_header is not None:
                    message = {**message, "headers": [*headers, trace_header]}
            await send(message)

        try:
            if span is None:
                await self.app(scope, receive, send_observed)
            else:
                with obs.tracing.activate(span):
                    await self.app(scope, receive, send_observed)
        finally:
            seconds = time.perf_counter() - started
            route, target = _route_of(scope)
            obs.request_done(record, route, target, status, seconds)
            if span is not None:
                obs.tracing.end_request_span(span, scope.get("method", ""), route, status)
            if obs.access_log != "off" and path != "/healthz":
                headers = dict(scope.get("headers") or [])
                state = scope.get("state") or {}
                _access.info(access_line(obs.access_log, {
                    "ts": round(time.time(), 3), "request_id": state.get("request_id", "-"),
                    "method": scope.get("method", ""), "route": route, "pipeline": target,
                    "status": status, "ms": round(seconds * 1000, 2), "cache": cache,
                    "key_id": key_id(headers.get(b"authorization", b"").decode("latin-1")),
                    "trace_id": trace_header[1].decode() if trace_header else "-"}))
