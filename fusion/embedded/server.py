"""Start the embedded runtime from a serve config file: the same YAML ``serve run`` reads.

    python -m fusion.embedded ops/serve/local.yaml [--host H] [--port P] [--metrics-port M]

The file's first application's ``args`` are the gateway config and its ``http_options`` the
address, so a profile runs unchanged on either runtime. Serve-only settings (replicas,
CPU shares, autoscaling, bundles, ``proxy_location``) mean nothing in one process and are
ignored; every model loads here, then the HTTP server starts.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from pathlib import Path
from typing import Any

import yaml
from fastapi import FastAPI

from fusion.config import AppConfig
from fusion.core.gateway import Gateway, current_gateway
from fusion.core.startup import check_app, check_exposure, load_config, start_gateway
from fusion.embedded.metrics import PrometheusRecorder
from fusion.embedded.models import LocalModels
from fusion.http.app import create_api

log = logging.getLogger("fusion.embedded")


def read_serve_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(gateway args, http_options)`` of a ``serve run`` config file."""
    raw = yaml.safe_load(Path(path).read_text()) or {}
    apps = raw.get("applications") or [{}]
    return apps[0].get("args") or {}, raw.get("http_options") or {}


def build(args: dict[str, Any] | AppConfig,
          recorder: PrometheusRecorder | None = None) -> tuple[FastAPI, Gateway]:
    """The app and its gateway, every model loaded in this process."""
    config = load_config(args)
    check_app(config)
    started = time.perf_counter()
    models = LocalModels(config, recorder)
    gateway = start_gateway(config, models, recorder)
    log.info("embedded gateway ready in %.1f s: %d models, pipelines %s",
             time.perf_counter() - started, len(config.models), sorted(gateway.pipelines))
    return create_api(current_gateway), gateway


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(prog="python -m fusion.embedded", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="a serve config file (ops/serve/*.yaml)")
    parser.add_argument("--host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--metrics-port", type=int,
                        default=int(os.environ.get("FUSION_METRICS_PORT", "8080")),
                        help="Prometheus /metrics port (0: none)")
    opts = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    args, http = read_serve_config(opts.config)
    host = opts.host or http.get("host", "127.0.0.1")
    port = opts.port if opts.port is not None else int(http.get("port", 8000))
    check_exposure(load_config(args), host)  # no key beyond loopback: refuse, naming it
    recorder = PrometheusRecorder()
    app, _ = build(args, recorder)
    if opts.metrics_port:
        recorder.serve(opts.metrics_port, host)
        log.info("Prometheus metrics: http://%s:%d/metrics", host, opts.metrics_port)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
