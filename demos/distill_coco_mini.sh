#!/usr/bin/env bash
# Distillation recipe end to end on this workspace's coco_mini: cache the teacher's embeddings, distill a
# fresh student for 20 steps, export the result to OpenVINO IR. Run from the repository root with the
# virtual environment active (source .venv/bin/activate); the optional argument is the output folder.
set -euo pipefail
SHARED=${TINYSAM_SHARED:-../shared}
OUT=${1:-runs}
tinysam-edge train cache-teacher --teacher "$SHARED/fixtures/parity/weights.pt" \
    --images "$SHARED/data/coco_mini/images" --annotations "$SHARED/data/coco_mini/annotations/instances_coco8seg.json" \
    --out "$OUT/smoke_teacher" --flip
tinysam-edge train distill --config configs/distill_smoke.toml --set "run.out=$OUT/smoke" --set "teacher.cache=$OUT/smoke_teacher" \
    --set "teacher.checkpoint=$SHARED/fixtures/parity/weights.pt" --set "data.images=$SHARED/data/coco_mini/images" \
    --set "data.annotations=$SHARED/data/coco_mini/annotations/instances_coco8seg.json"
tinysam-edge export --checkpoint "$OUT/smoke/student_last.pth" --out "$OUT/smoke_ir"
echo "losses: $OUT/smoke/log.csv, plot: $OUT/smoke/training.png, IR: $OUT/smoke_ir"
