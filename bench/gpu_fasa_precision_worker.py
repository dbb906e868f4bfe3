"""Library script for bench/gpu_robustness.py (run through tests/support/comfy_library_run.py): FASA in fp16 and bf16
on ComfyUI's device, through ComfyUI's own `attention_pytorch` (its SDPA backend priority included, comfy/ops.py),
against FreeCure's formulation computed literally in float64 on the same device (the specification's Sec. 1.6: PD keys
concatenated with all N FD keys, +omega inside the mask, -inf outside, softmax over 2N).

Shapes are SD1.5's FASA layers at 512x512 (output blocks 9-11: 64x64 tokens, 320 channels; 6-8: 32x32, 640; 8 heads),
two PD/FD pairs in a [uncond, cond] call, masks of different sizes (the padded gather). Both routes' code is run:
`fasa_attention` on the [PD, FD] batch and the fast route's record -> gather -> `fasa_attention_cached` on PD rows.
Per dtype the worst error over layers, routes, omega (0.5, 2, and the widget's ends, 10 and -10) and style fidelity
(1, 0.5) is reported relative to the largest reference value, next to the error of plain attention in that dtype
(the precision ComfyUI's sampling has anyway).
"""

from __future__ import annotations

import comfy.model_management
import comfy.ops
import torch
import torch.nn.functional as F
from comfy.ldm.modules.attention import attention_pytorch
from comfyui_face2diffusion.f2d_core.freecure.attention import fasa_attention, fasa_attention_cached
from comfyui_face2diffusion.f2d_core.freecure.foundation_cache import FoundationCache
from comfyui_face2diffusion.f2d_core.freecure.masks import LayerMasks

HEADS, PAIRS, CHUNKS = 8, 2, [1, 0]
LAYERS = {"64x64": (64, 64, 320), "32x32": (32, 32, 640)}
LOGIT_SCALE = 2.0  # q, k ~ N(0, 2^2): logits q.k/sqrt(d) with std 4, peaky attention like a trained UNet's


def _heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    return t.view(t.shape[0], heads, -1).transpose(0, 1)  # [N, H*D] -> [H, N, D]


def reference(q, k, v, masks_flat: torch.Tensor, omega: float, style_fidelity: float) -> torch.Tensor:
    """FreeCure's formulation (q, k, v [B, N, H*D] float64, masks_flat bool [pairs, N], same device)."""
    b, n, width = q.shape
    d = width // HEADS
    plain = F.scaled_dot_product_attention(
        *(t.view(b, n, HEADS, d).transpose(1, 2) for t in (q, k, v))
    ).transpose(1, 2).reshape(b, n, width)  # fmt: skip
    out = plain.clone()
    rows = 2 * PAIRS
    for c, kind in enumerate(CHUNKS):
        if kind == 1 and style_fidelity == 1.0:
            continue
        for j in range(PAIRS):
            pd, fd = c * rows + j, c * rows + PAIRS + j
            kh, vh = _heads(torch.cat([k[pd], k[fd]]), HEADS), _heads(torch.cat([v[pd], v[fd]]), HEADS)
            scores = _heads(q[pd], HEADS) @ kh.transpose(1, 2) * d**-0.5
            bias = torch.full((n,), float("-inf"), dtype=torch.float64, device=q.device)
            bias[masks_flat[j]] = omega
            scores[:, :, n:] += bias
            o = (scores.softmax(-1) @ vh).transpose(0, 1).reshape(n, width)
            out[pd] = o if kind == 0 else (1 - style_fidelity) * o + style_fidelity * plain[pd]
    return out


