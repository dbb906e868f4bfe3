#!/usr/bin/env bash
# Every GPU figure of the README's speed table in one call (a lent GPU's time is scarce; one machine start).
#   COMFYUI_PATH=/path/to/ComfyUI bash bench/gpu_all.sh [OUT_DIR]
# Encode (batch-1 latency, batched faces/s per precision, against the straightforward per-face path),
# torch face detection on the GPU against insightface + onnxruntime, and training on a full-size SD1.5
# UNet with random weights in ComfyUI's default dtype (50 CGDR steps per training dtype, then steps/s and
# peak memory at 512² for batch 8 and 32 in bf16), the peak GPU memory while training builds its UNet
# copy from the loaded fp16 UNet, the old way and the new side by side (torch.cuda.max_memory_allocated),
# and one MSID encoder training step (ViT-S, MS1MV3's 93K classes, batch 256 and 1024: images/s and MFU in
# bf16 against a plain fp32 loop), and FreeCure's cost (plain F2D, the straightforward two-stage port, the fast
# route and fast + APG, 512x512, 30 steps, on the same checkpoint). The full-size random checkpoint is written
# once to WORK_DIR. Each part writes JSON and a log to OUT_DIR; a part that fails does not stop the others;
# the five older parts are capped at 130 s and FreeCure at 100 s, so the whole run fits one 15-minute GPU
# loan with the machine's start.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_results}}
WORK_DIR=${WORK_DIR:-${TMPDIR:-/tmp}/f2d_gpu_all_work}
mkdir -p "$OUT_DIR" "$WORK_DIR"
export PYTHONUNBUFFERED=1
status=0
run() {
  local name=$1; shift
  printf '\n== %s: %s\n' "$name" "$*"
  timeout "${CAP:-130}" "$@" 2>&1 | tee "$OUT_DIR/$name.log" || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
run encode python bench/gpu_encode.py --device cuda --batch 256 --json "$OUT_DIR/encode.json"
run detection python bench/detection.py --device cuda --repeats 15
run training python bench/gpu_training.py --device cuda --work-dir "$WORK_DIR" --json "$OUT_DIR/training.json"
run training_peak python bench/training_peak_memory.py --device cuda --work-dir "$WORK_DIR" --json "$OUT_DIR/training_peak.json"
run msid_training python bench/msid_train_step.py --device cuda --batch 256 1024 --json "$OUT_DIR/msid_training.json"
CAP=100 run freecure python bench/freecure_speed.py --gpu --checkpoint "$WORK_DIR/sd15_full_random.safetensors" \
  --size 512 --steps 30 --rounds 2 --json "$OUT_DIR/freecure.json"
exit $status
