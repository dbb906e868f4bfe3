#!/usr/bin/env bash
# Every GPU figure of the README's speed table in one call (a lent GPU's time is scarce; one machine start).
#   COMFYUI_PATH=/path/to/ComfyUI bash bench/gpu_all.sh [OUT_DIR]
# Encode (batch-1 latency, batched faces/s per precision, against the straightforward per-face path),
# torch face detection on the GPU against insightface + onnxruntime, and training on a full-size SD1.5
# UNet with random weights in ComfyUI's default dtype (50 CGDR steps per training dtype, then steps/s and
# peak memory at 512² for batch 8 and 32 in bf16), the peak GPU memory while training builds its UNet
# copy from the loaded fp16 UNet, the old way and the new side by side (torch.cuda.max_memory_allocated),
# and one MSID encoder training step (ViT-S, MS1MV3's 93K classes, batch 256 and 1024: images/s and MFU in
# bf16 against a plain fp32 loop). The full-size random checkpoint is written once to WORK_DIR. The sixth part,
# sdxl, is SDXL F2D inference on full-size SDXL shapes (seeded random weights made on the GPU, no file):
# embedding-file parity in ComfyUI's text dtype, the text-encode time and the KSampler time at 1024x1024 with F2D
# against plain conditioning (bench/gpu_sdxl.py). The seventh, sdxl_training, is one SDXL CGDR step at 1024² on
# the full-size SDXL UNet (random weights, bf16): the whole batch of 8 against micro-batches of 2 (time and
# torch.cuda.max_memory_allocated), then the global batch of 32 in micro-batches of 4, and of 8 with
# checkpointing at both granularities (bench/sdxl_train_step.py). The eighth, freecure, is FreeCure's cost (plain F2D, the
# straightforward two-stage port, the fast route and fast + APG, 512x512, 30 steps, on the full-size SD1.5
# checkpoint written by the training part). Last, bench/gpu_robustness.py checks the GPU-only failure classes
# (fp16 in the identity embedding and the margin softmax, memory released after an out-of-memory error, a state
# resumed on another device, a second GPU, NCCL peer-to-peer, FreeCure's FASA in fp16/bf16 through ComfyUI's SDPA
# against float64, an SDXL face on text towers in fp16/fp32/bf16/fp8). Each part writes JSON and a log to OUT_DIR;
# a part that fails does not stop the others.
# One device command may run 600 s and a loan is 15 minutes in all (the machine's start included), so the
# script runs in ONE call within a time budget (GPU_ALL_BUDGET_S, default 570 s): each part gets its own cap,
# cut down so that every later part still has its floor (the least time worth starting it); when the budget
# cannot hold every floor, earlier parts go first and a part that cannot get its floor is skipped and named. Parts run in the order below. Names after OUT_DIR choose parts (none: all):
#   COMFYUI_PATH=/path/to/ComfyUI bash bench/gpu_all.sh OUT            # device tool: timeout_s 600
#   GPU_ALL_BUDGET_S=900 bash bench/gpu_all.sh OUT sdxl sdxl_training   # a rerun of some parts
# (freecure uses the full-size SD1.5 checkpoint the training part writes, or writes one itself.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_results}}
PARTS=("${@:2}")
WORK_DIR=${WORK_DIR:-${TMPDIR:-/tmp}/f2d_gpu_all_work}
mkdir -p "$OUT_DIR" "$WORK_DIR"
export PYTHONUNBUFFERED=1
status=0
BUDGET_S=${GPU_ALL_BUDGET_S:-570}
# name cap floor (seconds), in run order; the floors of later parts are held back from earlier parts' caps.
PLAN=(encode:60:30 detection:50:25 training:80:50 training_peak:60:35 msid_training:60:35 freecure:90:60
  sdxl:70:40 sdxl_training:115:60 robustness:135:60)
chosen() { [ ${#PARTS[@]} -eq 0 ] || [[ " ${PARTS[*]} " == *" $1 "* ]]; }
floor_after() {  # the floors of the chosen parts after part $1
  local seen=0 sum=0 entry name
  for entry in "${PLAN[@]}"; do
    name=${entry%%:*}
    if [ $seen -eq 1 ] && chosen "$name"; then sum=$((sum + ${entry##*:})); fi
    [ "$name" = "$1" ] && seen=1
  done
  echo $sum
}
run() {
  local name=$1 entry cap floor left share
  shift
  chosen "$name" || return 0
  for entry in "${PLAN[@]}"; do [ "${entry%%:*}" = "$name" ] && break; done
  cap=$(echo "$entry" | cut -d: -f2); floor=$(echo "$entry" | cut -d: -f3)
  left=$((BUDGET_S - SECONDS))
  share=$((left - $(floor_after "$name")))  # what is left once the later parts' floors are held back
  [ $share -lt $floor ] && share=$floor       # an earlier part goes first when not all floors fit
  [ $share -lt $cap ] && cap=$share
  [ $left -lt $cap ] && cap=$left
  if [ $cap -lt $floor ]; then
    printf '\n== %s skipped: %s s left of the %s s budget, it needs %s s\n' "$name" $((BUDGET_S - SECONDS)) "$BUDGET_S" "$floor" \
      | tee "$OUT_DIR/$name.log"
    status=1
    return 0
  fi
  printf '\n== %s (at most %s s, at %s s of %s): %s\n' "$name" "$cap" "$SECONDS" "$BUDGET_S" "$*"
  timeout "$cap" "$@" 2>&1 | tee "$OUT_DIR/$name.log" || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
run encode python bench/gpu_encode.py --device cuda --batch 256 --json "$OUT_DIR/encode.json"
run detection python bench/detection.py --device cuda --repeats 15
run training python bench/gpu_training.py --device cuda --work-dir "$WORK_DIR" --json "$OUT_DIR/training.json"
run training_peak python bench/training_peak_memory.py --device cuda --work-dir "$WORK_DIR" --json "$OUT_DIR/training_peak.json"
run msid_training python bench/msid_train_step.py --device cuda --batch 256 1024 --json "$OUT_DIR/msid_training.json"
SD15_FULL=(--checkpoint "$WORK_DIR/sd15_full_random.safetensors")  # written by the training part
[ -f "$WORK_DIR/sd15_full_random.safetensors" ] || SD15_FULL=(--full-sd15)  # else freecure writes its own
run freecure python bench/freecure_speed.py --gpu "${SD15_FULL[@]}" \
  --size 512 --steps 30 --rounds 2 --json "$OUT_DIR/freecure.json"
run sdxl python bench/gpu_sdxl.py --device cuda --json "$OUT_DIR/sdxl.json"
run sdxl_training python bench/sdxl_train_step.py --device cuda --full-unet --resolution 1024 --gpu-plan \
  --steps 2 --work-dir "$WORK_DIR/sdxl_training" --json "$OUT_DIR/sdxl_training.json"
run robustness python bench/gpu_robustness.py --device cuda --work-dir "$WORK_DIR/robustness" \
  --json "$OUT_DIR/robustness.json"
exit $status
