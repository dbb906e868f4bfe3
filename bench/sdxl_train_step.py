"""Benchmark one SDXL CGDR step: micro-batching against the straightforward full-batch step (docs/sdxl.md 3.5).

    COMFYUI_PATH=/path/to/ComfyUI python bench/sdxl_train_step.py              # tiny SDXL, CPU, 128 px, batch 4
    COMFYUI_PATH=... python bench/sdxl_train_step.py --device cuda --full-unet --resolution 1024 --gpu-plan
    COMFYUI_PATH=... python bench/sdxl_train_step.py --checkpointing      # none / block / transformer_block

CPU: the step's time is measured with both configurations alternating in one process (medians), and
the peak memory as each configuration's peak RSS above the process's RSS before its first step, each in
a process of its own (the CPU allocator has no peak counter). GPU: one process, time and
torch.cuda.max_memory_allocated per configuration; --gpu-plan runs the 1024² plan (batch 8 whole vs
micro-batch 2, then the global batch of 32 in micro-batches, without checkpointing and with it at "block" and
"transformer_block" granularity).
Reported: seconds per step, samples/s, peak memory, and the ratios micro / full. --checkpointing
compares gradient checkpointing off, at "block" and at "transformer_block" granularity (docs/sdxl.md
3.5) side by side on the same batch (no micro-batching): ratios against no checkpointing.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.comfy_library_run import run_library_script
from tests.support.tiny_sdxl import build_tiny_sdxl

WORKER = Path(__file__).with_name("sdxl_train_step_worker.py")
GPU_PLAN = [
    {"name": "full_b8", "batch": 8, "micro_batch": 0},
    {"name": "micro2_b8", "batch": 8, "micro_batch": 2},
    {"name": "micro4_b32", "batch": 32, "micro_batch": 4},
    {"name": "micro8_b32_ckpt", "batch": 32, "micro_batch": 8, "checkpointing": "block"},
    {"name": "micro8_b32_ckpt_tb", "batch": 32, "micro_batch": 8, "checkpointing": "transformer_block"},
]


def _ratios(configs: dict, full: str, micro: str, label: str = "micro_over_full") -> dict:
    """Time and peak memory of configuration `micro` over `full`'s (label names the ratio)."""
    out = {f"time_{label}": configs[micro]["seconds_per_step"] / configs[full]["seconds_per_step"]}
    for key in ("peak_gib", "peak_rss_above_start_mib"):
        if key in configs[full] and key in configs[micro]:
            out[f"memory_{label} ({key})"] = configs[micro][key] / configs[full][key]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--micro-batch", type=int, default=1)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--full-unet", action="store_true", help="The full-size SDXL UNet on random weights.")
    parser.add_argument("--gpu-plan", action="store_true", help="The 1024 plan of configurations (GPU).")
    parser.add_argument(
        "--checkpointing", action="store_true", help="Compare checkpointing off / block / transformer_block."
    )
    parser.add_argument("--work-dir", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="f2d_sdxl_bench_"))
    sdxl = build_tiny_sdxl(work / "models", args.comfyui)
    common = {
        "checkpoint": str(sdxl.checkpoint),
        "te_options": str(sdxl.te_options),
        "run_dir": str(work / "run"),
        "resolution": args.resolution,
        "steps": args.steps,
        "full_unet": args.full_unet,
    }
    cpu = args.device == "cpu"
    pair = [
        {"name": "full", "batch": args.batch, "micro_batch": 0},
        {"name": "micro", "batch": args.batch, "micro_batch": args.micro_batch},
    ]
    granularities = [
        {"name": name, "batch": args.batch, "micro_batch": 0, "checkpointing": checkpointing}
        for name, checkpointing in (("none", False), ("block", "block"), ("transformer_block", "transformer_block"))
    ]
    configs = GPU_PLAN if args.gpu_plan else granularities if args.checkpointing else pair

    def run(cfgs: list[dict], mode: str) -> dict:
        return run_library_script(WORKER, args.comfyui, 3600, library_cpu=cpu, configs=cfgs, mode=mode, **common)

    result = run(configs, "time")
    if cpu:  # peak memory: one configuration per process
        for c in configs:
            alone = run([c], "memory")["configs"][c["name"]]
            result["configs"][c["name"]]["peak_rss_above_start_mib"] = alone["peak_rss_above_start_mib"]
    names = [c["name"] for c in configs]
    if args.checkpointing:
        result["ratios"] = {name: _ratios(result["configs"], "none", name, f"{name}_over_none") for name in names[1:]}
    else:
        result["ratios"] = _ratios(result["configs"], names[0], names[1])
    if args.gpu_plan:  # the finer granularity against "block", on the same global and micro batch
        tb = _ratios(result["configs"], "micro8_b32_ckpt", "micro8_b32_ckpt_tb", "transformer_block_over_block")
        result["ratios"].update(tb)
    result["command"] = " ".join(sys.argv)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
