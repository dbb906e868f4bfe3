"""The CGDR face mask M of a training crop: a given photo-space mask carried into the crop, or a landmark ellipse.

Every path ends the same way: a float mask at crop resolution, then `downsample_mask` (an area
majority vote) to the latent grid, so M is binary and at latent size whatever its source.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

from ...errors import DatasetError
from ...faces.face_parsing import downsample_mask
from .ffhq_crop import warp_to_crop
from .files import same_aspect

# The fallback ellipse, in units of the face's own landmark distances (anthropometric averages:
# eyes to mouth ~1.1 x the eye distance, hairline ~0.9 of it above the eyes, chin ~0.7 below the mouth).
ELLIPSE_CENTRE = 0.4  # centre: eye midpoint + 0.4 x (mouth midpoint - eye midpoint)
ELLIPSE_ACROSS = 1.1  # semi-axis along the eye line: 1.1 x the eye distance (cheek to cheek)
ELLIPSE_ALONG = 1.3  # semi-axis across it: 1.3 x the eye-to-mouth distance (hairline to chin)


def ellipse_mask(lm_crop: torch.Tensor, size: int) -> torch.Tensor:
    """Masks [B, 1, size, size] in {0, 1}: an ellipse over each face from its landmarks [B, 5, 2] in crop pixels.

    The fallback when no parser or mask is given: it covers forehead to chin and cheek to cheek, so
    hair, ears, neck and background stay outside (approximately: a parser's mask is better).
    """
    lm = lm_crop.to(torch.float32)
    eye_avg = (lm[:, 0] + lm[:, 1]) / 2
    eye_to_eye = lm[:, 1] - lm[:, 0]
    eye_to_mouth = (lm[:, 3] + lm[:, 4]) / 2 - eye_avg
    across = eye_to_eye - torch.stack([-eye_to_mouth[:, 1], eye_to_mouth[:, 0]], dim=-1)  # FFHQ's x axis
    across = across / across.norm(dim=-1, keepdim=True)
    along = torch.stack([-across[:, 1], across[:, 0]], dim=-1)
    centre = eye_avg + ELLIPSE_CENTRE * eye_to_mouth
    a = ELLIPSE_ACROSS * eye_to_eye.norm(dim=-1)
    b = ELLIPSE_ALONG * eye_to_mouth.norm(dim=-1)
    pixels = torch.arange(size, dtype=torch.float32)
    ys, xs = torch.meshgrid(pixels, pixels, indexing="ij")
    offset = torch.stack([xs, ys], dim=-1)[None] - centre[:, None, None]  # [B, size, size, 2]
    u = (offset * across[:, None, None]).sum(-1) / a[:, None, None]
    v = (offset * along[:, None, None]).sum(-1) / b[:, None, None]
    return (u.square() + v.square() <= 1).float()[:, None]


def fit_mask(mask: torch.Tensor, photo_hw: tuple[int, int]) -> torch.Tensor | None:
    """A [H, W] mask at the photo's size: as is, resized when only the scale differs, None when the shape differs."""
    mask_hw = (int(mask.shape[-2]), int(mask.shape[-1]))
    if mask_hw == photo_hw:
        return mask.float()
    if not same_aspect(mask_hw, photo_hw):
        return None
    return F.interpolate(mask.float()[None, None], size=photo_hw, mode="bilinear", align_corners=False)[0, 0]


def photo_mask_to_latent(mask: torch.Tensor, matrix: torch.Tensor, crop_size: int, latent_size: int) -> torch.Tensor:
    """A photo-space mask [H, W] (0..1, white = face) -> [1, 1, h, w] in {0, 1} on the crop's latent grid."""
    in_crop = warp_to_crop(mask.float().clamp(0, 1)[None, None], matrix, crop_size)
    return downsample_mask(in_crop, latent_size)


def check_mask_list(masks: Sequence[torch.Tensor], image_count: int, folder: Path) -> list[torch.Tensor]:
    """The given masks as [H, W] float tensors, or a DatasetError when their number or layout is wrong."""
    masks = list(masks)
    if len(masks) != image_count:
        raise DatasetError(
            f"{len(masks)} masks were given for the {image_count} image files of {folder} (in sorted order): "
            "give exactly one mask per image file, or use a mask folder instead."
        )
    checked = []
    for i, mask in enumerate(masks):
        mask = torch.as_tensor(mask)
        while mask.ndim > 2 and mask.shape[0] == 1:
            mask = mask[0]
        if mask.ndim != 2:
            raise DatasetError(
                f"mask {i + 1} of {len(masks)} for {folder} has shape {tuple(mask.shape)}; expected [H, W] "
                "(one 2-D mask per image, white = face)."
            )
        checked.append(mask.detach().float().cpu())
    return checked
