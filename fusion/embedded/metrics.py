"""The ``Recorder`` of the embedded runtime: ``prometheus_client`` in this process.

Series carry the names the Ray runtime exports (Ray's metrics agent prefixes ``ray_``), so
one Grafana dashboard (``ops/grafana/fusion.json``) and one set of alerts read both runtimes.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from fusion.observe import METRICS

PREFIX = "ray_"
_TYPES = {"counter": Counter, "gauge": Gauge, "histogram": Histogram}


class PrometheusRecorder:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self._metrics: dict[str, Any] = {}

    def _metric(self, name: str) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            d = METRICS[name]
            kwargs: dict[str, Any] = {"labelnames": d.tags, "registry": self.registry}
            if d.kind == "histogram":
                kwargs["buckets"] = list(d.buckets)
            metric = self._metrics[name] = _TYPES[d.kind](PREFIX + name, d.description,
                                                          **kwargs)
        return metric

    def _labelled(self, name: str, tags: dict[str, str]) -> Any:
        metric = self._metric(name)
        return metric.labels(**tags) if METRICS[name].tags else metric

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        self._labelled(name, tags).inc(value)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._labelled(name, tags).observe(value)

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._labelled(name, tags).set(value)

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        """``/metrics`` on its own port, as Ray's metrics agent exports on one."""
        start_http_server(port, addr=host, registry=self.registry)
