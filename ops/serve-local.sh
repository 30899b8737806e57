#!/usr/bin/env bash
# Run the gateway on the offline default profile: http://127.0.0.1:8000 (docs at /docs),
# Prometheus metrics at http://127.0.0.1:${FUSION_METRICS_PORT:-8080}/metrics (README "Operate it").
source "$(dirname "$0")/bootstrap.sh"
# Ray Serve's throughput mode is off by default: measured side by side it lifts Ray's no-op
# floor 1.2x but is mixed on model calls here (README "Serving efficiency"). To try it:
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 ./ops/serve-local.sh
# --edge: the edge profile (ops/serve/edge.yaml: one bundled replica, compressed models, no
# Ray dashboard; README "Edge profile"). FUSION_PROFILE=edge does the same.
if [[ "${1:-}" == "--edge" || "${FUSION_PROFILE:-}" == "edge" ]]; then
  [[ "${1:-}" == "--edge" ]] && shift
  exec .venv/bin/python ops/serve_local.py --edge ops/serve/edge.yaml "$@"
fi
exec .venv/bin/python ops/serve_local.py ops/serve/local.yaml "$@"
