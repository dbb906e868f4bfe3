"""Benchmark FreeCure's cost: plain F2D sampling, the straightforward two-stage port and this pack's fast route,
side by side in one process (interleaved rounds), with peak memory and the ratios to plain.

    COMFYUI_PATH=/path/to/ComfyUI python bench/freecure_speed.py                       # tiny SD1.5, CPU
    COMFYUI_PATH=... python bench/freecure_speed.py --full-sd15 --size 256 --steps 4    # SD1.5-shaped UNet, CPU
    COMFYUI_PATH=... python bench/freecure_speed.py --checkpoint sd15.safetensors --size 512 --steps 30 --gpu
    COMFYUI_PATH=... python bench/freecure_speed.py --rounds 1 --profile 25   # + where the fast route's time goes

- plain F2D: one KSampler run (batch k: 2 UNet rows a step per image, cond + uncond).
- straightforward FreeCure: FreeCure's order: [PD, FD] sampled, parsed, [PD, FD] sampled again with FASA (4x).
- fast FreeCure: FD alone recording its attention keys, parsed, PD alone with the cached FD keys (about 2x).
- fast FreeCure + APG: then asymmetric prompt guidance (gamma 0.5: half the steps inverted at CFG 1, re-run).
The fast route's output is compared with the straightforward one (max abs latent difference, euler).
The attribute mask is fixed (the top 30 % of the image) so FASA does full work on random test weights.
With --profile N, one more fast-route run under cProfile: its N costliest functions (own time) and its stages.
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

from tests.support import synthetic_bisenet
from tests.support.comfy_library_run import run_library_script
from tests.support.tiny_models import build_tiny_models, import_comfy, write_full_sd15_checkpoint


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--checkpoint", type=Path, default=None, help="an SD1.x checkpoint (default: tiny test one)")
    parser.add_argument("--full-sd15", action="store_true", help="build a random-weight SD1.5-shaped checkpoint")
    parser.add_argument("--face-parser", type=Path, default=None, help="79999_iter.pth (default: seeded stand-in)")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--sampler", default="euler")
    parser.add_argument("--gpu", action="store_true", help="run ComfyUI on the GPU")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="profile one fast run: top N functions")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    work = Path(tempfile.mkdtemp(prefix="f2d_freecure_bench_"))
    if args.checkpoint:
        checkpoint = args.checkpoint
    elif args.full_sd15:
        checkpoint = work / "sd15_random.safetensors"
        import_comfy(args.comfyui)
        write_full_sd15_checkpoint(checkpoint)
    else:
        checkpoint = build_tiny_models(work / "models", args.comfyui).checkpoint
    face_parser = args.face_parser
    if face_parser is None:
        face_parser = work / "79999_iter.pth"
        synthetic_bisenet.write_checkpoint(face_parser)
    result = run_library_script(
        Path(__file__).with_name("freecure_speed_worker.py"),
        args.comfyui,
        timeout=3600,
        library_cpu=not args.gpu,
        checkpoint=str(checkpoint),
        parser_path=str(face_parser),
        size=args.size,
        steps=args.steps,
        rounds=args.rounds,
        batch=args.batch,
        sampler=args.sampler,
        profile_rows=args.profile,
    )
    result["checkpoint"] = str(checkpoint)
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
