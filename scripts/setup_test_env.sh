#!/usr/bin/env bash
# What only the tests need, besides .venv (scripts/setup_env.sh): system packages, installed with apt-get when run as root.
# Without them the browser and window tests skip, saying why.
set -euo pipefail
cd "$(dirname "$0")/.."
# Headless Chromium + its WebDriver for the browser test of `serve` (tests/test_serve_browser.py skips without them).
if ! command -v chromedriver >/dev/null && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
        || echo "setup_test_env: could not install chromium/chromium-driver; the browser test will be skipped" >&2
fi
# A virtual X display, input events and Tk for the window test of `webcam` (tests/test_window.py skips without them).
missing=""
command -v Xvfb >/dev/null || missing="$missing xvfb"
command -v xdotool >/dev/null || missing="$missing xdotool"
.venv/bin/python -c "import tkinter" 2>/dev/null || missing="$missing python3-tk"
if [ -n "$missing" ] && command -v apt-get >/dev/null && [ "$(id -u)" = 0 ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null; } \
        || echo "setup_test_env: could not install$missing; the window test will be skipped" >&2
fi
