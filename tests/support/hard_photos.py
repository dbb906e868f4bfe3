"""Face photos a single detection size misses, for the synthetic detector and for the same reasons as SCRFD.

The synthetic detector finds a bright square of 23-42, 45-85 or 91-169 detector pixels (strides 8, 16,
32; see synthetic_insightface.py), as SCRFD finds faces within its anchor scales. Each photo's face,
fitted into 640 or 320 pixels (the sizes tried before the detection cascade), is outside that range:
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from tests.support import synthetic_insightface as si
from tests.support.photos import ASTRONAUT, load_rgb


class HardPhoto(NamedTuple):
    """A photo of `size` (height, width) with a face of side `side` at `centre` (x, y), and what finds it."""

    size: tuple[int, int]
    centre: tuple[int, int]
    side: int
    found_on: str  # the cascade attempt that finds it (detection_cascade.Attempt.describe())


HARD_PHOTOS = {
    # A headshot cropped to the face: 640 / 320 detector pixels wide, larger than the largest anchor.
    "face_fills_the_photo": HardPhoto((256, 256), (128, 128), 256, "the photo padded by 128 px at detection size 320"),
    # A 128 px face in a camera photo: 14 / 7 detector pixels, smaller than the smallest anchor.
    "small_face_in_a_camera_photo": HardPhoto((4000, 6000), (4125, 2700), 128, "the photo at detection size 1280"),
    # A large face whose chin is cut by the bottom border: its visible part is too large, and touches the edge.
    "face_cut_by_the_border": HardPhoto(
        (300, 400), (200, 250), 320, "the photo padded by 200 px at detection size 320"
    ),
}


def hard_photo(name: str) -> np.ndarray:
    """The RGB uint8 photo of HARD_PHOTOS[name]; its face carries the astronaut photo's texture."""
    photo = HARD_PHOTOS[name]
    return si.face_photo(load_rgb(ASTRONAUT), photo.size, photo.centre, photo.side)
