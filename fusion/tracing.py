"""OpenTelemetry tracing: off unless an OTLP endpoint is configured.

Why one small wrapper: the router (request, step, cache and model-call spans) and the model
replicas (queue wait and compute spans, parented by the ``traceparent`` the router sends with
each call) must build spans the same way, and with tracing off neither should pay for it —
callers hold ``None`` instead of a ``Tracing`` and skip the work.

The provider is private to the gateway (never the global one), so two gateways in one
process (tests) or a host application's own tracing do not collide.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_propagator = TraceContextTextMapPropagator()
TRACE_HEADER = b"x-trace-id"


class Tracing:
    def __init__(self, provider: Any) -> None:
        self.provider = provider
        self.tracer = provider.get_tracer("fusion")

    @classmethod
    def from_endpoint(cls, endpoint: str, service_name: str) -> Tracing:
        """Spans batched to ``{endpoint}/v1/traces`` over OTLP/HTTP (protobuf)."""
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        url = endpoint.rstrip("/")
        if not url.endswith("/v1/traces"):
            url += "/v1/traces"
        provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=url)))
        return cls(provider)

    # -- router side --------------------------------------------------------------------

    def request_span(self, scope: dict) -> Any:
        """A server span for an HTTP request, continuing an incoming W3C ``traceparent``."""
        carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
                   if k in (b"traceparent", b"tracestate")}
        parent = _propagator.extract(carrier) if carrier else None
        method = scope.get("method", "")
        return self.tracer.start_span(f"{method} {scope.get('path', '')}", context=parent,
                                      kind=SpanKind.SERVER,
                                      attributes={"http.request.method": method})

    @staticmethod
    def activate(span: Any) -> contextlib.AbstractContextManager:
        return trace.use_span(span, end_on_exit=False)

    @staticmethod
    def trace_header(span: Any) -> tuple[bytes, bytes]:
        return TRACE_HEADER, trace.format_trace_id(span.get_span_context().trace_id).encode()

    @staticmethod
    def end_request_span(span: Any, method: str, route: str, status: int) -> None:
        span.update_name(f"{method} {route}")
        span.set_attribute("http.route", route)
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    @contextlib.contextmanager
    def span(self, name: str, attributes: dict[str, Any],
             kind: SpanKind = SpanKind.INTERNAL) -> Iterator[Any]:
        with self.tracer.start_as_current_span(name, kind=kind, attributes=attributes) as s:
            yield s

    @staticmethod
    def carrier() -> dict[str, str]:
        """The current span's context as W3C headers, to send along with a model call."""
        carrier: dict[str, str] = {}
        _propagator.inject(carrier)
        return carrier

    # -- replica side -------------------------------------------------------------------

    def replica_spans(self, carrier: dict[str, str], name: str, attributes: dict[str, Any],
                      arrived_ns: int, started_ns: int, ended_ns: int,
                      error: BaseException | None = None) -> None:
        """A model call inside its replica, with ``queue_wait`` and ``compute`` children.

        Built after the fact from timestamps: a batched call's compute is shared with its
        batch-mates, and this way one batch's timing serves every caller's trace.
        """
        parent = self.tracer.start_span(name, context=_propagator.extract(carrier),
                                        kind=SpanKind.SERVER, start_time=arrived_ns,
                                        attributes=attributes)
        inside = trace.set_span_in_context(parent)
        self.tracer.start_span("queue_wait", context=inside,
                               start_time=arrived_ns).end(end_time=started_ns)
        compute = self.tracer.start_span("compute", context=inside, start_time=started_ns,
                                         attributes=attributes)
        if error is not None:
            for s in (compute, parent):
                s.record_exception(error)
                s.set_status(Status(StatusCode.ERROR, type(error).__name__))
        compute.end(end_time=ended_ns)
        parent.end(end_time=ended_ns)

    def shutdown(self) -> None:
        self.provider.shutdown()


def tracing_from(endpoint: str | None, service_name: str) -> Tracing | None:
    return Tracing.from_endpoint(endpoint, service_name) if endpoint else None
