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

`--regimes people` (also part of the default `all`) times, interleaved in one run, three graphs on a
landscape latent (width 1.5 x size): two people (scene CLIPTextEncode + two Add F2D Person on a
left/right layout), one person (Apply F2D Tokens), and the straightforward regional prompt (scene
CLIPTextEncode + two CLIPTextEncode through ConditioningSetMask + ConditioningCombine, same masks), in
the regimes of `--people-regimes` (new seed, new prompt), by wall time and by the server's CPU time.

    COMFYUI_PATH=... python bench/generation_cost.py --regimes people --people-regimes "new seed" \
        --size 64 --steps 8 --rounds 3

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

from f2d_core.conditioning.regions import layout_masks
from tests.support import formula_weights, synthetic_insightface
from tests.support.comfy_server import ComfyServer
from tests.support.f2d_graphs import encode_face_graph
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, GROUP, load_rgb
from tests.support.tiny_models import CHECKPOINT, build_tiny_models

log = logging.getLogger("generation_cost")
REPO = Path(__file__).resolve().parent.parent


def sampler_tail(
    graph: dict, positive: list, checkpoint: str, size: int, steps: int, seed: int, width: int | None = None
) -> dict:
    """Empty latent (size x size, or width x size) -> KSampler (paper settings) -> VAEDecode -> PreviewImage,
    negative = empty prompt."""
    graph["1"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": checkpoint}}
    graph["20"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": ""}}
    graph["21"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": width or size, "height": size, "batch_size": 1},
    }
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


LAYOUT_OVERLAP = 0.1


def landscape_width(size: int) -> int:
    """The people graphs' latent width: 1.5 x size, a multiple of 8."""
    return (size * 3 // 2) // 8 * 8


def people_graph(photos: list[str], prompt: str, size: int, **kw) -> dict:
    """Scene prompt + Add F2D Person for two encoded faces, left and right."""
    graph = encode_face_graph(photos[0], "a photo of f l")
    del graph["5"]
    graph["6"] = {"class_type": "LoadImage", "inputs": {"image": photos[1]}}
    graph["7"] = {"class_type": "F2DEncodeFace", "inputs": {**graph["4"]["inputs"], "image": ["6", 0]}}
    graph["8"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": f"two friends {prompt}"}}
    graph["9"] = {
        "class_type": "F2DRegionLayout",
        "inputs": {"latent": ["21", 0], "layout": "left/right halves", "overlap": LAYOUT_OVERLAP},
    }
    previous = ["8", 0]
    for person, (node_id, face) in enumerate((("10", "4"), ("11", "7")), start=1):
        graph[node_id] = {
            "class_type": "F2DAddPerson",
            "inputs": {
                "conditioning": previous,
                "clip": ["1", 1],
                "latent": ["21", 0],
                "f2d_face": [face, 0],
                "text": f"a photo of f l {prompt}",
                "masks": ["9", 0],
                "person": person,
                "strength": 1.0,
            },
        }
        previous = [node_id, 0]
    return sampler_tail(graph, previous, size=size, width=landscape_width(size), **kw)


def plain_regional_graph(prompt: str, size: int, **kw) -> dict:
    """The same regions with core nodes only: masks from SolidMask + MaskComposite (the layout's spans),
    CLIPTextEncode -> ConditioningSetMask -> ConditioningCombine per person."""
    height, width = size, landscape_width(size)
    columns = layout_masks("left/right halves", height, width, LAYOUT_OVERLAP)[:, 0].nonzero()
    graph = {
        "8": {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": f"two friends {prompt}"}},
        "9": {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": width, "height": height}},
    }
    previous = ["8", 0]
    for person, base in ((0, 30), (1, 40)):
        x = columns[columns[:, 0] == person, 1]
        x0, x1 = int(x.min()), int(x.max()) + 1
        graph[f"{base}"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": x1 - x0, "height": height}}
        graph[f"{base + 1}"] = {
            "class_type": "MaskComposite",
            "inputs": {"destination": ["9", 0], "source": [f"{base}", 0], "x": x0, "y": 0, "operation": "add"},
        }
        text = f"a photo of a person {prompt}"
        graph[f"{base + 2}"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["1", 1], "text": text}}
        graph[f"{base + 3}"] = {
            "class_type": "ConditioningSetMask",
            "inputs": {
                "conditioning": [f"{base + 2}", 0],
                "mask": [f"{base + 1}", 0],
                "strength": 1.0,
                "set_cond_area": "default",
            },
        }
        graph[f"{base + 4}"] = {
            "class_type": "ConditioningCombine",
            "inputs": {"conditioning_1": previous, "conditioning_2": [f"{base + 3}", 0]},
        }
        previous = [f"{base + 4}", 0]
    return sampler_tail(graph, previous, size=size, width=width, **kw)


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


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid` so far (all its threads), from /proc/<pid>/stat (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime: fields 14, 15


def measure_people(server: ComfyServer, photos: list[str], regime: str, rounds: int, **kw) -> dict:
    """Median seconds of the two-people, one-person and plain regional graphs, interleaved (see measure;
    here the untimed run before each timed one samples one step, and each graph runs once untimed first).

    Besides the server's wall-clock execution time, each timed run's CPU time of the server process is
    recorded: on a machine shared with other jobs it depends far less on their load than wall time does.
    """
    builders = {
        "two_people": lambda prompt, **k: people_graph(photos[:2], prompt, **k),
        "one_person": lambda prompt, **k: f2d_graph(photos[0], prompt, width=landscape_width(k["size"]), **k),
        "plain_regional": plain_regional_graph,
    }
    times: dict[str, list[float]] = {name: [] for name in builders}
    cpu: dict[str, list[float]] = {name: [] for name in builders}
    short = {**kw, "steps": 1}  # untimed runs only fill ComfyUI's cache: one sampling step is enough
    for builder in builders.values():  # warm-up: first loads and allocations are not timed
        server.run(builder("warm-up", seed=99, **short), timeout=3600)
    for r in range(rounds):
        order = list(builders)[r % 3 :] + list(builders)[: r % 3]
        for name in order:
            prompt = f"at a cafe, variation {r}" if regime == "new prompt" else "at a cafe"
            prime_prompt = "at a beach" if regime == "new prompt" else prompt
            server.run(builders[name](prime_prompt, seed=r, **short), timeout=3600)
            before = cpu_seconds(server.pid)
            history = server.run(builders[name](prompt, seed=10_000 + r, **kw), timeout=3600)
            cpu[name].append(cpu_seconds(server.pid) - before)
            times[name].append(execution_seconds(history))
    wall = {name: statistics.median(values) for name, values in times.items()}
    cpu_median = {name: statistics.median(values) for name, values in cpu.items()}
    return {
        **{f"{name}_s": value for name, value in wall.items()},
        **{f"{name}_cpu_s": value for name, value in cpu_median.items()},
        "two_people_vs_plain_regional": wall["two_people"] / wall["plain_regional"],
        "two_people_vs_one_person": wall["two_people"] / wall["one_person"],
        "cpu_two_people_vs_plain_regional": cpu_median["two_people"] / cpu_median["plain_regional"],
        "cpu_two_people_vs_one_person": cpu_median["two_people"] / cpu_median["one_person"],
        # The fastest run of each: the work itself, without the stalls a shared machine adds to some runs.
        "fastest_two_people_vs_plain_regional": min(times["two_people"]) / min(times["plain_regional"]),
        "fastest_two_people_vs_one_person": min(times["two_people"]) / min(times["one_person"]),
        "runs": times,
        "cpu_runs": cpu,
    }


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
    parser.add_argument(
        "--regimes",
        choices=["all", "single", "people"],
        default="all",
        help="single: F2D vs CLIPTextEncode in three regimes; people: two people vs one vs plain regional",
    )
    parser.add_argument(
        "--people-regimes", nargs="+", choices=["new seed", "new prompt"], default=["new seed", "new prompt"]
    )
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
        for regime in ("new seed", "new prompt", "new photo") if args.regimes in ("all", "single") else ():
            results[regime] = measure(server, photos, regime, args.rounds, **common)
            r = results[regime]
            log.info("%-10s  F2D %.3f s  plain %.3f s  ratio %.4f", regime, r["f2d_s"], r["plain_s"], r["ratio"])
        for regime in args.people_regimes if args.regimes in ("all", "people") else ():
            results[f"people, {regime}"] = r = measure_people(server, photos, regime, args.rounds, **common)
            for kind, suffix in (("wall", "_s"), ("cpu", "_cpu_s")):
                prefix = "cpu_" if kind == "cpu" else ""
                log.info(
                    "people, %-10s %s: two people %.3f s  one person %.3f s  plain regional %.3f s  "
                    "two/plain regional %.4f  two/one %.4f",
                    regime,
                    kind,
                    r[f"two_people{suffix}"],
                    r[f"one_person{suffix}"],
                    r[f"plain_regional{suffix}"],
                    r[f"{prefix}two_people_vs_plain_regional"],
                    r[f"{prefix}two_people_vs_one_person"],
                )
            log.info(
                "people, %-10s fastest runs: two people %.3f s  one person %.3f s  plain regional %.3f s  "
                "two/plain regional %.4f  two/one %.4f",
                regime,
                min(r["runs"]["two_people"]),
                min(r["runs"]["one_person"]),
                min(r["runs"]["plain_regional"]),
                r["fastest_two_people_vs_plain_regional"],
                r["fastest_two_people_vs_one_person"],
            )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
