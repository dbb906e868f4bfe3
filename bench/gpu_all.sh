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
# checkpointing (bench/sdxl_train_step.py). The eighth, freecure, is FreeCure's cost (plain F2D, the
# straightforward two-stage port, the fast route and fast + APG, 512x512, 30 steps, on the full-size SD1.5
# checkpoint written by the training part). Last, bench/gpu_robustness.py checks the GPU-only failure classes
# (fp16 in the identity embedding and the margin softmax, memory released after an out-of-memory error, a state
# resumed on another device, a second GPU, NCCL peer-to-peer, FreeCure's FASA in fp16/bf16 through ComfyUI's SDPA
# against float64, an SDXL face on text towers in fp16/fp32/bf16/fp8). Each part writes JSON and a log to OUT_DIR;
# a part that fails does not stop the others.
# One device command may run 600 s and a loan is 15 minutes in all, so run it as two calls (names after OUT_DIR
# choose the parts; none: all):
#   bash bench/gpu_all.sh OUT encode detection training training_peak msid_training freecure  # 5x80+100 = 500 s
#   bash bench/gpu_all.sh OUT sdxl sdxl_training robustness                                    # 80+100+180 = 360 s
# (freecure uses the checkpoint the training part writes, so they share a call.)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-${OUT:-gpu_results}}
PARTS=("${@:2}")
WORK_DIR=${WORK_DIR:-${TMPDIR:-/tmp}/f2d_gpu_all_work}
mkdir -p "$OUT_DIR" "$WORK_DIR"
export PYTHONUNBUFFERED=1
status=0
run() {
  local name=$1 cap=$2; shift 2
  if [ ${#PARTS[@]} -gt 0 ] && [[ " ${PARTS[*]} " != *" $name "* ]]; then return 0; fi
  printf '
== %s (at most %s s): %s
' "$name" "$cap" "$*"
  timeout "$cap" "$@" 2>&1 | tee "$OUT_DIR/$name.log" || status=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT_DIR/gpu.txt"
run encode 80 python bench/gpu_encode.py --device cuda --batch 256 --json "$OUT_DIR/encode.json"
run detection 80 python bench/detection.py --device cuda --repeats 15
run training 80 python bench/gpu_training.py --device cuda --work-dir "$WORK_DIR" --json "$OUT_DIR/training.json"
run training_peak 80 python bench/training_peak_memory.py --device cuda --work-dir "$WORK_DIR" --json "$OUT_DIR/training_peak.json"
run msid_training 80 python bench/msid_train_step.py --device cuda --batch 256 1024 --json "$OUT_DIR/msid_training.json"
run sdxl 80 python bench/gpu_sdxl.py --device cuda --json "$OUT_DIR/sdxl.json"
run sdxl_training 100 python bench/sdxl_train_step.py --device cuda --full-unet --resolution 1024 --gpu-plan \
  --steps 2 --work-dir "$WORK_DIR/sdxl_training" --json "$OUT_DIR/sdxl_training.json"
run freecure 100 python bench/freecure_speed.py --gpu --checkpoint "$WORK_DIR/sd15_full_random.safetensors" \
  --size 512 --steps 30 --rounds 2 --json "$OUT_DIR/freecure.json"
run robustness 180 python bench/gpu_robustness.py --device cuda --work-dir "$WORK_DIR/robustness" \
  --json "$OUT_DIR/robustness.json"
exit $status
