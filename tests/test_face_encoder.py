"""The whole encode path: detect (synthetic insightface pack), align, MSID, pool several photos, map."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f2d_core.errors import NoFaceError
from f2d_core.faces.face_detection import FaceDetector
from f2d_core.identity.face_encoder import face_box_masks
from tests.support import synthetic_insightface as si
from tests.support.photos import ALIGNED_CROP, ASTRONAUT, load_rgb


@pytest.fixture(scope="module")
def detector(tmp_path_factory) -> FaceDetector:
    root = tmp_path_factory.mktemp("insightface")
    si.write_synthetic_pack(root, "pack")
    return FaceDetector(root, "pack")


def _photo_in_square(photo: str, size: tuple[int, int] = (640, 640), centre=(320, 320), side=128) -> np.ndarray:
    """A real photo's texture inside a square the synthetic detector finds."""
    return si.face_photo(load_rgb(photo), size, centre, side)


def test_one_photo_gives_s_star_of_its_aligned_face(encoder, detector):
    image = _photo_in_square(ASTRONAUT)
    result = encoder.encode([image], detector)
    assert result.s_star.shape == (2, 768) and result.s_star.dtype == torch.float32
    assert result.crops.shape == (1, 3, 112, 112)
    np.testing.assert_allclose(result.faces[0].bbox, si.expected_box(320, 320, 128), atol=0.5)
    manual = encoder.s_star(
        encoder.identity(
            encoder.crops(torch.from_numpy(image).permute(2, 0, 1)[None] / 255, result.faces[0].kps[None])
        )[0]
    )
    torch.testing.assert_close(result.s_star, manual)
    assert result.settings["images_used"] == 1


def test_several_photos_are_pooled_into_one_s_star(encoder, detector):
    photos = [_photo_in_square(ASTRONAUT), _photo_in_square(ALIGNED_CROP)]
    both = encoder.encode(photos, detector)
    singles = [encoder.encode([p], detector) for p in photos]
    assert both.crops.shape[0] == 2 and both.settings["images_used"] == 2
    torch.testing.assert_close(both.idvec, encoder.identity(both.crops, "normalized_mean"))
    assert all(not torch.allclose(both.s_star, s.s_star, atol=1e-3) for s in singles)


def test_normalized_mean_keeps_single_photo_statistics_and_plain_mean_shrinks(encoder, expected):
    """Eight real faces (the fixture's official crops): each scale of the pooled vector stays LayerNorm-shaped."""
    crops = torch.from_numpy(expected["msid_input"]) * 0.5 + 0.5
    norms = encoder.msid.layer_norms()

    def spread(idvec: torch.Tensor) -> list[float]:
        segments = idvec.reshape(4, 384)
        return [float(((seg - n.bias) / n.weight).std(unbiased=False)) for seg, n in zip(segments, norms, strict=True)]

    with torch.no_grad():
        assert spread(encoder.identity(crops, "normalized_mean")) == pytest.approx([1.0] * 4, abs=1e-3)
        assert all(s < 0.95 for s in spread(encoder.identity(crops, "mean")))


def test_one_photo_pooled_equals_the_unpooled_vector(encoder, detector):
    crops = encoder.encode([_photo_in_square(ASTRONAUT)], detector).crops
    torch.testing.assert_close(
        encoder.identity(crops, "normalized_mean"), encoder.identity(crops)[0], atol=1e-4, rtol=0
    )


def test_photo_without_face_is_named_or_skipped(encoder, detector):
    photos = [_photo_in_square(ASTRONAUT), np.zeros((640, 640, 3), np.uint8)]
    with pytest.raises(NoFaceError, match="image 2 of 2: no face found"):
        encoder.encode(photos, detector)
    skipped = encoder.encode(photos, detector, on_missing="skip")
    assert skipped.faces[1] is None and skipped.settings["images_used"] == 1
    torch.testing.assert_close(skipped.s_star, encoder.encode(photos[:1], detector).s_star)


def test_no_face_anywhere_is_an_error_even_when_skipping(encoder, detector):
    with pytest.raises(NoFaceError, match="any of the 2 image"):
        encoder.encode([np.zeros((64, 64, 3), np.uint8)] * 2, detector, on_missing="skip")


def test_photos_of_different_sizes_and_formats(encoder, detector):
    big = _photo_in_square(ASTRONAUT, size=(700, 900), centre=(448, 352))
    grey = _photo_in_square(ASTRONAUT)[:, :, 0]  # grey: the square is white, texture lost, still found
    result = encoder.encode([big, grey], detector)
    assert result.settings["images_used"] == 2


def test_expression_strength_blends_towards_null_exp(encoder):
    idvec = torch.randn(1536)
    expression = torch.randn(64)
    none = encoder.s_star(idvec)
    torch.testing.assert_close(encoder.s_star(idvec, expression, 0.0), none)
    full = encoder.s_star(idvec, expression, 1.0)
    half = encoder.s_star(idvec, expression, 0.5)
    expected_half = encoder.s_star(idvec, 0.5 * expression + 0.5 * encoder.mapper.null_exp.detach(), 1.0)
    torch.testing.assert_close(half, expected_half)
    assert not torch.allclose(full, none)


def test_face_box_masks_cover_each_used_face(encoder, detector):
    faces = encoder.encode(
        [_photo_in_square(ASTRONAUT), np.zeros((640, 640, 3), np.uint8)], detector, on_missing="skip"
    ).faces
    masks = face_box_masks(faces, 640, 640)
    assert masks.shape == (2, 640, 640)
    assert masks[0].sum() == pytest.approx(128 * 128, rel=0.02) and masks[0, 320, 320] == 1 and masks[0, 10, 10] == 0
    assert masks[1].sum() == 0
