"""Input images of every accepted kind become HxWx3 RGB uint8; anything else fails naming the image."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f2d_core.errors import F2DError
from f2d_core.images import as_labeled_images, image_label, split_image_batch, to_rgb_uint8


def _ramp(height: int = 6, width: int = 5) -> np.ndarray:
    """A float RGB image in [0, 1] whose three channels all differ."""
    base = np.linspace(0.0, 1.0, height * width, dtype=np.float32).reshape(height, width)
    return np.stack([base, 1.0 - base, (base * 0.5) ** 2], axis=-1)


def test_uint8_rgb_passes_through_unchanged() -> None:
    image = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    out = to_rgb_uint8(image)
    assert out.dtype == np.uint8 and out.shape == (7, 9, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, image)


def test_float_numpy_and_torch_round_to_uint8() -> None:
    image = _ramp()
    expected = np.round(image * 255).astype(np.uint8)
    np.testing.assert_array_equal(to_rgb_uint8(image), expected)
    np.testing.assert_array_equal(to_rgb_uint8(torch.from_numpy(image)), expected)
    # uint8 -> float (ComfyUI's x / 255) -> uint8 is lossless: rounding, not truncation.
    pixels = np.arange(256, dtype=np.uint8).reshape(16, 16, 1).repeat(3, axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(torch.from_numpy(pixels).float() / 255.0), pixels)


def test_half_precision_tensor_is_accepted() -> None:
    image = torch.from_numpy(_ramp())
    out = to_rgb_uint8(image.to(torch.bfloat16))
    assert np.abs(out.astype(int) - to_rgb_uint8(image).astype(int)).max() <= 2


def test_grayscale_2d_and_single_channel_become_three_equal_channels() -> None:
    grey = np.arange(30, dtype=np.uint8).reshape(5, 6) * 8
    out = to_rgb_uint8(grey)
    assert out.shape == (5, 6, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], grey)
    single = torch.linspace(0, 1, 30).reshape(5, 6, 1)
    out = to_rgb_uint8(single)
    np.testing.assert_array_equal(out[:, :, 0], np.round(single[:, :, 0].numpy() * 255).astype(np.uint8))
    np.testing.assert_array_equal(out[:, :, 0], out[:, :, 2])


def test_rgba_is_composited_over_black() -> None:
    rgb = np.full((2, 3, 3), [1.0, 0.5, 0.25], dtype=np.float32)
    alpha = np.array([[0.0, 0.5, 1.0], [1.0, 1.0, 0.0]], dtype=np.float32)[:, :, None]
    out = to_rgb_uint8(np.concatenate([rgb, alpha], axis=-1))
    np.testing.assert_array_equal(out[0, 0], [0, 0, 0])  # transparent: black, whatever colour hides there
    np.testing.assert_array_equal(out[0, 1], [128, 64, 32])  # half: half of (255, 127.5, 63.75)
    np.testing.assert_array_equal(out[0, 2], [255, 128, 64])  # opaque: the colour itself
    rgba8 = np.dstack([np.full((2, 2, 3), 200, np.uint8), np.array([[0, 255], [255, 0]], np.uint8)])
    np.testing.assert_array_equal(to_rgb_uint8(rgba8)[:, :, 0], [[0, 200], [200, 0]])


def test_batch_of_one_is_a_single_image_and_slight_overshoot_is_clipped() -> None:
    image = _ramp()
    image[0, 0] = [1.01, -0.01, 0.5]
    out = to_rgb_uint8(torch.from_numpy(image)[None])
    assert out.shape == (6, 5, 3)
    np.testing.assert_array_equal(out[0, 0], [255, 0, 128])


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.zeros((8, 8, 5), np.float32), "5 channels"),
        (np.zeros((3, 8, 10), np.float32), "channels-first"),
        (np.zeros((0, 8, 3), np.float32), "empty"),
        (np.full((4, 4, 3), np.nan, np.float32), "NaN"),
        (np.full((4, 4, 3), 255.0, np.float32), "divided by 255"),
        (np.full((4, 4, 3), 1000, np.int32), "0..255"),
        (np.zeros((4, 4, 3), bool), "not supported"),
        (np.zeros((2, 4, 4, 3), np.float32), "batch of 2"),
        (np.zeros((4, 4, 3, 2, 2), np.float32), "shape"),
    ],
)
def test_unusable_images_fail_naming_the_image(image: np.ndarray, expected: str) -> None:
    with pytest.raises(F2DError) as info:
        to_rgb_uint8(image, "image 2 of 4")
    message = str(info.value)
    assert message.startswith("image 2 of 4") and expected in message


def test_integer_images_within_0_255_are_accepted() -> None:
    image = np.array([[[0, 128, 255]]], dtype=np.int64)
    np.testing.assert_array_equal(to_rgb_uint8(image), [[[0, 128, 255]]])


def test_split_comfyui_batch_labels_every_image() -> None:
    batch = torch.stack([torch.from_numpy(_ramp()) * k for k in (1.0, 0.5, 0.0)])
    items = split_image_batch(batch)
    assert [item.label for item in items] == ["image 1 of 3", "image 2 of 3", "image 3 of 3"]
    for item, k in zip(items, (1.0, 0.5, 0.0), strict=True):
        assert item.rgb.shape == (6, 5, 3) and item.rgb.dtype == np.uint8
        np.testing.assert_array_equal(item.rgb, np.round(_ramp() * k * 255).astype(np.uint8))


def test_split_batch_errors_name_the_bad_image() -> None:
    batch = torch.rand(3, 4, 4, 3)
    batch[1, 0, 0, 0] = float("nan")
    with pytest.raises(F2DError, match="image 2 of 3 contains NaN"):
        split_image_batch(batch)
    with pytest.raises(F2DError, match=r"expected a batch \[B, H, W, C\]"):
        split_image_batch(torch.rand(4, 4, 3))
    with pytest.raises(F2DError, match="holds no images"):
        split_image_batch(torch.rand(0, 4, 4, 3))


def test_as_labeled_images_takes_lists_single_images_and_batches() -> None:
    mixed = [np.zeros((4, 4), np.uint8), torch.ones(5, 5, 3)]
    items = as_labeled_images(mixed)
    assert [item.label for item in items] == [image_label(0, 2), image_label(1, 2)] == ["image 1 of 2", "image 2 of 2"]
    assert items[0].rgb.shape == (4, 4, 3) and int(items[1].rgb.min()) == 255
    single = as_labeled_images(np.zeros((4, 4, 3), np.uint8))
    assert [item.label for item in single] == ["image 1 of 1"]
    assert len(as_labeled_images(torch.rand(2, 4, 4, 3))) == 2
    with pytest.raises(F2DError, match="empty"):
        as_labeled_images([])


def test_resampler_overshoot_is_clipped_and_far_values_refused() -> None:
    """Core Upscale Image (bicubic) of a hard edge overshoots [0, 1] by up to about 19 %: clipped, as any
    rounding slack; a float image 0.6 past [0, 1] is no resampler's output and is refused."""
    edge = torch.zeros(1, 3, 8, 8)
    edge[..., 4:] = 1.0
    upscaled = torch.nn.functional.interpolate(edge, size=(24, 24), mode="bicubic")[0].permute(1, 2, 0)
    assert float(upscaled.max()) > 1.05 and float(upscaled.min()) < -0.05
    out = to_rgb_uint8(upscaled)
    assert out.min() == 0 and out.max() == 255
    with pytest.raises(F2DError, match="expected \\[0, 1\\]"):
        to_rgb_uint8(np.full((4, 4, 3), 1.6, np.float32))
