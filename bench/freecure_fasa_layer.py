"""Benchmark one FASA layer call of the fast route (stage 2, "cached" mode) at SD1.5's shapes: the plain
attention of every row and then FASA over the conditional rows (as before), against the plain attention of
the unconditional rows only (the conditional rows' plain output is overwritten by FASA anyway). Pure PyTorch,
no ComfyUI: the attention is scaled_dot_product_attention with ComfyUI's attention_pytorch contract.

    python bench/freecure_fasa_layer.py                      # 512x512 image: the 64x64 and 32x32 layers
    python bench/freecure_fasa_layer.py --size 256 --rounds 5 --device cuda

Both variants run interleaved in one process; the outputs are compared (max abs difference).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.freecure.foundation_cache import FoundationCache
from f2d_core.freecure.masks import LayerMasks
from f2d_core.freecure.patch import FasaPatch

HEADS = 8
# SD1.5's FASA layers (output blocks 6-11): (latent side / layer side, channels); 32x32 and 64x64 at 512x512
LAYERS = {"output 6-8": (2, 640), "output 9-11": (1, 320)}


def sdpa(q, k, v, heads, mask=None, **_):
    """[B, N, H*D] in and out, a 3-D float mask broadcast over heads (ComfyUI's attention_pytorch contract)."""
    b, n, width = q.shape
    q, k, v = (t.view(b, -1, heads, width // heads).transpose(1, 2) for t in (q, k, v))
    if mask is not None and mask.ndim == 3:
        mask = mask.unsqueeze(1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, n, width)


def plain(q, k, v, eo):
    return sdpa(q, k, v, eo["n_heads"])


def layer_call(side: int, width: int, pairs: int, mask_fraction: float, device: str, dtype: torch.dtype):
    """([(patch, cache) with the plain attention of every row, the same of the kept rows only], (q, k, v, eo))."""
    g = torch.Generator().manual_seed(0)
    n = side * side
    q, k, v = (torch.randn(2 * pairs, n, width, generator=g).to(device, dtype) for _ in range(3))  # [uncond, cond]
    masks = torch.zeros(pairs, side, side, dtype=torch.bool)
    masks[:, : max(1, int(side * mask_fraction))] = True
    eo = {
        "n_heads": HEADS, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0]), "block": ("output", 9),
        "block_index": 0, "activations_shape": [2 * pairs, width, side, side], "original_shape": [2 * pairs],
    }  # fmt: skip
    patches = []
    for independent in (None, lambda _eo: True):
        cache = FoundationCache()
        FasaPatch("record", pairs, plain, sdpa, cache=cache)(q, k, v, eo)  # FD rows: same tensors, any values do
        cache.gather(LayerMasks(masks))
        patch = FasaPatch("cached", pairs, plain, sdpa, omega=0.5, cache=cache, rows_independent=independent)
        patches.append((patch, cache))
    return patches, (q, k, v, eo)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--pairs", type=int, default=1, help="images in the batch")
    parser.add_argument("--mask-fraction", type=float, default=0.3)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--fp16", action="store_true")
    args = parser.parse_args()
    dtype = torch.float16 if args.fp16 else torch.float32
    result = {"size": args.size, "pairs": args.pairs, "device": args.device, "dtype": str(dtype), "layers": {}}
    for name, (divisor, width) in LAYERS.items():
        side = args.size // 8 // divisor
        patches, (q, k, v, eo) = layer_call(side, width, args.pairs, args.mask_fraction, args.device, dtype)
        labels = ("plain of every row", "plain of the kept rows")
        times: dict[str, list[float]] = {label: [] for label in labels}
        outs = {}
        for _ in range(args.rounds + 1):  # the first round warms up
            for label, (patch, cache) in zip(labels, patches, strict=True):
                cache.rewind()
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                start = time.perf_counter()
                outs[label] = patch(q, k, v, eo)
                if args.device.startswith("cuda"):
                    torch.cuda.synchronize()
                times[label].append(time.perf_counter() - start)
        medians = {label: statistics.median(t[1:]) for label, t in times.items()}
        result["layers"][name] = {
            "tokens": side * side,
            "channels": width,
            "median_ms": {label: 1000 * m for label, m in medians.items()},
            "ratio_kept_to_every": medians[labels[1]] / medians[labels[0]],
            "max_abs_difference": float((outs[labels[0]] - outs[labels[1]]).abs().max()),
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
