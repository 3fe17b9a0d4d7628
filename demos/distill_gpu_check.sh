#!/usr/bin/env bash
# The GPU measurement of the distillation issue in one call of about ten minutes (one H200-class GPU):
# train bench (distill, batch 16 x 32 objects x 0..9 corrective points, bf16), cache-teacher with flips,
# and the ground-truth-only recipe configs/proxy_coco_mini.toml with its train / held-out mIoU.
#
#   bash demos/distill_gpu_check.sh prepare     # here, on the CPU machine: builds runs/gpu_kit (~30 MB, git-ignored)
#   bash demos/distill_gpu_check.sh run         # on the GPU machine (carry runs/gpu_kit), writes into $OUT
#   DRY=1 bash demos/distill_gpu_check.sh run   # the same parts with tiny sizes, to try it on a CPU first
#
# The GPU machine lacks openvino (training never calls it: a stand-in whose every attribute raises) and
# pycocotools (a cp312 wheel travels), and the repository is not installed there: runs/gpu_kit/site
# holds a sitecustomize that maps tinysam_edge.models / tinysam_edge.quantize onto models/ and quantize/.
# Every part is independent (no set -e), has its own timeout and log under $OUT; a summary comes last.
set -u
ROOT=$(cd "$(dirname "$0")/.." && pwd)
KIT=$ROOT/runs/gpu_kit
SHARED=${TINYSAM_SHARED:-$ROOT/../shared}

