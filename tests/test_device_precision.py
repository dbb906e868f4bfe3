"""Apple Silicon and half precision: no float64 on the model's device, a float32 warp, a finite S*.

MPS has no float64, and no MPS machine is at hand. The check here runs the encode path with the
models on PyTorch's "meta" device (a real non-CPU device that computes shapes and dtypes only) under a
`TorchDispatchMode` that records every float64 tensor any aten op receives or returns, with its
device. What it proves: no op of the alignment, MSID, the mapper or the expression regressor creates
or consumes a float64 tensor anywhere but the CPU, so none would ask MPS for one. What it does not
prove: that every other op the path uses has an MPS kernel.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from f2d_core.checkpoints import load_f2d_models
from f2d_core.errors import F2DError
from f2d_core.faces.alignment import align_faces, similarity_transform
from f2d_core.faces.expression_model import ExpressionRegressor, expression_codes
from f2d_core.identity.face_encoder import FaceEncoder, check_finite_s_star
from tests.support.photos import load_rgb


class Float64Watch(TorchDispatchMode):
    """Records (op, device) of every float64 tensor an aten op receives or returns."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in tree_flatten((args, kwargs, out))[0]:
            if isinstance(value, torch.Tensor) and value.dtype == torch.float64:
                self.seen.append((str(func), value.device.type))
        return out

    def off_cpu(self) -> list[tuple[str, str]]:
        return [(op, device) for op, device in self.seen if device != "cpu"]


