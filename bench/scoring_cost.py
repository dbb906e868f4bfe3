"""Scoring cost against generation cost: a batch of 16 images at 512², scored vs generated.

    COMFYUI_PATH=/path/to/ComfyUI python bench/scoring_cost.py --steps 30 --rounds 3

Scoring (in this process, on the CPU, models of the real files' structure): face detection (the
pack's FaceDetector), ArcFace alignment + embedding through torch (an IResNet-structured recogniser,
batched), closest-reference matching, and the CLIP score (a tiny transformers CLIP, batched). The
straightforward way, timed in the same rounds (interleaved): insightface's FaceAnalysis with detection
and recognition on onnxruntime (`app.get`, norm_crop + ArcFaceONNX, one image at a time) and CLIP one
image at a time. Generation: the benchmark's graph (cli/benchmark_graph.py, official setting, batch 16,
Euler a, CFG 7, --steps) on a real ComfyUI server with the tiny SD1.5 test checkpoint; the server's
own execution time. The images scored carry a synthetic face (so every stage runs).
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cli.benchmark_graph import Models, Sampling, generation_graph
from f2d_core.evaluation.clip_models import load_clip_scorer
from f2d_core.evaluation.clip_score import clip_scores
from f2d_core.evaluation.face_similarity import faces_in_images, match_to_references
from f2d_core.evaluation.recognition import load_face_recognizer
from f2d_core.faces.face_detection import FaceDetector
from tests.support import formula_weights, synthetic_arcface, synthetic_insightface, tiny_clip
from tests.support.comfy_server import ComfyServer
from tests.support.photos import ASTRONAUT, load_rgb
from tests.support.tiny_models import CHECKPOINT, build_tiny_models

log = logging.getLogger("scoring_cost")
REPO = Path(__file__).resolve().parent.parent
PROMPT = "a photo of f l as a knight"
BATCH, SIZE = 16, 512


def scored_images(seed: int = 0) -> np.ndarray:
    """16 noise images 512x512 with a synthetic face (found at detection size 512) each: [16, H, W, 3] uint8."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 96, (BATCH, SIZE, SIZE, 3), dtype=np.uint8)
    face = synthetic_insightface.face_photo(load_rgb(ASTRONAUT), (128, 128), (64, 64), 128)
    images[:, 192:320, 192:320] = face
    return images


def score_batched(detector, recognizer, clip, images: np.ndarray, reference: torch.Tensor) -> tuple:
    """This pack's scoring of a batch: (identity [16], CLIP score [16])."""
    batch = torch.from_numpy(images).float() / 255
    crops = faces_in_images(detector, recognizer, batch)
    found = torch.cat([c for c in crops if len(c)])
    embeddings = torch.split(recognizer.embed(found), [len(c) for c in crops if len(c)])
    identity = torch.stack([match_to_references(e, reference).mean() for e in embeddings])
    return identity, clip_scores(clip, batch, [PROMPT])


