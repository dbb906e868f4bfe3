"""Deep3DFaceRecon's own face crop: 5 landmarks -> the 224x224 input of its coefficient regressor.

Re-derived from `align_img` of sicxu/Deep3DFaceRecon_pytorch (`util/preprocess.py`) as `test.py`
calls it: flip the landmarks' y axis (y' = H - 1 - y), fit scale and translation of five standard 3D
landmarks onto them (`POS`, a 2x4 affine least-squares fit), resize the whole photo by
s = 102 / scale with PIL's bicubic filter, crop 224x224 around the fitted centre (black outside the
photo), RGB values / 255. No ImageNet normalisation.

The resize is done here as two banded matrix products that reproduce Pillow's 8-bit bicubic
resampling exactly (its filter, support widening when shrinking, 22-bit fixed-point weights and the
uint8 rounding between the horizontal and the vertical pass), restricted to the part of the photo
the crop needs. kornia's resize/warp filters differ from PIL's (a = -0.75, no PIL antialiasing), so
it is not used here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import F2DError, NoFaceError
from ..images import ImageLike, as_labeled_images

log = logging.getLogger(__name__)

CROP_SIZE = 224
RESCALE_FACTOR = 102.0

# `BFM/similarity_Lm3D_all.mat` of Deep3DFaceRecon_pytorch reduced to five points as its
# `util/load_mats.py::load_lm3d` does (mean of 68-point 37/40 and 43/46, points 31, 49, 55; 1-based),
# in insightface `kps` order: eye, eye, nose tip, mouth corner, mouth corner (x, y, z; float32 values).
DEEP3D_LM3D_5 = torch.tensor(
    [
        [-0.3114865720272064, 0.29036077857017517, 0.13377952575683594],
        [0.30979886651039124, 0.289720356464386, 0.1317952573299408],
        [0.003253498813137412, -0.04617932438850403, 0.5524424314498901],
        [-0.25216928124427795, -0.3813391625881195, 0.22405731678009033],
        [0.24846619367599487, -0.38128235936164856, 0.22235769033432007],
    ],
    dtype=torch.float32,
)

_BICUBIC_A = -0.5  # Pillow's bicubic filter
_PRECISION_BITS = 22  # Pillow's 8-bit fixed-point weights: 32 - 8 - 2
_ONE = float(1 << _PRECISION_BITS)
_MIN_FIT_SCALE = 1.0  # pixels per unit of DEEP3D_LM3D_5


@dataclass(frozen=True)
class CropPlacement:
    """Where each 224 crop lies: the photo resized to `resized_size`, cropped at `origin` (all batched)."""

    scale: torch.Tensor  # [B] float64: s, resized pixels per photo pixel
    translation: torch.Tensor  # [B, 2] float64: POS translation t, in the y-up frame (y' = H - 1 - y)
    resized_size: torch.Tensor  # [B, 2] int64: (width, height) of the resized photo
    origin: torch.Tensor  # [B, 2] int64: (left, top) of the crop in the resized photo


def _landmarks(lm5: torch.Tensor | np.ndarray, count: int) -> torch.Tensor:
    """Landmarks as a float32 CPU tensor [count, 5, 2], checked."""
    lm = lm5.detach() if isinstance(lm5, torch.Tensor) else torch.as_tensor(np.asarray(lm5))
    lm = lm.to("cpu", torch.float32)
    if lm.shape != (count, 5, 2):
        raise F2DError(
            f"lm5 has shape {tuple(lm.shape)}; expected [{count}, 5, 2]: "
            f"five (x, y) points for each of the {count} images"
        )
    return lm


def crop_placement(lm5: torch.Tensor | np.ndarray, image_sizes: Sequence[tuple[int, int]]) -> CropPlacement:
    """The crop of each photo from its 5 landmarks [B, 5, 2] (pixels, y down) and (height, width)."""
    lm = _landmarks(lm5, len(image_sizes))
    sizes = torch.tensor([[h, w] for h, w in image_sizes], dtype=torch.float64)  # [B, 2] (h0, w0)
    h0, w0 = sizes[:, 0], sizes[:, 1]
    # y flipped in float32, as test.py does before align_img.
    y_up = (sizes[:, 0:1].to(torch.float32) - 1) - lm[..., 1]
    points = torch.stack([lm[..., 0], y_up], dim=-1).to(torch.float64)  # [B, 5, 2]
    # POS: x' = R1.X + tx, y' = R2.X + ty, least squares over the five points (a fixed pseudo-inverse).
    design = torch.cat([DEEP3D_LM3D_5.to(torch.float64), torch.ones(5, 1, dtype=torch.float64)], dim=1)  # [5, 4]
    solution = torch.linalg.pinv(design) @ points  # [B, 4, 2]: rows R (3) and t, columns x and y
    pos_scale = (solution[:, :3, 0].norm(dim=1) + solution[:, :3, 1].norm(dim=1)) / 2
    translation = solution[:, 3, :]  # [B, 2]
    # A face whose 3D model unit (about 1.6x the eye distance) spans under a pixel is no face.
    bad = ~(pos_scale >= _MIN_FIT_SCALE) | ~torch.isfinite(pos_scale)
    if bad.any():
        index = int(bad.nonzero()[0])
        raise NoFaceError(
            f"the five landmarks of image {index + 1} of {len(lm)} ({lm[index].tolist()}) are degenerate "
            "(NaN, all at one point, or a face under a pixel): give the eye, nose and mouth points of a detected face"
        )
    scale = RESCALE_FACTOR / pos_scale
    width, height = torch.trunc(w0 * scale), torch.trunc(h0 * scale)
    half = CROP_SIZE / 2
    left = torch.trunc(width / 2 - half + (translation[:, 0] - w0 / 2) * scale)
    top = torch.trunc(height / 2 - half + (h0 / 2 - translation[:, 1]) * scale)
    return CropPlacement(
        scale=scale,
        translation=translation,
        resized_size=torch.stack([width, height], dim=1).long(),
        origin=torch.stack([left, top], dim=1).long(),
    )


def _bicubic(x: torch.Tensor) -> torch.Tensor:
    """Pillow's bicubic kernel (a = -0.5)."""
    x = x.abs()
    a = _BICUBIC_A
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return torch.where(x < 1.0, near, torch.where(x < 2.0, far, torch.zeros_like(x)))


