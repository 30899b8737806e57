"""The ``Recorder`` over Ray's metrics API. Ray-only module: imported by the ingress and the
model deployments, never by the Ray-free core.

Why Ray's API rather than a private Prometheus endpoint: each Ray node's metrics agent
already exports every worker's metrics on one port (and writes a service-discovery file for
clusters), so router and replica metrics appear wherever Ray's do, with Serve's
``deployment``/``replica``/``application`` tags added. Metric objects are made lazily, once
per process, from the declarations in ``fusion.observe.METRICS``.

Why gauges are set again and again: in Ray's OpenTelemetry export a worker's gauge is an
observable gauge whose callback sends the values set since the last export and then clears
them (``OpenTelemetryMetricRecorder::CollectGaugeMetricValues`` in
``src/ray/observability/open_telemetry_metric_recorder.cc``: ``it->second.clear()``), and
the node's metrics agent drops a gauge value not refreshed within two report intervals
(``ray/_private/telemetry/open_telemetry_metric_recorder.py``, ``_gauge_metric_ttl_s``).
A gauge set once (replica up at start-up, cache health on a change) is therefore in the
scrape for ~20 s and then gone. ``RayRecorder`` keeps the last value of every gauge series
and a daemon thread sets them all again every half report interval, so a gauge lives exactly
as long as its process does. Counters need no help: the agent accumulates them and keeps
them, so one increment, even by 0, creates a series for good.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from typing import Any

import ray
from ray.serve import metrics

from fusion.observe import METRICS

log = logging.getLogger("fusion.serve.metrics")

_TYPES: Mapping[str, Any] = {"counter": metrics.Counter, "gauge": metrics.Gauge,
                             "histogram": metrics.Histogram}


def refresh_interval_s() -> float:
    """Half of Ray's metrics report interval (the period at which a worker exports, floored
    at 1 s as Ray does): every export then carries each gauge at least once."""
    return max(ray._config.metrics_report_interval_ms(), 1000) / 2000


class RayRecorder:
    """``types`` maps a metric kind to its class (Ray Serve's, which add Serve's tags)."""

    def __init__(self, types: Mapping[str, Any] = _TYPES,
                 refresh_s: float | None = None) -> None:
        self._types = types
        self._refresh_s = refresh_s
        self._metrics: dict[str, Any] = {}
        self._gauges: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        # a set and a refresh never interleave, so a refresh cannot put back a stale value
        self._lock = threading.Lock()
        self._keeper: threading.Thread | None = None
        self._stop = threading.Event()

    def _metric(self, name: str) -> Any:
        metric = self._metrics.get(name)
        if metric is None:
            d = METRICS[name]
            kwargs: dict[str, Any] = {"description": d.description, "tag_keys": d.tags}
            if d.kind == "histogram":
                kwargs["boundaries"] = list(d.buckets)
            metric = self._metrics[name] = self._types[d.kind](name, **kwargs)
        return metric

    def inc(self, name: str, tags: dict[str, str], value: float = 1.0) -> None:
        if value == 0:
            # Ray's Counter.inc refuses 0; its _record is the step inc takes after that check,
            # and the agent creates the series from a 0 like from any delta
            self._metric(name)._record(0.0, tags=dict(tags))
            return
        self._metric(name).inc(value, tags=tags)

    def observe(self, name: str, value: float, tags: dict[str, str]) -> None:
        self._metric(name).observe(value, tags=tags)

    def set(self, name: str, value: float, tags: dict[str, str]) -> None:
        with self._lock:
            self._metric(name).set(value, tags=dict(tags))
            self._gauges[(name, tuple(sorted(tags.items())))] = value
            if self._keeper is None:
                self._keeper = threading.Thread(target=self._keep, name="fusion-gauges",
                                                daemon=True)
                self._keeper.start()

    def refresh(self) -> None:
        """Set every gauge series again to its last value."""
        with self._lock:
            for (name, tags), value in self._gauges.items():
                self._metric(name).set(value, tags=dict(tags))

    def close(self) -> None:
        """Stop setting gauges again (the process goes on; its gauges then age out)."""
        self._stop.set()
        if self._keeper is not None:
            self._keeper.join()

    def _keep(self) -> None:
        period = self._refresh_s or refresh_interval_s()
        warned = False
        while not self._stop.wait(period):
            try:
                self.refresh()
            except Exception:  # a failed refresh must not end the thread: the next may work
                if not warned:
                    log.warning("re-setting gauges failed; further failures are not logged",
                                exc_info=True)
                    warned = True


_recorder: RayRecorder | None = None


def ray_recorder() -> RayRecorder:
    """This process's recorder (one set of metric objects per worker)."""
    global _recorder
    if _recorder is None:
        _recorder = RayRecorder()
    return _recorder
