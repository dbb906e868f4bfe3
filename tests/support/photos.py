"""Real face photos from installed packages (never committed): scikit-image and insightface."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def package_file(relative: str) -> Path:
    """`skimage/...` or `insightface/...` resolved inside the installed package."""
    package, _, rest = relative.partition("/")
    module = __import__(package)
    return Path(module.__file__).resolve().parent / rest


def load_rgb(relative: str) -> np.ndarray:
    """An RGB uint8 [H, W, 3] photo; a fixture source like `t1.jpg#face2` loads the whole photo."""
    return np.array(Image.open(package_file(relative.split("#")[0])).convert("RGB"))


ASTRONAUT = "skimage/data/astronaut.png"
GROUP = "insightface/data/images/t1.jpg"
ALIGNED_CROP = "insightface/data/images/Tom_Hanks_54745.png"
CAT = "skimage/data/chelsea.png"
