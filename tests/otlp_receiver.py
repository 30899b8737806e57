"""A throwaway OTLP/HTTP trace receiver: decodes each ``ExportTraceServiceRequest`` and keeps
its spans, so tests can read back what the gateway exported, as a collector would see it.

    python -m tests.otlp_receiver PORT     # a sink that only counts (used by the benchmark)
"""

from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)


@dataclass(frozen=True)
class ReceivedSpan:
    service: str
    trace_id: str
    span_id: str
    parent_span_id: str
    name: str


class OtlpReceiver:
    def __init__(self, port: int = 0, keep: bool = True) -> None:
        self.spans: list[ReceivedSpan] = []
        self.requests = 0
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest.FromString(body)
                receiver.add(request, keep)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def add(self, request: ExportTraceServiceRequest, keep: bool) -> None:
        spans = []
        for rs in request.resource_spans:
            service = next((a.value.string_value for a in rs.resource.attributes
                            if a.key == "service.name"), "")
            for ss in rs.scope_spans:
                spans += [ReceivedSpan(service, s.trace_id.hex(), s.span_id.hex(),
                                       s.parent_span_id.hex(), s.name) for s in ss.spans]
        with self.changed:
            self.requests += 1
            if keep:
                self.spans += spans
            self.changed.notify_all()

    def wait_for(self, predicate, timeout: float) -> list[ReceivedSpan]:
        """The spans once ``predicate(spans)`` holds (woken by each export, not polling)."""
        with self.changed:
            self.changed.wait_for(lambda: predicate(self.spans), timeout)
            return list(self.spans)

    def __enter__(self) -> OtlpReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


if __name__ == "__main__":
    with OtlpReceiver(int(sys.argv[1]), keep=False) as sink:
        sink.thread.join()
