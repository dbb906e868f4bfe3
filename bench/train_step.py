"""Benchmark CGDR training steps: this pack's trainer against the straightforward implementation.

    COMFYUI_PATH=/path/to/ComfyUI python bench/train_step.py                       # tiny SD1.5, CPU
    COMFYUI_PATH=... python bench/train_step.py --checkpoint sd15.safetensors --batch 8 --resolution 512

Both step implementations run alternately in one process (see train_step_worker.py), on the same
random training data and weights; reported: median seconds per step, samples/s, the ratio, and on a
GPU the peak memory of each. Without --checkpoint the tiny SD1.5 test checkpoint is built and used.
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
from tests.support.tiny_models import build_tiny_models


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--checkpoint", type=Path, default=None)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--resolution", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    work = Path(tempfile.mkdtemp(prefix="f2d_train_bench_"))
    checkpoint = args.checkpoint or build_tiny_models(work / "models", args.comfyui).checkpoint
    result = run_library_script(
        Path(__file__).with_name("train_step_worker.py"),
        args.comfyui,
        timeout=3600,
        checkpoint=str(checkpoint),
        batch=args.batch,
        resolution=args.resolution,
        steps=args.steps,
        gradient_checkpointing=args.gradient_checkpointing,
        run_dir=str(work / "run"),
    )
    result.update(batch=args.batch, resolution=args.resolution, checkpoint=str(checkpoint))
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
