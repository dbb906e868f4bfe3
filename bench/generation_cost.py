"""Generation cost in a real ComfyUI server: an F2D workflow against the same workflow with CLIPTextEncode.

    COMFYUI_PATH=/path/to/ComfyUI python bench/generation_cost.py --size 256 --steps 20 --rounds 5

Both graphs share checkpoint, sampler (euler_ancestral), steps, CFG 7, size and seed; the F2D one
takes its positive prompt from Apply F2D Tokens with S* from Encode Face -> S*. Runs alternate
(F2D, plain, plain, F2D, ...) so machine load hits both alike. Each run's time is the server's own
execution time (execution_start -> execution_success timestamps), in three regimes:

- new seed: only sampling reruns (ComfyUI caches the encoded face and the conditioning): the
  steady state of a user generating variations;
- new prompt: Apply F2D Tokens / CLIPTextEncode rerun too;
- new photo: face detection, alignment and MSID encoding rerun too (the whole F2D cost).

Uses the tiny SD1.5 test checkpoint (built at start) on CPU by default; --checkpoint-dir/--checkpoint
point at another models folder and checkpoint (e.g. a full-size SD1.5 on a GPU machine).
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

from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support import formula_weights, synthetic_insightface
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import encode_face_graph
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, GROUP, load_rgb
from tests.support.tiny_models import CHECKPOINT, build_tiny_models

log = logging.getLogger("generation_cost")
REPO = Path(__file__).resolve().parent.parent


def sampler_tail(graph: dict, positive: list, checkpoint: str, size: int, steps: int, seed: int) -> dict:
    """Empty latent -> KSampler (paper settings) -> VAEDecode -> PreviewImage, negative = empty prompt."""
    graph["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}
    graph["20"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    graph["21"] = {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}}
    graph["22"] = {
        "class_type": "KSampler",
        "inputs": {
            "model": ["1", 0],
            "positive": positive,
            "negative": ["20", 0],
            "latent_image": ["21", 0],
            "seed": seed,
            "steps": steps,
            "cfg": 7.0,
            "sampler_name": "euler_ancestral",
            "scheduler": "normal",
            "denoise": 1.0,
        },
    }
    graph["23"] = {"class_type": "VAEDecode", "inputs": {"samples": ["22", 0], "vae": ["1", 2]}}
    graph["24"] = {"class_type": "PreviewImage", "inputs": {"images": ["23", 0]}}
    return graph


def f2d_graph(photo: str, prompt: str, **kw) -> dict:
    graph = encode_face_graph(photo, f"a photo of f l {prompt}")
    return sampler_tail(graph, ["5", 0], **kw)


def plain_graph(prompt: str, **kw) -> dict:
    graph = {
        "5": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": f"a photo of a person {prompt}"}}
    }
    return sampler_tail(graph, ["5", 0], **kw)


def execution_seconds(history: dict) -> float:
    """The server's own time for a prompt, from its status messages."""
    stamps = {event: data["timestamp"] for event, data in history["status"]["messages"]}
    return (stamps["execution_success"] - stamps["execution_start"]) / 1000.0


def measure(server: ComfyServer, photos: list[str], regime: str, rounds: int, **kw) -> dict:
    """Median seconds of F2D and plain runs in one regime, interleaved.

    ComfyUI's default cache keeps only the last prompt's nodes, so each timed run follows an untimed
    run of the same graph that leaves cached exactly what the regime assumes.
    """
    times: dict[str, list[float]] = {"f2d": [], "plain": []}
    builders = {"f2d": f2d_graph, "plain": lambda photo, prompt, **k: plain_graph(prompt, **k)}
    for r in range(rounds):
        order = ("f2d", "plain") if r % 2 else ("plain", "f2d")
        for name in order:
            photo = photos[1 + r % (len(photos) - 1)] if regime == "new photo" else photos[0]
            prompt = f"as a knight, variation {r}" if regime != "new seed" else "as a knight"
            prime_prompt = "as a chef" if regime != "new seed" else prompt
            server.run(builders[name](photos[0], prime_prompt, seed=r, **kw), timeout=3600)
            history = server.run(builders[name](photo, prompt, seed=10_000 + r, **kw), timeout=3600)
            times[name].append(execution_seconds(history))
    f2d, plain = statistics.median(times["f2d"]), statistics.median(times["plain"])
    return {"f2d_s": f2d, "plain_s": plain, "ratio": f2d / plain, "runs": times}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--checkpoint-dir", type=Path, default=None, help="models folder with checkpoints/")
    parser.add_argument("--checkpoint", default=Path(CHECKPOINT).name)
    parser.add_argument("--gpu", action="store_true", help="let ComfyUI use the GPU (default: --cpu)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.comfyui:
        parser.error("set COMFYUI_PATH or pass --comfyui")
    work = Path(tempfile.mkdtemp(prefix="f2d_gen_cost_"))
    models = args.checkpoint_dir or build_tiny_models(work / "models", args.comfyui).models_dir
    formula_weights.write_official_checkpoints(models / "face2diffusion")
    synthetic_insightface.write_synthetic_pack(models / "insightface", "buffalo_l")
    pack = {"comfyui-face2diffusion": REPO}
    with ComfyServer(args.comfyui, work / "server", models, custom_nodes=pack, cpu=not args.gpu) as server:
        server.wait_ready()
        photos = [
            server.upload_image(Image.fromarray(synthetic_insightface.face_photo(load_rgb(src))), f"bench_{i}.png")
            for i, src in enumerate((ASTRONAUT, ALIGNED_CROP, GROUP))
        ]
        common = {"checkpoint": args.checkpoint, "size": args.size, "steps": args.steps}
        results = {"size": args.size, "steps": args.steps, "rounds": args.rounds, "checkpoint": args.checkpoint}
        for regime in ("new seed", "new prompt", "new photo"):
            results[regime] = measure(server, photos, regime, args.rounds, **common)
            r = results[regime]
            log.info("%-10s  F2D %.3f s  plain %.3f s  ratio %.4f", regime, r["f2d_s"], r["plain_s"], r["ratio"])
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
