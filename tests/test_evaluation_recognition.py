"""The ArcFace ONNX recogniser through torch: insightface's exact input normalisation, and clear refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from f2d_core.errors import WeightFileError
from f2d_core.evaluation.recognition import FaceRecognizer, load_face_recognizer
from tests.support import synthetic_insightface as si
from tests.support.photos import ALIGNED_CROP, load_rgb
from tests.support.synthetic_arcface import write_arcface_recognizer


@pytest.fixture(scope="module")
def arcface_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_arcface_recognizer(tmp_path_factory.mktemp("arcface") / "w600k_r50.onnx")


def test_torch_embedding_equals_insightface_on_onnxruntime(arcface_file: Path) -> None:
    """insightface's own ArcFaceONNX (onnxruntime, its normalisation) on a real aligned crop = ours, unit-normed."""
    from insightface.model_zoo.arcface_onnx import ArcFaceONNX

    crop = load_rgb(ALIGNED_CROP)  # 112x112 RGB, ArcFace-aligned
    reference = ArcFaceONNX(model_file=str(arcface_file))
    theirs = reference.get_feat(np.ascontiguousarray(crop[:, :, ::-1]))[0]  # insightface takes BGR
    ours = FaceRecognizer(arcface_file).embed(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 255)
    assert reference.input_mean == 127.5 and reference.input_std == 127.5
    np.testing.assert_allclose(ours[0].numpy(), theirs / np.linalg.norm(theirs), atol=1e-5)


def test_batches_embed_like_single_images(arcface_file: Path) -> None:
    recognizer = load_face_recognizer(arcface_file)
    crops = torch.rand(3, 3, 112, 112, generator=torch.Generator().manual_seed(0))
    batched = recognizer.embed(crops)
    single = torch.cat([recognizer.embed(c[None]) for c in crops])
    assert batched.shape == (3, 512) and torch.allclose(batched, single, atol=1e-5)
    assert torch.allclose(batched.norm(dim=1), torch.ones(3), atol=1e-5)


def test_mxnet_export_with_sub_and_mul_gets_raw_pixels(tmp_path: Path) -> None:
    """insightface's rule: Sub and Mul among the first 8 nodes mean the graph normalises itself."""
    model = onnx.load(str(write_arcface_recognizer(tmp_path / "plain.onnx")))
    model.graph.node[0].name, model.graph.node[1].name = "Sub_0", "Mul_1"
    onnx.save(model, str(tmp_path / "mxnet.onnx"))
    recognizer = FaceRecognizer(tmp_path / "mxnet.onnx")
    assert (recognizer.input_mean, recognizer.input_std) == (0.0, 1.0)


def test_a_detector_is_not_a_recogniser(tmp_path: Path) -> None:
    path = tmp_path / "det_10g.onnx"
    onnx.save(si.build_scrfd_detector(), str(path))
    with pytest.raises(WeightFileError, match=r"det_10g.onnx is not a face recogniser: it has 1 input\(s\) and 9 out"):
        FaceRecognizer(path)


def test_a_narrow_output_is_not_an_embedding(tmp_path: Path) -> None:
    path = tmp_path / "genderage.onnx"
    onnx.save(si.build_genderage_model(), str(path))  # [1, 3, 96, 96] -> [1, 3]
    with pytest.raises(WeightFileError, match=r"genderage.onnx is not a face recogniser: .* shape \[2, 3\]"):
        FaceRecognizer(path)


def test_a_file_that_is_not_onnx_is_named(tmp_path: Path) -> None:
    path = tmp_path / "w600k_r50.onnx"
    path.write_bytes(b"<html>404 Not Found</html>")
    with pytest.raises(WeightFileError, match=r"w600k_r50.onnx cannot be read as an ONNX model"):
        FaceRecognizer(path)
    with pytest.raises(WeightFileError, match=r"does not exist"):
        load_face_recognizer(tmp_path / "missing.onnx")
