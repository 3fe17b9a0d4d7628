#!/usr/bin/env bash
# Fresh-machine set-up: a .venv in the repo with the CPU build of torch, then the package and all extras.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip setuptools wheel
# Exact pin first: a looser torch requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install -q torch==2.13.0
.venv/bin/python -m pip install -q -e ".[all]"
# Headless Chromium + its WebDriver for the browser test of `serve` (tests/test_serve_browser.py skips without them).
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
        || echo "setup_env: could not install chromium/chromium-driver; the browser test will be skipped" >&2
fi
# A virtual X display, input events and Tk for the window test of `webcam` (tests/test_window.py skips without them).
missing=""
command -v Xvfb >/dev/null || missing="$missing xvfb"
command -v xdotool >/dev/null || missing="$missing xdotool"
.venv/bin/python -c "import tkinter" 2>/dev/null || missing="$missing python3-tk"
if [ -n "$missing" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } \
        || echo "setup_env: could not install$missing; the window test will be skipped" >&2
fi
