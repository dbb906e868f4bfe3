"""GPU check of mapper training: does it learn in the dtype the GPU gives, and how fast is it?

    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_training.py            # NVIDIA GPU, full-size SD1.5
    COMFYUI_PATH=... python bench/gpu_training.py --device cpu --tiny      # the script itself, on a CPU

On the GPU: a full-size SD1.5 checkpoint on seeded random weights (no download: the UNet's shapes
and cost are real, its behaviour is not) is loaded as ComfyUI loads it there, the UNet in fp16. Then
`--steps` CGDR steps (default 50) on one fixed batch of 8 at 512x512 in fp32, bf16, fp16 under the
loss scale, and the plain fp16 backward training ran before its training dtype existed: per dtype the
first and last loss, the smallest gradient norm, how many steps had an exactly zero gradient and the
cosine of the first step's gradient with fp32's. Then steps/s and peak GPU memory of the trainer's
real steps in bf16 at batch 8 and 32. Exits with status 2 and a message on a machine without CUDA
unless `--device cpu`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.comfy_library_run import run_library_script  # noqa: E402
from tests.support.tiny_models import build_tiny_models  # noqa: E402

log = logging.getLogger("f2d.bench.gpu_training")
WORKER = REPO_ROOT / "bench" / "gpu_training_worker.py"
EXIT_NO_GPU = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout.")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="The tiny SD1.5 test checkpoint instead of the full size.")
    p.add_argument("--checkpoint", type=Path, help="An SD1.x checkpoint to use instead of random weights.")
    p.add_argument("--steps", type=int, default=50, help="Steps on the fixed batch, per dtype.")
    p.add_argument("--learn-batch", type=int, default=8)
    p.add_argument("--speed-batches", type=int, nargs="+", default=[8, 32])
    p.add_argument("--speed-steps", type=int, default=5, help="Timed steps per batch size (after one warm-up).")
    p.add_argument("--resolution", type=int, default=512)
    p.add_argument("--lr", type=float, default=1e-4, help="AdamW learning rate of the fixed-batch run.")
    p.add_argument("--no-gradient-checkpointing", action="store_true", help="For the speed part.")
    p.add_argument("--work-dir", type=Path, help="Checkpoint and run folders (default: a temporary folder).")
    p.add_argument("--json", type=Path, help="Also write the results here.")
    return p.parse_args(argv)


def gpu_problem(device: str) -> str | None:
    """Why this machine cannot run the GPU check (None when it can)."""
    if device == "cuda" and not torch.cuda.is_available():
        return (
            f"bench/gpu_training.py needs an NVIDIA GPU: PyTorch {torch.__version__} sees none here. "
            "Run it where one is, or check the script itself with --device cpu --tiny."
        )
    return None


def checkpoint_for(args: argparse.Namespace, work: Path) -> Path:
    """The checkpoint to train with: given, the tiny test one, or a full-size random SD1.5 (written once)."""
    if args.checkpoint is not None:
        return args.checkpoint
    if args.tiny:
        cache = os.environ.get("F2D_TEST_MODEL_CACHE")  # the tests' tiny-model cache, when there is one
        return build_tiny_models(Path(cache) if cache else work / "tiny_models", args.comfyui).checkpoint
    path = work / "sd15_full_random.safetensors"
    if not path.exists():
        argv = [sys.executable, "-m", "tests.support.tiny_models", "--comfyui-path", str(args.comfyui)]
        subprocess.run([*argv, "--full-sd15", str(path)], cwd=REPO_ROOT, check=True)
    return path


def summary_lines(result: dict) -> list[str]:
    """The table a person reads: one line per dtype of the learning part, one per batch of the speed part."""
    lines = [f"device {result['device']} {result.get('gpu', '')}, {result['resolution']}x{result['resolution']}"]
    for name, run in result["learning"].items():
        losses, norms = run["losses"], [n for n in run["grad_norms"] if n == n]
        lines.append(
            f"{name:>20}: UNet {run['unet_weights']} -> computes in {run['computes_in']}, loss {losses[0]:.5f} -> "
            f"{losses[-1]:.5f}, min grad norm {min(norms, default=float('nan')):.3g}, "
            f"{run['zero_gradient_steps']} zero-gradient steps, first-gradient cosine to fp32 "
            f"{run['first_gradient_cosine_to_fp32']:.4f}"
        )
    for s in result["speed"]:
        peak = "n/a" if s["peak_gib"] is None else f"{s['peak_gib']:.1f} GiB"
        lines.append(
            f"batch {s['batch']:>3} in {s['computes_in']}: {s['steps_per_second']:.2f} steps/s, "
            f"{s['samples_per_second']:.1f} samples/s, peak {peak}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    problem = gpu_problem(args.device)
    if problem is not None:
        log.error("%s", problem)
        return EXIT_NO_GPU
    if args.comfyui is None:
        log.error("Where is ComfyUI? Pass --comfyui or set COMFYUI_PATH.")
        return EXIT_NO_GPU
    with tempfile.TemporaryDirectory(prefix="f2d_gpu_training_") as tmp:
        work = args.work_dir or Path(tmp)
        result = run_library_script(
            WORKER,
            args.comfyui,
            timeout=3600,
            library_cpu=args.device == "cpu",
            checkpoint=str(checkpoint_for(args, work)),
            work_dir=str(work / "runs"),
            steps=args.steps,
            learn_batch=args.learn_batch,
            speed_batches=args.speed_batches,
            resolution=args.resolution,
            speed_steps=args.speed_steps,
            learning_rate=args.lr,
            gradient_checkpointing=not args.no_gradient_checkpointing,
        )
    for line in summary_lines(result):
        log.info("%s", line)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
