"""The ``Recorder`` over Ray's metrics API. Ray-only module: imported by the ingress and the
model deployments, never by the Ray-free core.

Why Ray's API rather than a private Prometheus endpoint: each Ray node's metrics agent
already exports every worker's metrics on one port (and writes a service-discovery file for
clusters), so router and replica metrics appear wherever Ray's do, with Serve's
``deployment``/``replica``/``application`` tags added. Metric objects are made lazily, once
per process, from the declarations in ``fusion.observe.METRICS``.
"""

from __future__ import annotations

from typing import Any

from ray.serve import metrics

from fusion.observe import METRICS

_TYPES = {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram}


class RayRecorder:
    def __init__(self) -> None:
        self._metrics: dict[str, Any] = {}

    def _metric(self, name: str) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            d = METRICS[name]
            kwargs: dict[str, Any] = {"description": d.description, "tag_keys": d.tags}
            if d.kind == "histogram":
                kwargs["boundaries"] = list(d.buckets)
            metric = self._metrics[name] = _TYPES[d.kind](name, **kwargs)
        return metric

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        self._metric(name).inc(value, tags=tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._metric(name).observe(value, tags=tags)

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._metric(name).set(value, tags=tags)


_recorder: RayRecorder | None = None


def ray_recorder() -> RayRecorder:
    """This process's recorder (one set of metric objects per worker)."""
    global _recorder
    if _recorder is None:
        _recorder = RayRecorder()
    return _recorder
