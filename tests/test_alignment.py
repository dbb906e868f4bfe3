"""Alignment: the similarity fit and the warp against the official crops of real photos."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.transform import SimilarityTransform

from f2d_core.faces.alignment import ARCFACE_TEMPLATE_112, align_faces, similarity_transform, to_msid_input
from tests.support.photos import load_rgb

# The official crop is a uint8 image: our float warp lands within half a level of it (1/255 in
# [-1, 1] units is 0.00392); the mean difference is 0.0019.
ALIGN_MAX_ABS = 0.0040
ALIGN_MEAN_ABS = 0.0021


def _as_batch(image: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255


@pytest.mark.parametrize("index", range(8))
def test_alignment_reproduces_official_crop(expected, index):
    image = load_rgb(expected["sources"][index])
    crop = align_faces(_as_batch(image), torch.from_numpy(expected["lm5"][index])[None])
    diff = np.abs(to_msid_input(crop)[0].numpy() - expected["msid_input"][index])
    assert diff.max() < ALIGN_MAX_ABS
    assert diff.mean() < ALIGN_MEAN_ABS


def test_similarity_fit_matches_skimage(expected):
    lm5 = torch.from_numpy(expected["lm5"])
    ours = similarity_transform(lm5, ARCFACE_TEMPLATE_112)
    for i in range(len(lm5)):
        reference = SimilarityTransform.from_estimate(expected["lm5"][i], ARCFACE_TEMPLATE_112.numpy())
        np.testing.assert_allclose(ours[i].numpy(), reference.params[:2], atol=1e-4)


def test_similarity_fit_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, torch.tensor([12.0, -4.0])
    rotation = torch.tensor([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]], dtype=torch.float32)
    src = ARCFACE_TEMPLATE_112[None]
    dst = (scale * src[0] @ rotation.T + shift)[None]
    matrix = similarity_transform(src, dst[0])
    np.testing.assert_allclose(matrix[0, :, :2].numpy(), (scale * rotation).numpy(), atol=1e-4)
    np.testing.assert_allclose(matrix[0, :, 2].numpy(), shift.numpy(), atol=1e-3)


def test_batched_alignment_equals_one_by_one(expected):
    image = _as_batch(load_rgb(expected["sources"][1]))
    lm5 = torch.from_numpy(expected["lm5"][1:7])
    batched = align_faces(image.expand(6, -1, -1, -1), lm5)
    singles = torch.cat([align_faces(image, lm[None]) for lm in lm5])
    torch.testing.assert_close(batched, singles)


def test_template_landmarks_land_on_template(expected):
    """An already aligned 112 crop with template landmarks comes back unchanged."""
    image = _as_batch(load_rgb(expected["sources"][7]))
    crop = align_faces(image, ARCFACE_TEMPLATE_112[None])
    torch.testing.assert_close(crop, image, atol=1e-4, rtol=0)