def _inputs(n: int, width: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    b = len(CHUNKS) * 2 * PAIRS
    q = torch.randn(b, n, width, generator=g) * LOGIT_SCALE
    k = torch.randn(b, n, width, generator=g) * LOGIT_SCALE
    return q, k, torch.randn(b, n, width, generator=g)


def _masks() -> LayerMasks:
    """Image/4 masks (128x128 for 512x512): pair 0 the top 30 % (hair-like), pair 1 a 10 % disc (glasses-like)."""
    m = torch.zeros(PAIRS, 128, 128, dtype=torch.bool)
    m[0, :38] = True
    yy, xx = torch.meshgrid(torch.arange(128), torch.arange(128), indexing="ij")
    m[1] = (yy - 60) ** 2 + (xx - 64) ** 2 < 23**2
    return LayerMasks(m)


def _cached_route(q, k, v, masks: LayerMasks, h: int, w: int, omega: float, style_fidelity: float) -> torch.Tensor:
    """The fast route's path: FD rows recorded, gathered to the masks, replayed to a PD-only batch; [B, N, W] back in
    the [PD, FD] layout (FD rows: plain, as the fast route's stage 1 returns them)."""
    rows = 2 * PAIRS
    kinds = {0} if style_fidelity == 1.0 else {0, 1}
    cache = FoundationCache()
    for c, kind in enumerate(CHUNKS):
        if kind in kinds:
            fd = slice(c * rows + PAIRS, (c + 1) * rows)
            cache.record(("layer", kind, 0, 1.0), k[fd], v[fd], (h, w))
    cache.gather(masks)
    pd = torch.cat([torch.arange(c * rows, c * rows + PAIRS) for c in range(len(CHUNKS))]).to(q.device)
    foundation = {}
    for c, kind in enumerate(CHUNKS):
        tokens = cache.next(("layer", kind, 0, 1.0)) if kind in kinds else None
        if tokens is not None:
            foundation[c] = tokens
    out = attention_pytorch(q, k, v, HEADS)
    out[pd] = fasa_attention_cached(q[pd], k[pd], v[pd], HEADS, CHUNKS, foundation, omega, style_fidelity,
                                    attention_pytorch)  # fmt: skip
    return out


def main(layers: dict[str, list[int]] | None = None, omegas: list[float] | None = None) -> dict:
    """Worst errors per dtype; `layers` {name: [h, w, width]} (default SD1.5's at 512x512) and `omegas` smaller for a
    CPU smoke run. The float64 reference runs on the device too (a [8, N, 2N] matrix: 2 GiB at 64x64)."""
    device = comfy.model_management.get_torch_device()
    masks = _masks()
    dtypes = {"float16": torch.float16, "bfloat16": torch.bfloat16}
    worst = {
        name: {"fasa_relative_error": 0.0, "plain_relative_error": 0.0, "finite": True, "untouched_rows_plain": True}
        for name in dtypes
    }
    for name, (h, w, width) in (layers or LAYERS).items():
        q, k, v = (t.to(device) for t in _inputs(h * w, width, seed=len(name)))
        q64, k64, v64 = q.double(), k.double(), v.double()
        flat, tokens = masks.at(h, w).flatten(1).to(device), masks.all_tokens(h, w)
        plain_ref = reference(q64, k64, v64, flat, float("-inf"), 1.0)  # exp(-inf) = 0: plain attention
        fd_rows = [c * 2 * PAIRS + PAIRS + j for c in range(len(CHUNKS)) for j in range(PAIRS)]
        half = {d: tuple(t.to(dtype) for t in (q, k, v)) for d, dtype in dtypes.items()}
        plain = {d: attention_pytorch(*half[d], HEADS) for d in dtypes}
        for d in dtypes:
            error = float((plain[d].double() - plain_ref).abs().max() / plain_ref.abs().max())
            worst[d]["plain_relative_error"] = max(worst[d]["plain_relative_error"], error)
        del plain_ref
        for omega in omegas or (0.5, 2.0, 10.0, -10.0):
            for sf in (1.0, 0.5):
                ref = reference(q64, k64, v64, flat, omega, sf)
                scale = ref.abs().max()
                for d in dtypes:
                    qd, kd, vd = half[d]
                    pairs = fasa_attention(qd, kd, vd, HEADS, CHUNKS, PAIRS, tokens, omega, sf, attention_pytorch)
                    cached = _cached_route(qd, kd, vd, masks, h, w, omega, sf)
                    for out in (pairs, cached):
                        worst[d]["finite"] &= bool(torch.isfinite(out).all())
                        error = float((out.double() - ref).abs().max() / scale)
                        worst[d]["fasa_relative_error"] = max(worst[d]["fasa_relative_error"], error)
                    worst[d]["untouched_rows_plain"] &= bool(torch.equal(pairs[fd_rows], plain[d][fd_rows]))
                del ref
    return {
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else "",
        "torch": torch.__version__,
        "sdpa_priority": [str(b) for b in getattr(comfy.ops, "SDPA_BACKEND_PRIORITY", [])],
        "layers": {n: list(v) for n, v in (layers or LAYERS).items()},
        **worst,
    }