def resample_weights(in_size: int, out_size: int, first: int, count: int = CROP_SIZE) -> tuple[int, torch.Tensor]:
    """Pillow's bicubic weights for outputs first..first+count-1 of a resize in_size -> out_size.

    Returns (start, weights [count, n]): fixed-point integers (scaled by 2**22) over the source
    indices start..start+n-1, the only ones used. Rows whose output lies outside 0..out_size-1 are
    zero: the black border of PIL's crop.
    """
    out_index = torch.arange(first, first + count, dtype=torch.float64)
    inside = (out_index >= 0) & (out_index < out_size)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support = 2.0 * filterscale
    center = (out_index + 0.5) * scale
    lo = torch.trunc(center - support + 0.5).clamp(min=0)
    hi = torch.trunc(center + support + 0.5).clamp(max=in_size)
    if not inside.any():
        return 0, torch.zeros(count, 0, dtype=torch.float64)
    start, stop = int(lo[inside].min()), int(hi[inside].max())
    source = torch.arange(start, stop, dtype=torch.float64)
    taps = _bicubic((source[None, :] - center[:, None] + 0.5) * (1.0 / filterscale))
    taps = taps * ((source[None, :] >= lo[:, None]) & (source[None, :] < hi[:, None]))
    total = taps.sum(dim=1, keepdim=True)
    taps = torch.where(total != 0, taps / total, taps)
    fixed = torch.where(taps < 0, torch.trunc(taps * _ONE - 0.5), torch.trunc(taps * _ONE + 0.5))
    return start, fixed * inside[:, None]


def _round_to_uint8(fixed_sum: torch.Tensor) -> torch.Tensor:
    """Pillow's `clip8((sum + 2**21) >> 22)` on exact fixed-point sums held in float64."""
    return torch.floor((fixed_sum + _ONE / 2) / _ONE).clamp_(0, 255)


def _stack_padded(tensors: list[torch.Tensor]) -> torch.Tensor:
    """Stack same-rank tensors, zero-padding each dimension at its end to the largest size."""
    size = [max(t.shape[d] for t in tensors) for d in range(tensors[0].dim())]
    out = tensors[0].new_zeros(len(tensors), *size)
    for b, t in enumerate(tensors):
        out[(b, *(slice(0, n) for n in t.shape))] = t
    return out


def deep3d_crops(images: ImageLike | Sequence[ImageLike], lm5: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Deep3DFaceRecon's input [B, 3, 224, 224] (RGB float32 in [0, 1], CPU) from photos and their 5 landmarks.

    images: a batch [B, H, W, C], or a list of B images (numpy or torch, uint8 0..255 or float 0..1,
    channels last); lm5: [B, 5, 2] in the photo's pixels, y down, insightface `kps` order.
    """
    photos = [item.rgb for item in as_labeled_images(images)]
    place = crop_placement(lm5, [photo.shape[:2] for photo in photos])
    windows, col_weights, row_weights = [], [], []
    sizes, origins = place.resized_size.tolist(), place.origin.tolist()
    for photo, (width, height), (left, top) in zip(photos, sizes, origins, strict=True):
        c0, cols = resample_weights(photo.shape[1], width, left)  # [224, window width]
        r0, rows = resample_weights(photo.shape[0], height, top)  # [224, window height]
        window = photo[r0 : r0 + rows.shape[1], c0 : c0 + cols.shape[1]]
        windows.append(torch.from_numpy(window.astype(np.float64)).permute(2, 0, 1))  # [3, rows, cols]
        col_weights.append(cols)
        row_weights.append(rows)
    window, kx, ky = _stack_padded(windows), _stack_padded(col_weights), _stack_padded(row_weights)
    horizontal = _round_to_uint8(window @ kx.transpose(1, 2)[:, None])  # [B, 3, rows, 224]: PIL's uint8 pass
    crops = _round_to_uint8(ky[:, None] @ horizontal)  # [B, 3, 224, 224]
    log.debug("Deep3D crops: scales %s, origins %s", place.scale.tolist(), place.origin.tolist())
    return (crops / 255.0).to(torch.float32)
