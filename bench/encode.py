"""Benchmark the full encode (align + MSID + mapper) against the straightforward official-style path.

    python bench/encode.py                      # CPU, fp32
    python bench/encode.py --device cuda --dtype fp16 --batch 256

Official-style path, per face: skimage SimilarityTransform fit, cv2.warpAffine to 112, uint8 ->
float normalisation in numpy, then MSID (every block on every token, explicit attention, as the
official timm-based code) and mapper in fp32 eager at batch 1 (as the official inference script
runs). This pack's path: one batched similarity fit and kornia warp on the model's device, one
batched MSID (fused attention; the last tapped block for the CLS token only) + mapper call.
Both run on the same real photos and landmarks in one process; outputs are checked to agree.
Detection is timed on its own (insightface pack given with --insightface-root/--pack, else a
synthetic pack whose tiny detector is NOT representative).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage.transform import SimilarityTransform

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.checkpoints import F2DModels
from f2d_core.faces.alignment import ARCFACE_TEMPLATE_112
from f2d_core.identity.face_encoder import FaceEncoder
from f2d_core.identity.mapper import F2DMapper
from f2d_core.identity.msid_encoder import MSID_TAP_BLOCKS, MSIDEncoder
from tests.support.formula_weights import expected
from tests.support.photos import load_rgb

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def paired(
    fast: Callable[[], object], official: Callable[[], object], device: torch.device, rounds: int
) -> tuple[float, float]:
    """Median seconds of each function, run alternately (so load on the machine hits both alike)."""
    fast(), official()  # warm-up
    samples: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        order = (0, 1) if r % 2 == 0 else (1, 0)
        for which in order:
            fn = fast if which == 0 else official
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            samples[which].append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


def official_style_msid(msid: MSIDEncoder, x: torch.Tensor) -> torch.Tensor:
    """The official forward: every block on every token (explicit attention), then each tap's BN + LN."""
    x = msid.norm_pre(msid._pos_embed(msid.patch_embed(x)))
    taps = []
    for i, block in enumerate(msid.blocks):
        x = block(x)
        if i in MSID_TAP_BLOCKS:
            taps.append(msid.norms[f"layer_{i}"](x[:, 0]))
    return torch.cat(taps, dim=-1)


def official_style_encode(models: F2DModels, images: list[np.ndarray], landmarks: np.ndarray) -> torch.Tensor:
    """Per face: skimage fit, cv2 warp, numpy normalisation, fp32 eager batch-1 MSID + mapper on CPU."""
    out = []
    with torch.no_grad():
        for image, lm in zip(images, landmarks, strict=True):
            tform = SimilarityTransform.from_estimate(lm, ARCFACE_TEMPLATE_112.numpy())
            crop = cv2.warpAffine(image, tform.params[:2], (112, 112), borderValue=0.0)
            x = (crop.astype(np.float32) / 255.0 - 0.5) / 0.5
            x = torch.from_numpy(x.transpose(2, 0, 1))[None]
            out.append(models.mapper(official_style_msid(models.msid, x)))
    return torch.cat(out)


def fast_encode(encoder: FaceEncoder, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
    """This pack's path: batched fit + warp where the photos are, one MSID + mapper call."""
    crops = encoder.crops(images, landmarks)
    return encoder.s_star(encoder.identity(crops))


def make_batch(batch: int) -> tuple[list[np.ndarray], np.ndarray]:
    """`batch` faces: the fixture's real photos and landmarks, cycled; all photos cropped to 512x512."""
    data = expected()
    photos, lms = [], []
    for i in range(batch):
        k = i % 7  # the 7 detected faces of real photos (index 7 is an already aligned crop)
        image = load_rgb(str(data["sources"][k]))
        lm = data["lm5"][k].copy()
        x0 = int(np.clip(lm[:, 0].mean() - 256, 0, image.shape[1] - 512))
        y0 = int(np.clip(lm[:, 1].mean() - 256, 0, image.shape[0] - 512))
        photos.append(np.ascontiguousarray(image[y0 : y0 + 512, x0 : x0 + 512]))
        lms.append(lm - np.array([x0, y0], np.float32))
    return photos, np.stack(lms)


def bench_detection(args: argparse.Namespace, photos: list[np.ndarray], device: torch.device) -> dict:
    """Seconds per image of face detection (torch SCRFD on the encode device), separately from the encode."""
    from f2d_core.faces.face_detection import FaceDetector

    root, pack, synthetic = args.insightface_root, args.pack, False
    if root is None:
        from tests.support.synthetic_insightface import write_synthetic_pack

        root, pack, synthetic = Path(tempfile.mkdtemp()), "synthetic", True
        write_synthetic_pack(root, pack)
    detector = FaceDetector(root, pack, device=device)
    detector.detect(photos[0])
    samples = []
    for _ in range(args.repeats * 4):
        start = time.perf_counter()
        detector.detect(photos[0])
        samples.append(time.perf_counter() - start)
    seconds = statistics.median(samples)
    return {"pack": pack, "synthetic": synthetic, "device": str(device), "seconds_per_image": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=DTYPES, default="fp32")
    parser.add_argument("--batch", type=int, default=64, help="faces in the batched measurement")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--insightface-root", type=Path, default=None)
    parser.add_argument("--pack", default="buffalo_l")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)

    models = F2DModels(MSIDEncoder().eval(), F2DMapper().eval(), {"msid": "random", "mapper": "random"})
    baseline_models = F2DModels(MSIDEncoder().eval(), F2DMapper().eval(), {})
    baseline_models.msid.load_state_dict(models.msid.state_dict())
    baseline_models.mapper.load_state_dict(models.mapper.state_dict())
    for block in baseline_models.msid.blocks:
        block.attn.fused_attn = False  # the official code's timm computed attention explicitly
    encoder = FaceEncoder(models, device, DTYPES[args.dtype])

    photos, landmarks = make_batch(args.batch)
    images = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float().div(255).to(device, DTYPES[args.dtype])
    lm = torch.from_numpy(landmarks).to(device)

    agree = (
        (
            fast_encode(encoder, images[:8], lm[:8]).float().cpu()
            - official_style_encode(baseline_models, photos[:8], landmarks[:8])
        )
        .abs()
        .max()
        .item()
    )

    results = {"device": str(device), "dtype": args.dtype, "batch": args.batch, "threads": torch.get_num_threads()}
    results["max_abs_diff_vs_official_style"] = agree
    one, one_official = paired(
        lambda: fast_encode(encoder, images[:1], lm[:1]),
        lambda: official_style_encode(baseline_models, photos[:1], landmarks[:1]),
        device,
        args.repeats * 4,
    )
    many, many_official = paired(
        lambda: fast_encode(encoder, images, lm),
        lambda: official_style_encode(baseline_models, photos, landmarks),
        device,
        args.repeats,
    )
    results.update(
        batch1_ms=one * 1e3,
        batch1_ms_official_style=one_official * 1e3,
        batch1_speedup=one_official / one,
        faces_per_s=args.batch / many,
        faces_per_s_official_style=args.batch / many_official,
        batched_speedup=many_official / many,
    )
    results["detection"] = bench_detection(args, photos, device)

    width = max(len(k) for k in results)
    for key, value in results.items():
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"{key:<{width}}  {shown}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
