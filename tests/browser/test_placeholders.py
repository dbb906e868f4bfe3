"""The pictures thumbnails show in Load Image nodes are drawn from code, never read from a file."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from tests.browser import placeholders
from tests.support import photos
from tests.support.workflow_files import PLACEHOLDER_FILES


def test_placeholders_are_drawn_without_reading_any_picture(monkeypatch: pytest.MonkeyPatch):
    opened: list[object] = []
    real_open = Image.open

    def no_files(source, *args, **kwargs):
        if isinstance(source, (str, os.PathLike)):
            opened.append(source)
            raise AssertionError(f"a placeholder read {source}")
        return real_open(source, *args, **kwargs)

    monkeypatch.setattr(Image, "open", no_files)
    monkeypatch.setattr(photos, "load_rgb", lambda *a: pytest.fail("a placeholder loaded a package photo"))
    pictures = placeholders.placeholder_images()
    assert opened == []
    assert set(pictures) == set(PLACEHOLDER_FILES)
    assert all(picture.size == (placeholders.SIZE, placeholders.SIZE) for picture in pictures.values())


def test_the_template_placeholder_has_a_face_area_to_inpaint():
    """LoadImage makes its mask from 1 - alpha: the oval face area is transparent, the rest opaque."""
    alpha = np.asarray(placeholders.template_placeholder())[..., 3]
    centre = placeholders.SIZE // 2
    assert alpha[centre - 40, centre] == 0 and alpha[10, 10] == 255
    assert 0.05 < (alpha == 0).mean() < 0.3
