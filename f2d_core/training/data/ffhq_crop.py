"""The FFHQ-style training crop: an oriented square from the eyes and mouth, warped to size x size.

The recipe of the FFHQ dataset (Karras et al. 2019, `recreate_aligned_images`) on the 5 insightface
keypoints (eye, eye, nose, mouth corner, mouth corner; image-left first):
    eye_to_eye = eye_right - eye_left, eye_to_mouth = mouth_avg - eye_avg
    x = eye_to_eye - rot90(eye_to_mouth), normalised, times max(2 |eye_to_eye|, 1.8 |eye_to_mouth|)
    y = rot90(x), centre = eye_avg + 0.1 eye_to_mouth
    quad = [c - x - y, c - x + y, c + x + y, c + x - y]  (top-left, bottom-left, bottom-right, top-right)
rot90(v) = (-v_y, v_x): a quarter turn that takes "right" to "down" in image coordinates (y down).

Coordinates: points are in pixels with pixel centres at integers (as cv2 and `f2d_core.faces.alignment`);
the quad's corners go to the crop's outer corners, (-0.5, -0.5) ... (size - 0.5, size - 0.5).
Unlike FFHQ the border is black (no blurred reflection padding), and a face much larger than the
crop is first shrunk by an integer box filter (FFHQ's `shrink` step) so the bilinear warp does not alias.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from kornia.geometry.transform import warp_affine

from ...faces.alignment import similarity_transform

DEFAULT_SIZE = 512
EYE_SCALE = 2.0  # half side >= 2 x eye distance
MOUTH_SCALE = 1.8  # half side >= 1.8 x eye-to-mouth distance
CENTRE_SHIFT = 0.1  # centre moves this fraction of eye-to-mouth below the eyes
MIRROR_ORDER = (1, 0, 2, 4, 3)  # keypoint order after a horizontal flip: swap eyes and mouth corners


class FFHQCrop(NamedTuple):
    """Crops [B, C, size, size] and the 2x3 matrices [B, 2, 3] taking photo pixels to crop pixels."""

    crops: torch.Tensor
    matrix: torch.Tensor


def _rot90(v: torch.Tensor) -> torch.Tensor:
    """(x, y) -> (-y, x) on the last dimension: FFHQ's `flipud(v) * [-1, 1]`."""
    return torch.stack([-v[..., 1], v[..., 0]], dim=-1)


def ffhq_quad(lm5: torch.Tensor) -> torch.Tensor:
    """The FFHQ quad [B, 4, 2] (top-left, bottom-left, bottom-right, top-right) of landmarks [B, 5, 2]."""
    lm = lm5.to(torch.float64)
    eye_left, eye_right = lm[:, 0], lm[:, 1]
    eye_avg = (eye_left + eye_right) / 2
    eye_to_eye = eye_right - eye_left
    eye_to_mouth = (lm[:, 3] + lm[:, 4]) / 2 - eye_avg
    x = eye_to_eye - _rot90(eye_to_mouth)
    half = torch.maximum(EYE_SCALE * eye_to_eye.norm(dim=-1), MOUTH_SCALE * eye_to_mouth.norm(dim=-1))
    x = x / x.norm(dim=-1, keepdim=True) * half[:, None]
    y = _rot90(x)
    c = eye_avg + CENTRE_SHIFT * eye_to_mouth
    return torch.stack([c - x - y, c - x + y, c + x + y, c + x - y], dim=1)


def source_side(lm5: torch.Tensor) -> torch.Tensor:
    """The FFHQ quad's side [B] (float64) in photo pixels, for landmarks [B, 5, 2]: the photo's own resolution
    of what a crop shows (a crop of any size S shrinks it by S / side; a mirrored photo gives the same side).

    SDXL's "original size" conditioning of a training crop (docs/sdxl.md section 3.3).
    """
    quad = ffhq_quad(torch.as_tensor(lm5))
    return (quad[:, 3] - quad[:, 0]).norm(dim=-1)


