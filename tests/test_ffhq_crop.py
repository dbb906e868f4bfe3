"""The FFHQ training crop: the quad recipe, its warp (checked against PIL's QUAD, FFHQ's own warp), batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from f2d_core.training.data.ffhq_crop import (
    crop_corners,
    ffhq_crop,
    ffhq_matrix,
    ffhq_quad,
    flip_matrix,
    mirror_landmarks,
    transform_points,
    warp_to_crop,
)
from tests.support import formula_weights
from tests.support.photos import ASTRONAUT, load_rgb


def _lm(eyes, mouth_corners, nose=(0.0, 0.0)) -> torch.Tensor:
    return torch.tensor([[*eyes, nose, *mouth_corners]], dtype=torch.float32)


def _tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float() / 255


@pytest.fixture(scope="module")
def astronaut() -> tuple[torch.Tensor, torch.Tensor]:
    """The astronaut and the fixture's 5 landmarks of her face (from the official pipeline's FAN)."""
    lm = torch.from_numpy(formula_weights.expected()["lm5"][0]).float()[None]
    return _tensor(load_rgb(ASTRONAUT)), lm


@pytest.mark.parametrize(
    ("lm", "quad"),
    [
        # eye distance rules: half side = 2 * 20; centre 0.1 * 20 below the eyes
        (_lm([(40, 50), (60, 50)], [(42, 70), (58, 70)]), [[10, 12], [10, 92], [90, 92], [90, 12]]),
        # eye-to-mouth rules: half side = 1.8 * 30 = 54, and x = eye_to_eye - rot90(eye_to_mouth) stays horizontal
        (_lm([(45, 50), (55, 50)], [(47, 80), (53, 80)]), [[-4, -1], [-4, 107], [104, 107], [104, -1]]),
        # a face turned a quarter (eyes one above the other, mouth to the left): the quad turns with it
        (_lm([(50, 40), (50, 60)], [(30, 42), (30, 58)]), [[88, 10], [8, 10], [8, 90], [88, 90]]),
    ],
)
def test_known_quads_map_to_the_crop_corners(lm, quad):
    torch.testing.assert_close(ffhq_quad(lm)[0], torch.tensor(quad, dtype=torch.float64))
    for size in (64, 512):
        corners = transform_points(torch.tensor([quad], dtype=torch.float32), ffhq_matrix(lm, size))
        torch.testing.assert_close(corners[0], crop_corners(size).float(), atol=1e-4, rtol=0)


def _pil_ffhq(rgb: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """FFHQ's own warp: PIL QUAD transform (its coordinates put pixel centres at +0.5), bilinear."""
    data = tuple((quad + 0.5).flatten().tolist())
    return np.asarray(Image.fromarray(rgb).transform((size, size), Image.QUAD, data, Image.BILINEAR))


def test_real_photo_puts_the_eyes_where_ffhq_does(astronaut):
    photo, lm = astronaut
    size = 256
    crop, matrix = ffhq_crop(photo, lm, size)
    assert crop.shape == (1, 3, size, size) and matrix.shape == (1, 2, 3)
    eyes = transform_points(lm, matrix)[0, :2]
    # FFHQ's layout: eyes level, symmetric about the centre, a bit above the middle, 1/4 of the crop apart or less.
    assert eyes[:, 1].sub(0.465 * size).abs().max() < 0.02 * size
    assert abs(eyes[:, 0].mean() - (size - 1) / 2) < 0.02 * size
    assert 0.2 * size < eyes[1, 0] - eyes[0, 0] <= 0.25 * size + 1e-3
    # The pixels: the same image as PIL's QUAD warp of the FFHQ recipe (interior; PIL rounds to uint8).
    reference = _pil_ffhq(load_rgb(ASTRONAUT), ffhq_quad(lm)[0].numpy(), size).astype(np.float32) / 255
    ours = crop[0].permute(1, 2, 0).numpy()
    diff = np.abs(ours - reference)[2:-2, 2:-2]
    assert diff.mean() < 1.0 / 255 and np.quantile(diff, 0.99) < 4.0 / 255


def test_rotated_photo_gives_the_same_crop(astronaut):
    """A quarter turn of photo and landmarks together leaves the crop unchanged (pixel-centre coordinates)."""
    photo, lm = astronaut
    width = photo.shape[-1]
    turned = torch.rot90(photo, 1, dims=(2, 3))  # x' = y, y' = W - 1 - x
    lm_turned = torch.stack([lm[..., 1], (width - 1) - lm[..., 0]], dim=-1)
    torch.testing.assert_close(
        ffhq_crop(turned, lm_turned, 128).crops, ffhq_crop(photo, lm, 128).crops, atol=1e-4, rtol=0
    )


def test_mirrored_photo_gives_the_mirrored_crop(astronaut):
    photo, lm = astronaut
    crop, matrix = ffhq_crop(photo, lm, 128)
    mirrored = ffhq_crop(photo.flip(-1), mirror_landmarks(lm, photo.shape[-1]), 128).crops
    torch.testing.assert_close(mirrored, crop.flip(-1), atol=1e-4, rtol=0)
    torch.testing.assert_close(warp_to_crop(photo, flip_matrix(matrix, 128), 128), crop.flip(-1), atol=1e-4, rtol=0)


def test_batch_equals_singles_with_and_without_shrinking(astronaut):
    photo, lm = astronaut
    centre = lm.mean(dim=1, keepdim=True)
    small_face = centre + (lm - centre) * 0.3  # a small face: no box filter at size 64; the big one needs one
    lms = torch.cat([lm, small_face])
    photos = photo.expand(2, -1, -1, -1)
    batch = ffhq_crop(photos, lms, 64)
    for i in range(2):
        single = ffhq_crop(photos[i : i + 1], lms[i : i + 1], 64)
        torch.testing.assert_close(batch.crops[i], single.crops[0], atol=1e-6, rtol=0)
        torch.testing.assert_close(batch.matrix[i], single.matrix[0])


def test_a_big_face_is_box_filtered_before_the_warp():
    """A one-pixel checkerboard shrunk 4x: a filtered warp gives grey; a plain bilinear one would alias to 0/1."""
    checker = (torch.arange(400)[:, None] + torch.arange(400)[None]) % 2
    photo = checker.float()[None, None].expand(1, 3, -1, -1)
    lm = _lm([(160, 180), (240, 180)], [(170, 260), (230, 260)])  # quad side 320 -> 4 photo pixels per crop pixel
    crop = ffhq_crop(photo, lm, 80).crops
    inner = crop[..., 4:-4, 4:-4]
    assert (inner - 0.5).abs().max() < 0.05
