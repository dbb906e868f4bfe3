"""GPU check of SDXL F2D inference on full-size SDXL shapes (seeded random weights, no download, no file).

    COMFYUI_PATH=/path/to/ComfyUI python bench/gpu_sdxl.py --json out.json          # NVIDIA GPU
    COMFYUI_PATH=... python bench/gpu_sdxl.py --device cpu --tiny --size 64 --steps 2 # the script itself, on a CPU

Prints: embedding-file parity in ComfyUI's text dtype (max |diff|, must be 0), the text-encode time of Apply F2D
Tokens (S* in both towers + the class prompt's pooled vector) against CLIPTextEncode, and the KSampler time at
1024x1024 with F2D conditioning against plain conditioning (ratio; S* adds no sampling cost). See
bench/gpu_sdxl_worker.py. Exits with status 2 on a machine without CUDA unless `--device cpu`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))

from tests.support.comfy_library_run import run_library_script  # noqa: E402
from tests.support.tiny_sdxl import build_tiny_sdxl  # noqa: E402

log = logging.getLogger("f2d.bench.gpu_sdxl")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--tiny", action="store_true", help="The tiny SDXL test checkpoint instead of full-size shapes.")
    p.add_argument("--size", type=int, default=1024)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if a.device == "cuda" and not torch.cuda.is_available():
        log.error("no CUDA device: run on a GPU machine, or pass --device cpu --tiny to check the script")
        return 2
    kwargs = {"size": a.size, "steps": a.steps, "rounds": a.rounds}
    if a.tiny:
        cache = Path(os.environ.get("F2D_TEST_MODEL_CACHE") or "/tmp/f2d_tiny_sdxl")
        kwargs["checkpoint"] = str(build_tiny_sdxl(cache, a.comfyui).checkpoint)
    r = run_library_script(
        REPO_ROOT / "bench" / "gpu_sdxl_worker.py", a.comfyui, library_cpu=a.device == "cpu", **kwargs
    )
    log.info("device %s %s, %dx%d, %d steps; UNet %d parameters, built in %.1f s", r["device"], r["gpu"], r["size"],
             r["size"], r["steps"], r["unet_parameters"], r["build_s"])  # fmt: skip
    log.info("parity with the embedding file (%s): cond max |diff| %g, pooled %g", r["parity"]["text_dtype"],
             r["parity"]["cond_max_abs_diff"], r["parity"]["pooled_max_abs_diff"])  # fmt: skip
    log.info(
        "text encode: F2D %.4f s, plain %.4f s, ratio %.3f", r["text_s"]["f2d"], r["text_s"]["plain"], r["text_ratio"]
    )
    log.info("sampling: F2D %.3f s, plain %.3f s, ratio %.4f; peak memory %s GiB", r["sampling_s"]["f2d"],
             r["sampling_s"]["plain"], r["sampling_ratio"], r["peak_memory_gib"])  # fmt: skip
    if a.json:
        a.json.write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
