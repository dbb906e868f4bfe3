"""SDXL generation cost in a real ComfyUI server: the F2D workflow against the same workflow with CLIPTextEncode.

    COMFYUI_PATH=/path/to/ComfyUI python bench/sdxl_generation_cost.py --size 64 --steps 4 --rounds 5

The tiny SDXL test checkpoint (tests/support/tiny_sdxl.py: the real SDXL UNet's width and input-side depth,
3-layer text towers) on the CPU, loaded by the test probe loader, and a seeded SDXL mapper (F2DMapperXL,
`class_prompt` pooled source: Apply F2D Tokens also encodes the class prompt for SDXL's pooled vector). Both
graphs share checkpoint, sampler (euler_ancestral), steps, CFG 7, size and seed; the F2D one takes its positive
prompt from Apply F2D Tokens with S* from Encode Face -> S*. Runs alternate (F2D, plain, plain, F2D, ...) so
machine load hits both alike; each time is the server's own execution time, in two regimes (as
bench/generation_cost.py): new seed (only sampling reruns) and new prompt (Apply F2D Tokens / CLIPTextEncode
rerun too). Prints the medians and their ratio (goal: <= 1.02).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.generation_cost import execution_seconds, f2d_graph, plain_graph
from f2d_core.checkpoints import save_f2d_safetensors
from f2d_core.identity.mapper_xl import F2DMapperXL
from tests.support import formula_weights, synthetic_insightface
from tests.support.comfy_server import ComfyServer
from tests.support.photos import ASTRONAUT, load_rgb
from tests.support.tiny_models import build_tiny_models
from tests.support.tiny_sdxl import SDXL_CHECKPOINT, build_tiny_sdxl

log = logging.getLogger("sdxl_generation_cost")
REPO = Path(__file__).resolve().parent.parent
MAPPER = "bench_sdxl_mapper.safetensors"


def sdxl(graph: dict) -> dict:
    """The graph on the tiny SDXL (probe loader) with the SDXL mapper."""
    graph["1"] = {"class_type": "F2DTestTinySDXLCheckpointLoader", "inputs": {"ckpt_name": Path(SDXL_CHECKPOINT).name}}
    if "2" in graph:
        graph["2"]["inputs"]["mapper_file"] = MAPPER
    return graph


def measure(server: ComfyServer, photo: str, regime: str, rounds: int, **kw) -> dict:
    """Median seconds of F2D and plain runs in one regime, interleaved; each timed run follows an untimed run
    of the same graph that leaves cached exactly what the regime assumes (ComfyUI keeps the last prompt's)."""
    times: dict[str, list[float]] = {"f2d": [], "plain": []}
    builders = {"f2d": lambda p, **k: f2d_graph(photo, p, **k), "plain": plain_graph}
    for r in range(rounds):
        for name in ("f2d", "plain") if r % 2 else ("plain", "f2d"):
            prompt = f"as a knight, variation {r}" if regime != "new seed" else "as a knight"
            prime = "as a chef" if regime != "new seed" else prompt
            server.run(sdxl(builders[name](prime, seed=r, **kw)), timeout=3600)
            history = server.run(sdxl(builders[name](prompt, seed=10_000 + r, **kw)), timeout=3600)
            times[name].append(execution_seconds(history))
    f2d, plain = statistics.median(times["f2d"]), statistics.median(times["plain"])
    return {"f2d_s": f2d, "plain_s": plain, "ratio": f2d / plain, "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--models-dir", type=Path, default=os.environ.get("F2D_TEST_MODEL_CACHE"))
    parser.add_argument("--regimes", nargs="+", choices=["new seed", "new prompt"], default=["new seed", "new prompt"])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    work = Path(tempfile.mkdtemp(prefix="f2d_sdxl_cost_"))
    models = Path(args.models_dir or work / "models")
    build_tiny_models(models, args.comfyui)
    build_tiny_sdxl(models, args.comfyui)
    formula_weights.write_official_checkpoints(models / "face2diffusion")
    synthetic_insightface.write_synthetic_pack(models / "insightface", "buffalo_l")
    torch.manual_seed(0)
    save_f2d_safetensors(models / "face2diffusion" / MAPPER, mapper=F2DMapperXL())
    pack = {"comfyui-face2diffusion": REPO, "f2d_test_probe_nodes": REPO / "tests" / "support" / "probe_nodes"}
    with ComfyServer(args.comfyui, work / "server", models, custom_nodes=pack) as server:
        server.wait_ready()
        face = Image.fromarray(synthetic_insightface.face_photo(load_rgb(ASTRONAUT)))
        photo = server.upload_image(face, "bench_sdxl_face.png")
        common = {"checkpoint": "unused", "size": args.size, "steps": args.steps}
        results = {"size": args.size, "steps": args.steps, "rounds": args.rounds, "checkpoint": SDXL_CHECKPOINT}
        for regime in args.regimes:
            results[regime] = r = measure(server, photo, regime, args.rounds, **common)
            log.info("%-10s  F2D %.3f s  plain %.3f s  ratio %.4f", regime, r["f2d_s"], r["plain_s"], r["ratio"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
