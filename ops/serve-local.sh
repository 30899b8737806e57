#!/usr/bin/env bash
# Run the gateway on the offline default profile: http://127.0.0.1:8000 (docs at /docs),
# Prometheus metrics at http://127.0.0.1:${FUSION_METRICS_PORT:-8080}/metrics.
#   ./ops/serve-local.sh              Ray Serve, ops/serve/local.yaml
#   ./ops/serve-local.sh --embedded   the embedded runtime (one process, no Ray), local.yaml
#   ./ops/serve-local.sh --edge       the edge profile (ops/serve/edge.yaml: compressed models)
#                                     on the embedded runtime; FUSION_PROFILE=edge does the same;
#                                     FUSION_RUNTIME=ray runs it on Ray Serve as one bundle
source "$(dirname "$0")/bootstrap.sh"
# Ray Serve's throughput mode is off by default: measured side by side it lifts Ray's no-op
# floor 1.2x but is mixed on model calls here. To try it:
# RAY_SERVE_THROUGHPUT_OPTIMIZED=1 ./ops/serve-local.sh
config=ops/serve/local.yaml runtime=ray
if [[ "${1:-}" == "--edge" || "${FUSION_PROFILE:-}" == "edge" ]]; then
  [[ "${1:-}" == "--edge" ]] && shift
  config=ops/serve/edge.yaml runtime="${FUSION_RUNTIME:-embedded}"
elif [[ "${1:-}" == "--embedded" ]]; then
  shift
  runtime=embedded
fi
if [[ "$runtime" == "embedded" ]]; then
  exec .venv/bin/python -m fusion.embedded "$config" "$@"
fi
exec .venv/bin/python ops/serve_local.py $([[ "$config" == *edge* ]] && echo --edge) "$config" "$@"