def crop_corners(size: int) -> torch.Tensor:
    """The crop's outer corners [4, 2] in quad order, in pixel-centre coordinates."""
    lo, hi = -0.5, size - 0.5
    return torch.tensor([[lo, lo], [lo, hi], [hi, hi], [hi, lo]], dtype=torch.float64)


def ffhq_matrix(lm5: torch.Tensor, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """2x3 matrices [B, 2, 3] (float32) taking photo pixels to the size x size FFHQ crop's pixels."""
    quad = ffhq_quad(torch.as_tensor(lm5))
    return similarity_transform(quad, crop_corners(size)).to(torch.float32)


def transform_points(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Points [B, N, 2] through 2x3 matrices [B, 2, 3] (e.g. photo landmarks into crop pixels)."""
    matrix = matrix.to(points.dtype)
    return points @ matrix[:, :, :2].transpose(1, 2) + matrix[:, None, :, 2]


def flip_matrix(matrix: torch.Tensor, size: int) -> torch.Tensor:
    """The matrices of the horizontally flipped crops: x -> size - 1 - x after `matrix`."""
    flipped = matrix.clone()
    flipped[:, 0] = -matrix[:, 0]
    flipped[:, 0, 2] += size - 1
    return flipped


def mirror_landmarks(lm5: torch.Tensor, width: int) -> torch.Tensor:
    """Landmarks [B, 5, 2] of the horizontally flipped photo (width pixels), still image-left first."""
    mirrored = lm5.clone()
    mirrored[..., 0] = (width - 1) - lm5[..., 0]
    return mirrored[:, list(MIRROR_ORDER)]


def shrink_factor(matrix: torch.Tensor) -> torch.Tensor:
    """Per-sample integer box-filter factor [B] (>= 1): photo pixels per crop pixel, rounded down."""
    crop_per_photo = torch.linalg.det(matrix[:, :, :2].to(torch.float64)).abs().sqrt()
    return torch.floor(1.0 / crop_per_photo + 1e-4).clamp(min=1).to(torch.int64)  # 2.99999 is 3


def _shrunk(images: torch.Tensor, matrix: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images box-filtered by k (partial edge windows averaged over what they hold) and matching matrices."""
    if k == 1:
        return images, matrix
    small = F.avg_pool2d(images, kernel_size=k, stride=k, ceil_mode=True)
    # A pixel centre x of the photo lies at (x + 0.5) / k - 0.5 in the shrunk image.
    scaled = matrix.clone()
    scaled[:, :, :2] *= k
    scaled[:, :, 2] += matrix[:, :, :2].sum(dim=2) * (k - 1) / 2
    return small, scaled


def _warp(images: torch.Tensor, matrix: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear warp with a black border, pixel centres at integer coordinates (as cv2.warpAffine)."""
    return warp_affine(images, matrix, dsize=(size, size), mode="bilinear", padding_mode="zeros", align_corners=True)


def warp_to_crop(images: torch.Tensor, matrix: torch.Tensor, size: int = DEFAULT_SIZE) -> torch.Tensor:
    """Images or masks [B, C, H, W] (float) warped by photo->crop matrices [B, 2, 3]: bilinear, black border."""
    factors = shrink_factor(matrix)
    groups = factors.unique().tolist()
    if len(groups) == 1:  # the usual case: one filter for the whole batch
        return _warp(*_shrunk(images, matrix.to(images.dtype), int(groups[0])), size)
    out = images.new_zeros(images.shape[0], images.shape[1], size, size)
    for k in groups:
        pick = (factors == k).nonzero().flatten()
        out[pick] = _warp(*_shrunk(images[pick], matrix[pick].to(images.dtype), int(k)), size)
    return out


def ffhq_crop(images: torch.Tensor, lm5: torch.Tensor, size: int = DEFAULT_SIZE) -> FFHQCrop:
    """FFHQ crops [B, C, size, size] of photos [B, C, H, W] (float) from their landmarks [B, 5, 2], and the matrices."""
    matrix = ffhq_matrix(lm5, size).to(images.device)
    return FFHQCrop(warp_to_crop(images, matrix, size), matrix)
