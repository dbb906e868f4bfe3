"""SDXL's size conditioning per training crop (docs/sdxl.md section 3.3).

SDXL's UNet takes, besides the pooled text vector, six sizes embedded by a 256-d sinusoidal
`Timestep` each (ComfyUI comfy/model_base.py `SDXL.encode_adm`; the SDXL paper, section 2.2):
(original height, original width, crop top, crop left, target height, target width), in pixels.
The pack's training crop is the whole FFHQ quad, so the crop offset is (0, 0); the original size is
the quad's side in the photo's own pixels (`source_side`), so a small face upscaled to the crop size
is labelled low resolution and the UNet, not S*, explains its blur.
"""

from __future__ import annotations

import torch

from ..errors import F2DError

SIZE_CONDITIONINGS = ("source", "target")
MIN_SOURCE_SIDE, MAX_SOURCE_SIDE = 256, 4096  # pixels: the range SDXL's training data covered (docs/sdxl.md 3.3)


def size_ids(source_side: torch.Tensor, crop_size: int, mode: str = "source") -> torch.Tensor:
    """Size conditioning [B, 6] float32 in encode_adm's order (orig h, orig w, crop top, crop left, target h, w).

    source_side: [B] the FFHQ quad's side in photo pixels (float; a set without it passes the crop size).
    crop_size: the training crop's side in pixels (the target size).
    mode: "source" (original size = round(source_side) clamped to [256, 4096]) or "target" (= crop_size).
    Raises F2DError for another mode.
    """
    if mode not in SIZE_CONDITIONINGS:
        raise F2DError(f"size_conditioning must be one of {SIZE_CONDITIONINGS}, not {mode!r}")
    if mode == "target":
        orig = torch.full((source_side.shape[0],), float(crop_size))
    else:
        orig = source_side.float().round().clamp(MIN_SOURCE_SIDE, MAX_SOURCE_SIDE)
    zero, target = torch.zeros_like(orig), torch.full_like(orig, float(crop_size))
    return torch.stack([orig, orig, zero, zero, target, target], dim=1)