prepare() {
    set -e
    mkdir -p "$KIT/site/openvino" "$KIT/data/coco_mini" "$KIT/wheels"
    cp -r "$SHARED/data/coco_mini/images" "$SHARED/data/coco_mini/annotations" "$KIT/data/coco_mini/"
    cp "$SHARED/fixtures/parity/weights.pt" "$KIT/teacher.pt"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux2014_x86_64 -d "$KIT/wheels" pycocotools
    cat > "$KIT/site/openvino/__init__.py" <<'EOF'
"""Stand-in for openvino on the GPU machine: names resolve (annotations, module constants), any call raises."""


class _Missing:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        return _Missing(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise ImportError(f"openvino stand-in: {self._name} is not available on this machine")

    def __getitem__(self, key):
        return self

    def __or__(self, other):
        return self

    __ror__ = __or__


def __getattr__(name):
    return _Missing(f"openvino.{name}")
EOF
    cat > "$KIT/site/sitecustomize.py" <<'EOF'
"""Map tinysam_edge.models / tinysam_edge.quantize onto the repository's models/ and quantize/ (what installing does)."""
import importlib.abc
import importlib.util
import os
import sys

_ROOT = os.environ.get("TINYSAM_ROOT", os.getcwd())
_MAP = {"tinysam_edge.models": "models", "tinysam_edge.quantize": "quantize"}


class _Mapped(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _MAP:
            return None
        folder = os.path.join(_ROOT, _MAP[name])
        return importlib.util.spec_from_file_location(name, os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])


sys.meta_path.insert(0, _Mapped())
EOF
    du -sh "$KIT"
}

run() {
    local FINAL=${OUT:-$ROOT/runs/gpu_out}
    local OUT=$FINAL/work  # packed into $FINAL/logs.tgz at the end: only summary.txt and logs.tgz come back
    mkdir -p "$OUT" "$KIT/pkgs"
    if ls "$KIT"/wheels/*.whl >/dev/null 2>&1; then
        python3 -m pip install --quiet --no-index --no-deps --target "$KIT/pkgs" "$KIT"/wheels/*.whl > "$OUT/pip.log" 2>&1
    fi
    export TINYSAM_ROOT=$ROOT PYTHONPATH=$ROOT:$KIT/site:$KIT/pkgs${PYTHONPATH:+:$PYTHONPATH}
    local data=$KIT/data/coco_mini ann=instances_coco128seg.json dev=cuda
    local steps=20 warmup=3 batch=16 masks=32 iters=9 limit=60 cache_batch=16 workers=12 budget=300
    if [ -n "${DRY:-}" ]; then
        ann=instances_coco8seg.json dev=cpu steps=2 warmup=1 batch=1 masks=2 iters=1 limit=900 cache_batch=2 workers=1 budget=60
    fi
    local common=(--set "data.images=\"$data/images\"" --set "data.annotations=\"$data/annotations/$ann\""
        --set "teacher.checkpoint=\"$KIT/teacher.pt\"" --set run.device=$dev)
    cd "$ROOT"
    (command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,utilization.gpu,memory.used --format=csv -lms 500 > "$OUT/nvidia_smi.csv" 2>&1) &
    local smi=$!
    python3 -c "import torch; print(torch.__version__, torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')" \
        > "$OUT/env.txt" 2>&1

    # 1. cache-teacher: the TinySAM-size teacher, every image and its flip, batched (before: 17.5 encodes/s)
    local t0=$SECONDS
    timeout -s TERM $((limit * 2)) python3 -m tinysam_edge train cache-teacher --teacher "$KIT/teacher.pt" --images "$data/images" \
        --annotations "$data/annotations/$ann" --out "$OUT/cache" --flip --device $dev \
        --batch-size $cache_batch --loader-workers $workers > "$OUT/cache_teacher.log" 2>&1
    echo "cache-teacher exit $? in $((SECONDS - t0)) s, $(ls "$OUT/cache" 2>/dev/null | grep -c npy) embeddings" > "$OUT/summary.txt"

    # 2. train bench: distillation from the cache, the issue's setting (before: 6 images/s steady)
    local bench=(--config configs/proxy_coco_mini.toml "${common[@]}" --set "teacher.cache=\"$OUT/cache\"" --set loss.embedding=1.0
        --set loss.token=1.0 --set loss.output=1.0 --set optim.batch_size=$batch --set data.max_masks=$masks
        --set sampler.max_iterations=$iters --set data.num_workers=$workers)
    timeout -s TERM $((limit * 3)) python3 -m tinysam_edge train bench "${bench[@]}" --steps $steps --warmup $warmup \
        --json "$OUT/bench_distill.json" > "$OUT/bench_distill.md" 2> "$OUT/bench_distill.log"
    echo "bench distill exit $?" >> "$OUT/summary.txt"
    timeout -s TERM $limit python3 -m tinysam_edge train bench "${bench[@]}" --set run.channels_last=true --steps $steps --warmup $warmup \
        --json "$OUT/bench_channels_last.json" > "$OUT/bench_channels_last.md" 2> "$OUT/bench_channels_last.log"
    echo "bench channels-last exit $?" >> "$OUT/summary.txt"

    # 3. the ground-truth-only recipe: max_steps from the measured steps/s of its own setting, to fit the budget
    local gt=(--config configs/proxy_coco_mini.toml "${common[@]}" --set data.num_workers=$workers
        --set optim.batch_size=$batch --set data.max_masks=$masks --set sampler.max_iterations=$iters)
    timeout -s TERM $limit python3 -m tinysam_edge train bench "${gt[@]}" --steps $steps --warmup $warmup \
        --json "$OUT/bench_gt_only.json" > "$OUT/bench_gt_only.md" 2> "$OUT/bench_gt_only.log"
    local max_steps
    max_steps=$(python3 -c "import json; r = json.load(open('$OUT/bench_gt_only.json')); print(max(20, int(r['steps_per_s'] * $budget * 0.85)))" 2>/dev/null || echo 200)
    t0=$SECONDS
    timeout -s TERM $((budget + 120)) python3 -m tinysam_edge train distill "${gt[@]}" --set "run.out=\"$OUT/proxy\"" \
        --set optim.max_steps=$max_steps --set run.val_every=$max_steps --set run.save_every=$max_steps > "$OUT/proxy_train.log" 2>&1
    echo "proxy distill ($max_steps steps) exit $? in $((SECONDS - t0)) s" >> "$OUT/summary.txt"
    timeout -s TERM $limit python3 demos/distill_proxy_eval.py configs/proxy_coco_mini.toml "${common[@]}" \
        --checkpoint "$OUT/proxy/student_last.pth" > "$OUT/proxy_eval.txt" 2> "$OUT/proxy_eval.log"
    echo "proxy eval exit $?" >> "$OUT/summary.txt"
    kill $smi 2>/dev/null
    rm -rf "$OUT/cache" "$OUT/proxy/student_best.pth" "$OUT/proxy/student_last.pth" "$OUT/proxy/train_state.pt"  # no checkpoint travels
    {
        cat "$OUT/env.txt"
        for f in bench_distill bench_channels_last bench_gt_only; do echo "== $f"; cat "$OUT/$f.md"; done
        echo "== proxy"; cat "$OUT/proxy_eval.txt"; grep -h "held-out mIoU" "$OUT/proxy_train.log" | tail -2
        echo "== nvidia-smi busy samples (mean %)"
        awk -F', ' 'NR > 1 {gsub(/ %/, "", $2); s += $2; n++} END {if (n) print s / n}' "$OUT/nvidia_smi.csv" 2>/dev/null
    } >> "$OUT/summary.txt"
    cp "$OUT/summary.txt" "$FINAL/summary.txt"
    tar -czf "$FINAL/logs.tgz" -C "$OUT" . && rm -rf "$OUT"
    cat "$FINAL/summary.txt"
}

case "${1:-}" in
prepare) prepare ;;
run) run ;;
*) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
