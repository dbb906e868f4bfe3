"""Encode speed on a GPU: batch-1 latency and batched faces/s, per precision, against the straightforward path.

    python bench/gpu_encode.py --device cuda --batch 256 --json gpu_encode.json

For each of fp32, fp16 and bf16 (MSID and mapper in that dtype; the alignment fit on the CPU in
float64 and the warp in float32, as the pack runs them), this pack's encode (`FaceEncoder.crops` +
`identity` + `s_star`) is timed at batch 1 and at `--batch`, alternating with the straightforward
path on the same device: per face, skimage fit + cv2 warp on the CPU, fp32 MSID with every block on
every token and explicit attention (the official timm code), mapper, batch 1. Official-size MSID
(ViT 112 px / patch 8, width 384, depth 12) and mapper on random weights: the official files cannot
be downloaded here, and speed does not depend on weight values. `max_abs_diff_vs_straightforward` is
S*'s largest difference from the fp32 straightforward path on 8 faces. Detection is not included
(`bench/encode.py` times it separately).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.encode import DTYPES, make_batch, official_style_msid, paired
from f2d_core.checkpoints import F2DModels
from f2d_core.faces.alignment import ARCFACE_TEMPLATE_112
from f2d_core.identity.face_encoder import FaceEncoder
from f2d_core.identity.mapper import F2DMapper
from f2d_core.identity.msid_encoder import MSIDEncoder


def straightforward_encode(models: F2DModels, photos: list[np.ndarray], landmarks: np.ndarray, device) -> torch.Tensor:
    """Per face: skimage fit and cv2 warp on the CPU, then fp32 explicit-attention MSID + mapper at batch 1."""
    import cv2
    from skimage.transform import SimilarityTransform

    out = []
    with torch.inference_mode():
        for image, lm in zip(photos, landmarks, strict=True):
            tform = SimilarityTransform.from_estimate(lm, ARCFACE_TEMPLATE_112.numpy())
            crop = cv2.warpAffine(image, tform.params[:2], (112, 112), borderValue=0.0)
            x = torch.from_numpy(((crop.astype(np.float32) / 255.0 - 0.5) / 0.5).transpose(2, 0, 1))[None]
            out.append(models.mapper(official_style_msid(models.msid, x.to(device))))
    return torch.cat(out).float().cpu()


def pack_encode(encoder: FaceEncoder, images: torch.Tensor, landmarks: np.ndarray) -> torch.Tensor:
    """This pack's path: batched CPU fit + float32 warp where the photos are, one MSID + mapper call."""
    return encoder.s_star(encoder.identity(encoder.crops(images, landmarks)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=256, help="faces in the batched measurement")
    parser.add_argument("--precisions", default="fp32,fp16,bf16", help="comma-separated, of fp32, fp16, bf16")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on both paths

    msid, mapper = MSIDEncoder().eval(), F2DMapper().eval()
    baseline = F2DModels(MSIDEncoder().eval(), F2DMapper().eval(), {})
    baseline.msid.load_state_dict(msid.state_dict())
    baseline.mapper.load_state_dict(mapper.state_dict())
    for block in baseline.msid.blocks:
        block.attn.fused_attn = False  # the official code's timm computed attention explicitly
    baseline.msid.to(device)
    baseline.mapper.to(device)

    photos, landmarks = make_batch(args.batch)
    images = torch.from_numpy(np.stack(photos)).permute(0, 3, 1, 2).float().div(255).to(device)
    reference = straightforward_encode(baseline, photos[:8], landmarks[:8], device)
    results: dict[str, object] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
        "batch": args.batch,
        "torch": torch.__version__,
    }
    for name in args.precisions.split(","):
        models = F2DModels(MSIDEncoder().eval(), F2DMapper().eval(), {})
        models.msid.load_state_dict(msid.state_dict())
        models.mapper.load_state_dict(mapper.state_dict())
        encoder = FaceEncoder(models, device, DTYPES[name])
        diff = (pack_encode(encoder, images[:8], landmarks[:8]) - reference).abs().max().item()
        one, one_straight = paired(
            lambda e=encoder: pack_encode(e, images[:1], landmarks[:1]),
            lambda: straightforward_encode(baseline, photos[:1], landmarks[:1], device),
            device,
            args.repeats * 4,
        )
        many, many_straight = paired(
            lambda e=encoder: pack_encode(e, images, landmarks),
            lambda: straightforward_encode(baseline, photos, landmarks, device),
            device,
            args.repeats,
        )
        results[name] = {
            "batch1_ms": one * 1e3,
            "batch1_ms_straightforward": one_straight * 1e3,
            "batch1_speedup": one_straight / one,
            "faces_per_s": args.batch / many,
            "faces_per_s_straightforward": args.batch / many_straight,
            "batched_speedup": many_straight / many,
            "max_abs_diff_vs_straightforward": diff,
        }
        del encoder, models
        if device.type == "cuda":
            torch.cuda.empty_cache()

    for key, value in results.items():
        if isinstance(value, dict):
            print(f"{key}: " + ", ".join(f"{k}={v:.4g}" for k, v in value.items()))
        else:
            print(f"{key}: {value}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
