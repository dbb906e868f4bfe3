"""Detection that goes on before it gives up: the photo as is, padded, at larger sizes, at smaller sizes.

A single-size detector misses two kinds of photo a person calls a face photo, for geometric reasons:

- a tight headshot, where the face fills the frame: after fitting into the detector's input the face is
  larger than the detector's largest anchors (SCRFD: 512 px at stride 32), and no anchor sees the
  background around it. Padding the photo (black, as SCRFD's own letterbox pads) shrinks the face and
  gives it that background;
- a camera photo thousands of pixels wide where the face is a small part: fitted into 640 px, a 128 px
  face of a 6000 px photo becomes 14 px, at or below SCRFD's smallest anchors (16 px at stride 8).
  A larger detection size keeps it large enough.

The attempts run in that order, then the smaller detection sizes the detector tried before (on the
photo, then on the padded photo), and stop at the first that finds a face. The first attempt is the
single detection that ran before the cascade existed: a photo whose face is found at once costs
exactly that one detection (nothing is padded or planned ahead of it).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import torch

from .scrfd import resize_like_cv2

logger = logging.getLogger(__name__)

# Larger detection sizes are tried only when the photo is at least this many times the detection size
# (fitted into it, the photo was shrunk that much), as multiples of it, and never above MAX_DET_SIZE,
# which bounds the worst case (a photo without a face) at 15.5 detections' worth of detector pixels.
LARGER_FROM_PHOTO_RATIO = 2
LARGER_FACTORS = (2, 3)
MAX_DET_SIZE = 1920
# Black border on each side, as a fraction of the photo's longer side: a face that filled the photo
# fills at most half of the padded one.
PAD_FRACTION = 0.5
SCRFD_STRIDE = 32  # detection sizes are multiples of SCRFD's largest stride


class Face(Protocol):
    """What the cascade needs of a detected face: a box and keypoints in the detected image's pixels."""

    bbox: tuple[float, float, float, float]
    kps: np.ndarray


FaceT = TypeVar("FaceT", bound=Face)
DetectAt = Callable[[np.ndarray, int], list[FaceT]]


@dataclass(frozen=True)
class Attempt:
    """One try: the photo (padded by `padding` black pixels on each side, or not) at one detection size."""

    det_size: int
    padding: int = 0

    def describe(self) -> str:
        """'the photo at detection size 640' / 'the photo padded by 320 px at detection size 320'."""
        what = f"the photo padded by {self.padding} px" if self.padding else "the photo"
        return f"{what} at detection size {self.det_size}"


@dataclass(frozen=True)
class CascadeResult:
    """The faces found (in the photo's pixels), the attempt that found them, and how many were made."""

    faces: list
    attempt: Attempt | None  # None: no attempt found a face
    attempts_made: int
    attempts_planned: int

    def describe(self) -> str:
        """Which attempt found the face, for the log and the node's UI text."""
        if self.attempt is None:
            return f"no face in {self.attempts_made} attempt(s)"
        if self.attempts_made == 1:
            return f"found at once ({self.attempt.describe()})"
        return f"found on {self.attempt.describe()} (attempt {self.attempts_made} of {self.attempts_planned})"