class DeviceMoveWatch(TorchDispatchMode):
    """Records (shape, from device, to device) of every tensor an aten op copies to another device."""

    def __init__(self) -> None:
        super().__init__()
        self.moves: list[tuple[tuple[int, ...], str, str]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        source = args[0] if args and isinstance(args[0], torch.Tensor) else None
        if source is not None and isinstance(out, torch.Tensor) and out.device != source.device:
            self.moves.append((tuple(source.shape), source.device.type, out.device.type))
        return out


def _photos(expected, count: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Real photos [N, 3, 512, 512] in [0, 1] cropped around their face, and their landmarks [N, 5, 2]."""
    images, landmarks = [], []
    for k in range(count):
        image = load_rgb(str(expected["sources"][k]))
        lm = expected["lm5"][k].copy()
        x0 = int(np.clip(lm[:, 0].mean() - 256, 0, image.shape[1] - 512))
        y0 = int(np.clip(lm[:, 1].mean() - 256, 0, image.shape[0] - 512))
        images.append(torch.from_numpy(np.ascontiguousarray(image[y0 : y0 + 512, x0 : x0 + 512])))
        landmarks.append(torch.from_numpy(lm - np.array([x0, y0], np.float32)))
    return torch.stack(images).permute(0, 3, 1, 2).float().div(255), torch.stack(landmarks)


def test_encode_path_asks_the_model_device_for_no_float64(official_checkpoints, expected):
    encoder = FaceEncoder(load_f2d_models(*official_checkpoints), "meta", torch.float16)
    with torch.device("meta"):
        regressor = ExpressionRegressor().eval()
    images, landmarks = _photos(expected)
    with Float64Watch() as watch:
        crops = encoder.crops(images, landmarks.numpy())
        singles = encoder.crops(list(images), landmarks.numpy())
        idvecs = encoder.identity(crops)
        pooled = encoder.identity(crops, "normalized_mean")
        s_star = encoder.mapper(idvecs.to(encoder.dtype), None, 1.0)
        codes = expression_codes(regressor, [img.permute(1, 2, 0).mul(255).byte().numpy() for img in images], landmarks)
    assert crops.device.type == "cpu" and crops.dtype == torch.float32 and singles.shape == crops.shape
    assert idvecs.shape == (3, 1536) and pooled.shape == (1536,) and s_star.shape == (3, 2, 768)
    assert codes.device.type == "meta" and codes.shape == (3, 64)
    assert watch.off_cpu() == []
    # The watch does see float64: the landmark fit's SVD, on the CPU.
    assert any("linalg_svd" in op and device == "cpu" for op, device in watch.seen)


def test_encode_moves_the_crops_to_the_device_never_the_full_photos(official_checkpoints, expected):
    """Encode Face's path (crops, then MSID) sends [N, 3, 112, 112] crops to the model's device; the
    photos stay where they are (issue 13, point 6)."""
    encoder = FaceEncoder(load_f2d_models(*official_checkpoints), "meta", torch.float16)
    images, landmarks = _photos(expected)
    with DeviceMoveWatch() as watch:
        encoder.identity(encoder.crops(images, landmarks.numpy()), "normalized_mean")
        encoder.identity(encoder.crops(list(images), landmarks.numpy()), "normalized_mean")
    to_meta = [shape for shape, source, target in watch.moves if target == "meta"]
    assert to_meta and all(shape[-2:] == (112, 112) for shape in to_meta if len(shape) == 4), watch.moves
    assert max(np.prod(shape) for shape in to_meta) == 3 * 3 * 112 * 112


def test_similarity_fit_is_float32_on_the_cpu_whatever_the_input():
    landmarks = torch.tensor([[[30.0, 50.0], [80.0, 50.0], [55.0, 75.0], [35.0, 95.0], [75.0, 95.0]]])
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        matrix = similarity_transform(landmarks.to(dtype), landmarks[0])
        assert matrix.device.type == "cpu" and matrix.dtype == torch.float32
        torch.testing.assert_close(matrix[0], torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]), atol=2e-2, rtol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_photos_are_warped_in_float32(expected, dtype):
    """A 2048 px photo in bf16/fp16 gives exactly the float32 crop of the same pixel values.

    A half-precision sampling grid cannot even hold the pixel coordinates of such a photo (bf16 has
    8 bits: coordinates near 2000 land on multiples of 8), so a warp in that dtype misses by pixels.
    """
    images, landmarks = _photos(expected, 2)
    big = torch.nn.functional.interpolate(images, scale_factor=4, mode="bilinear").to(dtype)
    crops = align_faces(big, landmarks * 4)
    assert crops.dtype == torch.float32
    torch.testing.assert_close(crops, align_faces(big.float(), landmarks * 4), atol=0, rtol=0)


def test_half_precision_encoder_warps_in_float32_and_runs_msid_in_its_dtype(official_checkpoints, expected):
    fp32 = FaceEncoder(load_f2d_models(*official_checkpoints))
    bf16 = FaceEncoder(load_f2d_models(*official_checkpoints), "cpu", torch.bfloat16)
    images, landmarks = _photos(expected, 2)
    crops = bf16.crops(images, landmarks.numpy())
    torch.testing.assert_close(crops, fp32.crops(images, landmarks.numpy()), atol=0, rtol=0)
    assert next(bf16.msid.parameters()).dtype == torch.bfloat16
    s_star = bf16.s_star(bf16.identity(crops, "normalized_mean"))
    assert s_star.dtype == torch.float32 and torch.isfinite(s_star).all()


def test_non_finite_s_star_is_a_clear_error(official_checkpoints):
    """fp16 overflow in the mapper (weights scaled past fp16's 65504) gives an error that says what to do."""
    encoder = FaceEncoder(load_f2d_models(*official_checkpoints), "cpu", torch.float16)
    with torch.no_grad():
        for parameter in encoder.mapper.parameters():
            parameter.mul_(1e4)
    with pytest.raises(F2DError, match=r"S\* \(mapped in float16\) is not finite .* choose precision fp32"):
        encoder.s_star(torch.ones(1536))
    with pytest.raises(F2DError, match="not finite"):
        check_finite_s_star(torch.tensor([[0.0, float("nan")]]))


@pytest.mark.parametrize("pooling", [None, "normalized_mean", "mean"])
def test_fp16_overflow_in_the_identity_embedding_is_a_clear_error(official_checkpoints, expected, pooling):
    """fp16 overflow inside the MSID encoder (its patch embedding scaled past fp16's 65504, as an extreme
    activation does) is named with the precision to choose, instead of a NaN identity that Face Similarity
    would score 0 and S* would carry into the prompt."""
    encoder = FaceEncoder(load_f2d_models(*official_checkpoints), "cpu", torch.float16)
    images, landmarks = _photos(expected, 2)
    crops = encoder.crops(images, landmarks.numpy())
    with torch.no_grad():
        for parameter in encoder.msid.parameters():
            parameter.mul_(1e3)
    with pytest.raises(F2DError, match=r"identity vector computed in float16 is not finite .* choose precision fp32"):
        encoder.identity(crops, pooling)
