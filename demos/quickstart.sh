#!/usr/bin/env bash
# Main job: set up .venv, then segment IMAGE with a centre point and print/save the result.
# Usage: bash demos/quickstart.sh IMAGE [CHECKPOINT]   (CHECKPOINT: file or registry name, default tinysam_42.3)
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE="${1:-../shared/data/images/sam_truck.jpg}"
CHECKPOINT="${2:-tinysam_42.3}"
[ -f "$IMAGE" ] || { echo "usage: bash demos/quickstart.sh IMAGE [CHECKPOINT]  (no image at $IMAGE)" >&2; exit 2; }
bash scripts/setup_env.sh
mkdir -p outputs
.venv/bin/python demos/point_box_prompts.py "$IMAGE" --checkpoint "$CHECKPOINT" --out outputs/quickstart.png --overwrite