def score_straightforward(app, clip, images: np.ndarray, reference: np.ndarray) -> list[float]:
    """insightface FaceAnalysis (onnxruntime) per image + CLIP per image."""
    scores = []
    for image in images:
        faces = app.get(np.ascontiguousarray(image[:, :, ::-1]))
        emb = faces[0].normed_embedding
        clip_scores(clip, torch.from_numpy(image[None]).float() / 255, [PROMPT])
        scores.append(float(max(0.0, emb @ reference)))
    return scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui", type=Path, default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--skip-generation", action="store_true", help="only compare the two scoring ways")
    parser.add_argument(
        "--generation-timeout",
        type=float,
        default=36000,
        help="stop generating after this many seconds; the ratio is then reported as an upper bound",
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    work = Path(tempfile.mkdtemp(prefix="f2d_scoring_cost_"))
    root = work / "insightface"
    pack_dir = synthetic_insightface.write_synthetic_pack(root, "buffalo_l", ["det_10g.onnx"])
    synthetic_arcface.write_arcface_recognizer(pack_dir / "w600k_r50.onnx")
    detector = FaceDetector(root, "buffalo_l", det_size=SIZE)
    recognizer = load_face_recognizer(pack_dir / "w600k_r50.onnx")
    clip = load_clip_scorer(tiny_clip.write_transformers_clip(work / "tiny_clip"))
    images = scored_images()
    reference = recognizer.embed(faces_in_images(detector, recognizer, torch.from_numpy(images[:1]).float() / 255)[0])

    from insightface.app import FaceAnalysis

    app = FaceAnalysis(name=str(pack_dir), root=str(root), allowed_modules=["detection", "recognition"],
                       providers=["CPUExecutionProvider"])  # fmt: skip
    app.prepare(ctx_id=-1, det_size=(SIZE, SIZE))
    ours_scores, _ = score_batched(detector, recognizer, clip, images, reference)
    theirs = score_straightforward(app, clip, images, reference[0].numpy())
    log.info("identity, this pack vs insightface/onnxruntime: max |diff| %.2e",
             float(np.abs(ours_scores.numpy() - np.array(theirs)).max()))  # fmt: skip
    times: dict[str, list[float]] = {"ours": [], "straightforward": []}
    for r in range(args.rounds):
        for name in ("ours", "straightforward") if r % 2 == 0 else ("straightforward", "ours"):
            start = time.perf_counter()
            if name == "ours":
                score_batched(detector, recognizer, clip, images, reference)
            else:
                score_straightforward(app, clip, images, reference[0].numpy())
            times[name].append(time.perf_counter() - start)
    ours, straight = statistics.median(times["ours"]), statistics.median(times["straightforward"])
    log.info("scoring 16 images at 512²: this pack %.3f s, straightforward %.3f s (%.2fx)", ours, straight,
             straight / ours)  # fmt: skip
    if args.skip_generation:
        return
    if not args.comfyui:
        parser.error("set COMFYUI_PATH or pass --comfyui (or --skip-generation)")
    cache = os.environ.get("F2D_TEST_MODEL_CACHE")  # reuse the tests' tiny models when there are some
    models = build_tiny_models(Path(cache) if cache else work / "models", args.comfyui).models_dir
    formula_weights.write_official_checkpoints(models / "face2diffusion")
    synthetic_insightface.write_synthetic_pack(models / "insightface", "buffalo_l")
    with ComfyServer(args.comfyui, work / "server", models, custom_nodes={"comfyui-face2diffusion": REPO}) as server:
        server.wait_ready()
        face = server.upload_image(Image.fromarray(synthetic_insightface.face_photo(load_rgb(ASTRONAUT))), "f.png")
        sampling, tiny = Sampling(SIZE, args.steps), Models(Path(CHECKPOINT).name)
        server.run(generation_graph("official", face, PROMPT, 0, 1, tiny, Sampling(64, 1), "warmup"), timeout=3600)
        graph = generation_graph("official", face, PROMPT, 1, BATCH, tiny, sampling, "bench")
        start = time.perf_counter()
        try:
            history = server.run(graph, timeout=args.generation_timeout)
        except TimeoutError:  # a measured lower bound on generation: the ratio is an upper bound
            waited = time.perf_counter() - start
            server.interrupt()
            log.info("generating 16 images at 512², %d steps (tiny SD1.5, CPU): not finished after %.0f s",
                     args.steps, waited)  # fmt: skip
            log.info("scoring / generation: < %.2f%% (straightforward scoring: < %.2f%%)", 100 * ours / waited,
                     100 * straight / waited)  # fmt: skip
            return
        stamps = {event: data["timestamp"] for event, data in history["status"]["messages"]}
        generation = (stamps["execution_success"] - stamps["execution_start"]) / 1000.0
    log.info("generating 16 images at 512², %d steps (tiny SD1.5, CPU): %.1f s", args.steps, generation)
    log.info("scoring / generation: %.2f%% (straightforward scoring: %.2f%%)", 100 * ours / generation,
             100 * straight / generation)  # fmt: skip


if __name__ == "__main__":
    main()
