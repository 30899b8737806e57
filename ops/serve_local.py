"""``serve run`` with Ray's Prometheus metrics on a fixed, documented port.

Why a launcher: ``serve run`` starts its own local Ray and offers no flag for the metrics
export port (a random one by default, so nothing could be told to scrape it). Initialising
Ray here first, with ``_metrics_export_port``, makes ``serve run`` reuse this instance.

    python ops/serve_local.py ops/serve/local.yaml     # metrics at :$FUSION_METRICS_PORT
    python ops/serve_local.py --edge ops/serve/edge.yaml   # small box: no Ray dashboard

``--edge`` starts Ray without its dashboard (a process of ~0.1 GiB that a small box does not
need; Prometheus metrics still export through the metrics agent).
"""

from __future__ import annotations

import os
import signal
import sys

import ray
from ray.serve.scripts import cli

METRICS_PORT = int(os.environ.get("FUSION_METRICS_PORT", "8080"))

if __name__ == "__main__":
    # Ctrl-C (SIGINT) stops serve run cleanly, even when started from a script or in the
    # background, where SIGINT is inherited as ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    args = sys.argv[1:]
    edge = "--edge" in args
    if edge:
        args.remove("--edge")
    ray.init(namespace="serve", _metrics_export_port=METRICS_PORT,
             **({"include_dashboard": False} if edge else {}))
    print(f"Prometheus metrics: http://127.0.0.1:{METRICS_PORT}/metrics", file=sys.stderr)
    cli.main(["run", *args], prog_name="serve")