def _round_up(value: float, step: int = SCRFD_STRIDE) -> int:
    return int(-(-value // step) * step)


def plan_attempts(
    height: int,
    width: int,
    det_size: int,
    smaller_sizes: Sequence[int] = (),
    resizable: bool = True,
) -> list[Attempt]:
    """The attempts for a photo of height x width pixels, in the order they run.

    1. the photo at `det_size` (what a single-size detector does);
    2. the photo padded by PAD_FRACTION of its longer side on each side, at `det_size`;
    3. when the photo is at least LARGER_FROM_PHOTO_RATIO x `det_size`: the photo at LARGER_FACTORS x
       `det_size`, capped at MAX_DET_SIZE and at the photo's own size (rounded up to 32);
    4. each of `smaller_sizes`: the photo, then the padded photo.

    `resizable=False` (a detector exported with a fixed input size) keeps 1 and 2 only.
    """
    long_side = max(height, width)
    padding = max(1, round(long_side * PAD_FRACTION))
    attempts = [Attempt(det_size), Attempt(det_size, padding)]
    if not resizable:
        return attempts
    if long_side >= LARGER_FROM_PHOTO_RATIO * det_size:
        limit = min(MAX_DET_SIZE, _round_up(long_side))
        for factor in LARGER_FACTORS:
            size = min(factor * det_size, limit)
            if size > attempts[-1].det_size:
                attempts.append(Attempt(size))
    for size in smaller_sizes:
        if size < det_size:
            attempts += [Attempt(size), Attempt(size, padding)]
    return attempts


def _padded_photo(bgr: np.ndarray, padding: int, det_size: int) -> tuple[np.ndarray, float, float, int]:
    """The photo with `padding` black pixels on each side, shrunk first when the result exceeds `det_size`.

    The detector fits its input into det_size x det_size anyway; shrinking before padding gives it the
    same picture without building a padded copy at full size (a 6000 x 4000 photo padded would be
    12000 x 10000). Returns the image, its x and y scale from the photo, and the padding in its pixels.
    """
    height, width = bgr.shape[:2]
    scale = min(1.0, det_size / (max(height, width) + 2 * padding))
    if scale < 1.0:
        size = (max(1, round(height * scale)), max(1, round(width * scale)))
        pixels = torch.from_numpy(np.ascontiguousarray(bgr)).permute(2, 0, 1)[None].float()
        bgr = resize_like_cv2(pixels, *size)[0].permute(1, 2, 0).to(torch.uint8).numpy()
    pad = round(padding * scale)
    image = np.pad(bgr, ((pad, pad), (pad, pad), (0, 0)))
    return image, bgr.shape[1] / width, bgr.shape[0] / height, pad


def _in_photo_pixels(face: FaceT, scale_x: float, scale_y: float, pad: int) -> FaceT:
    """A face found on the padded (and shrunk) photo, in the photo's pixels (its box may reach past its edge)."""
    x1, y1, x2, y2 = face.bbox
    box = ((x1 - pad) / scale_x, (y1 - pad) / scale_y, (x2 - pad) / scale_x, (y2 - pad) / scale_y)
    kps = (face.kps - np.float32(pad)) / np.array([scale_x, scale_y], np.float32)
    return dataclasses.replace(face, bbox=box, kps=kps.astype(np.float32))


def detect_with_cascade(
    detect_at: DetectAt, bgr: np.ndarray, attempts: Sequence[Attempt], label: str = "image"
) -> CascadeResult:
    """Run `attempts` in order until one finds a face.

    `detect_at(bgr, size)` gives the faces of a BGR uint8 [H, W, 3] image fitted into size x size
    (dataclasses with `bbox` (x1, y1, x2, y2) and `kps` [5, 2] float32, in that image's pixels). Faces
    found on a padded photo are mapped back into the photo's pixels. Each failed attempt is logged
    at DEBUG with the next one (per-image lines at INFO would break the progress bars around them).
    """
    for number, attempt in enumerate(attempts, start=1):
        if attempt.padding:
            image, scale_x, scale_y, pad = _padded_photo(bgr, attempt.padding, attempt.det_size)
            faces = [_in_photo_pixels(face, scale_x, scale_y, pad) for face in detect_at(image, attempt.det_size)]
        else:
            faces = detect_at(bgr, attempt.det_size)
        if faces:
            return CascadeResult(faces, attempt, number, len(attempts))
        if number < len(attempts):
            logger.debug("%s: no face on %s; trying %s", label, attempt.describe(), attempts[number].describe())
    return CascadeResult([], None, len(attempts), len(attempts))
