#!/usr/bin/env bash
# Run the gateway on the offline default profile: http://127.0.0.1:8000 (docs at /docs),
# Prometheus metrics at http://127.0.0.1:${FUSION_METRICS_PORT:-8080}/metrics (README "Operate it").
source "$(dirname "$0")/bootstrap.sh"
# Ray Serve's throughput mode (gRPC between replicas, no extra proxy hop at the ingress):
# 1.5x single-item embeddings at concurrency 32 here (README "Serving efficiency").
# RAY_SERVE_THROUGHPUT_OPTIMIZED=0 ./ops/serve-local.sh turns it off.
export RAY_SERVE_THROUGHPUT_OPTIMIZED="${RAY_SERVE_THROUGHPUT_OPTIMIZED:-1}"
exec .venv/bin/python ops/serve_local.py ops/serve/local.yaml "$@"
