#!/usr/bin/env bash
# Run the gateway on the offline default profile: http://127.0.0.1:8000 (docs at /docs).
source "$(dirname "$0")/bootstrap.sh"
exec .venv/bin/serve run ops/serve/local.yaml "$@"
