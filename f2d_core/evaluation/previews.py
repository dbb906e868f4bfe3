"""Previews with each image's score drawn on it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont


def draw_labels(images: torch.Tensor, labels: Sequence[str]) -> torch.Tensor:
    """IMAGE [B, H, W, C] in [0, 1] -> a copy [B, H, W, 3] with labels[i] on a dark strip at the top of image i."""
    out = []
    font = ImageFont.load_default(size=max(10, images.shape[1] // 20))
    for image, label in zip(images, labels, strict=True):
        pil = Image.fromarray((image[..., :3].clamp(0, 1) * 255).round().byte().cpu().numpy())
        draw = ImageDraw.Draw(pil)
        _, _, right, bottom = draw.textbbox((4, 2), label, font=font)
        draw.rectangle((0, 0, right + 4, bottom + 3), fill=(0, 0, 0))
        draw.text((4, 2), label, fill=(255, 255, 255), font=font)
        out.append(torch.from_numpy(np.asarray(pil).astype(np.float32) / 255.0))
    return torch.stack(out)
