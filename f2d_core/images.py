"""Any input image (numpy or torch, grey/RGB/RGBA, float or uint8) to the RGB uint8 the pipeline uses.

Accepted: HxW (grey), HxWx1, HxWx3 (RGB), HxWx4 (RGBA), and a batch of one [1,H,W,C]; channels last.
Values: float in [0, 1], or integers in 0..255. Floats up to `FLOAT_SLACK` outside [0, 1] are clipped: core
Upscale Image (bicubic) overshoots hard edges by up to about 19 % (the cubic kernel's negative lobes, a = -0.75,
sum to 0.1875), and a chain of resamplers or an unclamped upscaler adds more. Anything further out is no image
(e.g. 0..255 floats) and is refused, as are NaN and infinities.
RGBA is composited over black (rgb * alpha), the colour the face alignment warp fills outside the
image, so whatever colour hides under transparent pixels never reaches the detector.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch

from .errors import F2DError

ImageLike = np.ndarray | torch.Tensor
FLOAT_SLACK = 0.5  # see the module docstring: resampler overshoot is clipped, 0..255 data refused
_CHANNELS = {1: "grey", 3: "RGB", 4: "RGBA"}


class LabeledImage(NamedTuple):
    """One image of a batch: its label for messages ("image 2 of 4") and its RGB uint8 pixels."""

    label: str
    rgb: np.ndarray


def image_label(index: int, count: int) -> str:
    """The name messages use for image `index` (0-based) of a batch of `count`."""
    return f"image {index + 1} of {count}"


def _to_numpy(image: object, label: str) -> np.ndarray:
    """A numpy view of a tensor or array-like, on the CPU."""
    if isinstance(image, torch.Tensor):
        tensor = image.detach().cpu()
        if tensor.dtype in (torch.bfloat16, torch.float16):
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(image, np.ndarray):
        return image
    try:
        return np.asarray(image)
    except (TypeError, ValueError) as exc:
        raise F2DError(
            f"{label}: {type(image).__name__} is not an image; pass a numpy array or a torch tensor"
        ) from exc


def _to_hwc(array: np.ndarray, label: str) -> np.ndarray:
    """HxW, HxWxC or 1xHxWxC to HxWxC with C in (1, 3, 4), or a clear error."""
    shape = tuple(array.shape)
    if array.size == 0:
        raise F2DError(f"{label} is empty (shape {shape}); give it an image with pixels")
    if array.ndim == 4 and shape[0] == 1:
        array = array[0]
    elif array.ndim == 4:
        raise F2DError(
            f"{label} is a batch of {shape[0]} images (shape {shape}); split it first "
            "(f2d_core.images.split_image_batch) and pass the images one by one"
        )
    if array.ndim == 2:
        return array[:, :, None]
    if array.ndim != 3:
        raise F2DError(f"{label} has shape {shape}; expected HxW, HxWxC or 1xHxWxC (channels last)")
    channels = array.shape[2]
    if channels not in _CHANNELS:
        hint = ""
        if shape[0] in _CHANNELS and channels > 4:
            hint = " It looks channels-first: permute it to (H, W, C)."
        raise F2DError(
            f"{label} has {channels} channels (shape {shape}); expected 1 (grey), 3 (RGB) or 4 (RGBA), "
            f"channels last.{hint}"
        )
    return array


def _to_unit_float(array: np.ndarray, label: str) -> np.ndarray:
    """Pixel values as float32 in [0, 1], or a clear error for NaN, wrong range or dtype."""
    if array.dtype == np.uint8:
        return array.astype(np.float32) / 255.0
    if array.dtype.kind in "iu":
        low, high = int(array.min()), int(array.max())
        if low < 0 or high > 255:
            raise F2DError(
                f"{label}: integer pixels ({array.dtype}) span {low}..{high}; expected 0..255. "
                "Divide a 16-bit image by 257, or give floats in [0, 1]."
            )
        return array.astype(np.float32) / 255.0
    if array.dtype.kind != "f":
        raise F2DError(f"{label}: pixels of type {array.dtype} are not supported; give uint8 0..255 or float 0..1")
    if not np.isfinite(array).all():
        raise F2DError(f"{label} contains NaN or infinite values; fix the node that produced it")
    low, high = float(array.min()), float(array.max())
    if low < -FLOAT_SLACK or high > 1.0 + FLOAT_SLACK:
        raise F2DError(
            f"{label}: float pixels span [{low:.3g}, {high:.3g}]; expected [0, 1] "
            "(an image in 0..255 must be divided by 255)"
        )
    return np.clip(array.astype(np.float32), 0.0, 1.0)


def to_rgb_uint8(image: ImageLike, label: str = "image") -> np.ndarray:
    """The image as a contiguous HxWx3 RGB uint8 array; `label` names it in errors."""
    array = _to_hwc(_to_numpy(image, label), label)
    if array.dtype == np.uint8 and array.shape[2] == 3:
        return np.ascontiguousarray(array)
    unit = _to_unit_float(array, label)
    channels = unit.shape[2]
    if channels == 1:
        unit = np.repeat(unit, 3, axis=2)
    elif channels == 4:
        unit = unit[:, :, :3] * unit[:, :, 3:4]
    return np.ascontiguousarray(np.round(unit * 255.0).astype(np.uint8))


def split_image_batch(images: ImageLike, label: str = "IMAGE batch") -> list[LabeledImage]:
    """A ComfyUI IMAGE batch [B, H, W, C] (float 0..1) as per-image RGB uint8 arrays labelled "image i of B"."""
    array = _to_numpy(images, label)
    if array.ndim != 4:
        raise F2DError(f"{label} has shape {tuple(array.shape)}; expected a batch [B, H, W, C]")
    count = array.shape[0]
    if count == 0:
        raise F2DError(f"{label} holds no images; connect at least one image")
    return [LabeledImage(image_label(i, count), to_rgb_uint8(array[i], image_label(i, count))) for i in range(count)]


def as_labeled_images(images: ImageLike | Sequence[ImageLike]) -> list[LabeledImage]:
    """A batch [B, H, W, C], a single image, or a list of images, as labelled RGB uint8 arrays."""
    if isinstance(images, (np.ndarray, torch.Tensor)):
        if images.ndim == 4:
            return split_image_batch(images)
        return [LabeledImage(image_label(0, 1), to_rgb_uint8(images, image_label(0, 1)))]
    items = list(images)
    if not items:
        raise F2DError("the image list is empty; give at least one image")
    count = len(items)
    return [
        LabeledImage(image_label(i, count), to_rgb_uint8(item, image_label(i, count))) for i, item in enumerate(items)
    ]
