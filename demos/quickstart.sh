#!/usr/bin/env bash
# Main job: set up .venv with what it runs on (torch + the "convert" extra), then run `tinysam-edge demo` (export once, segment a photo with a point and a box).
# Usage: bash demos/quickstart.sh [IMAGE] [--checkpoint FILE_OR_NAME] [--device CPU|GPU|NPU|AUTO] [...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh convert
exec .venv/bin/tinysam-edge demo --out-dir outputs/demo --overwrite "$@"
