"""The device's peak memory while Train F2D Mapper builds its UNet copy, before and after issue 13's fix.

    COMFYUI_PATH=/path/to/ComfyUI python bench/training_peak_memory.py --device cpu --tiny   # accounted bytes
    COMFYUI_PATH=/path/to/ComfyUI python bench/training_peak_memory.py --device cuda        # full-size SD1.5

The UNet is loaded in fp16 and onto the device, as the sampler leaves it; then the training copy is built
the old way (deepcopy and cast on the device while the user's UNet is still there) and the new way (copy
on the CPU, user's UNet unloaded, copy moved over tensor by tensor in the training dtype), side by side in
one run (see training_peak_memory_worker.py). On CUDA the figures are `torch.cuda.max_memory_allocated`;
on a CPU the device's tensor bytes are accounted per stage. A full-size random SD1.5 is written once to
the work folder for --device cuda (no download); --tiny uses the tests' tiny SD1.5.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from bench.gpu_training import checkpoint_for  # noqa: E402
from tests.support.comfy_library_run import run_library_script  # noqa: E402

log = logging.getLogger("f2d.bench.training_peak_memory")
WORKER = REPO_ROOT / "bench" / "training_peak_memory_worker.py"
EXIT_NO_GPU = 2
MIB = 2**20


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"), help="ComfyUI checkout.")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="The tiny SD1.5 test checkpoint instead of the full size.")
    p.add_argument("--checkpoint", type=Path, help="An SD1.x checkpoint to use instead.")
    p.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    p.add_argument("--work-dir", type=Path, help="Where the full-size checkpoint is written (default: temporary).")
    p.add_argument("--json", type=Path, help="Also write the results here.")
    return p.parse_args(argv)


def summary_lines(result: dict) -> list[str]:
    """One line per training dtype: peak before, peak after, their ratio, in MiB and in UNets (fp16)."""
    unet = result["unet_fp16_bytes"]
    lines = [
        f"device {result['device']} {result['gpu']}; {result['measured']}; UNet {result['unet_parameters']:,} "
        f"parameters, {unet / MIB:.1f} MiB in fp16",
    ]
    for name, run in result["runs"].items():
        before, after = run["before"]["peak_bytes"], run["after"]["peak_bytes"]
        lines.append(
            f"training dtype {name}: peak before {before / MIB:.1f} MiB ({before / unet:.2f} fp16 UNets), "
            f"after {after / MIB:.1f} MiB ({after / unet:.2f} fp16 UNets); after/before {after / before:.2f}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.device == "cuda" and not torch.cuda.is_available():
        log.error(
            "--device cuda needs an NVIDIA GPU; PyTorch %s sees none. Use --device cpu --tiny.", torch.__version__
        )
        return EXIT_NO_GPU
    if args.comfyui is None:
        log.error("Where is ComfyUI? Pass --comfyui or set COMFYUI_PATH.")
        return EXIT_NO_GPU
    with tempfile.TemporaryDirectory(prefix="f2d_training_peak_") as tmp:
        work = args.work_dir or Path(tmp)
        checkpoint = checkpoint_for(args, work)
        result = run_library_script(
            WORKER,
            args.comfyui,
            timeout=1800,
            library_cpu=args.device == "cpu",
            checkpoint=str(checkpoint),
            dtypes=args.dtypes,
        )
    for line in summary_lines(result):
        log.info("%s", line)
    if args.json is not None:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
