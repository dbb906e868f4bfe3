"""Attribute masks from the foundation image's face-parser labels, and their tokens at each FASA layer.

Faithful to FreeCure's pipeline (specification Sec. 1.4 and 4.4): the union of the selected classes at
image size, a bilinear resize to a quarter of the image (128x128 for 512x512) keeping only cells fully
inside (value >= 1 - 1e-6, the released code's "== 255", which erodes the border slightly), then a
nearest resize to each layer's h x w (taken from the layer, never from sqrt(N): images need not be square).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FULLY_INSIDE = 1.0 - 1e-6


def attribute_mask(labels: torch.Tensor, class_ids: list[int]) -> torch.Tensor:
    """labels [B, H, W] int (face-parser classes) -> bool [B, H, W], True where the class is in class_ids."""
    if not class_ids:
        return torch.zeros(labels.shape, dtype=torch.bool, device=labels.device)
    return torch.isin(labels, torch.tensor(class_ids, device=labels.device))


def quarter_resolution(mask: torch.Tensor) -> torch.Tensor:
    """bool/float [B, H, W] in {0,1} -> bool [B, max(1, H//4), max(1, W//4)]: bilinear, fully-inside cells."""
    size = (max(1, mask.shape[-2] // 4), max(1, mask.shape[-1] // 4))
    small = F.interpolate(mask[:, None].float(), size=size, mode="bilinear", align_corners=False)
    return small[:, 0] >= FULLY_INSIDE


class LayerMasks:
    """Per-pair masks (image/4 resolution) and their token indices at any layer resolution, cached.

    masks: bool [k, h0, w0], one per PD/FD pair.
    """

    def __init__(self, masks: torch.Tensor) -> None:
        if masks.ndim != 3:
            raise ValueError(f"masks must be [pairs, h, w], got {list(masks.shape)}")
        self.masks = masks.bool().cpu()
        self._tokens: dict[tuple[int, int, int], torch.Tensor] = {}

    @property
    def pairs(self) -> int:
        return int(self.masks.shape[0])

    def at(self, h: int, w: int) -> torch.Tensor:
        """bool [k, h, w]: the masks nearest-resized to a layer's h x w."""
        return F.interpolate(self.masks[:, None].float(), size=(h, w), mode="nearest")[:, 0] > 0.5

    def tokens(self, pair: int, h: int, w: int) -> torch.Tensor:
        """int64 [m]: row-major token indices of pair `pair`'s mask at h x w (cached per (pair, h, w))."""
        key = (pair, h, w)
        if key not in self._tokens:
            for j, grid in enumerate(self.at(h, w)):
                self._tokens[(j, h, w)] = grid.flatten().nonzero()[:, 0]
        return self._tokens[key]

    def all_tokens(self, h: int, w: int) -> list[torch.Tensor]:
        """[tokens(j, h, w) for every pair]."""
        return [self.tokens(j, h, w) for j in range(self.pairs)]
