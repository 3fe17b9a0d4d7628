#!/usr/bin/env bash
# Fresh-machine set-up: a .venv in the repo with the CPU build of torch, then the package with EXTRAS.
# Usage: bash scripts/setup_env.sh [EXTRAS]   (default: all; the main job uses "convert": export + the sample photo)
# The system packages the tests need come from scripts/setup_test_env.sh (tests/run.sh calls it).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
EXTRAS="${1:-all}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# Exact pin first: a looser torch requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[$EXTRAS]"
