#!/usr/bin/env bash
# The SDXL training check on a lent GPU, called by bench/gpu_all.sh (or alone):
#   COMFYUI_PATH=/path/to/ComfyUI bash bench/gpu_sdxl_training.sh [OUT_DIR] [SECONDS]
# One SDXL CGDR step at 1024² on the full-size SDXL UNet (2.57 B parameters, seeded random weights, bf16):
# the whole batch of 8 against micro-batches of 2 (time and torch.cuda.max_memory_allocated, ratios), then
# the global batch of 32 in micro-batches of 4, and of 8 with gradient checkpointing. Capped at SECONDS
# (default 100); writes sdxl_training.json and a log to OUT_DIR.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_results}}
CAP=${2:-100}
WORK_DIR=${WORK_DIR:-${TMPDIR:-/tmp}/f2d_gpu_all_work}
mkdir -p "$OUT_DIR" "$WORK_DIR"
printf '\n== sdxl_training: bench/sdxl_train_step.py at 1024² (cap %s s)\n' "$CAP"
timeout "$CAP" python bench/sdxl_train_step.py --device cuda --full-unet --resolution 1024 --gpu-plan --steps 2 \
  --work-dir "$WORK_DIR/sdxl" --json "$OUT_DIR/sdxl_training.json" 2>&1 | tee "$OUT_DIR/sdxl_training.log"
