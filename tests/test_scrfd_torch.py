"""The torch SCRFD path against insightface + onnxruntime: same boxes, keypoints and aligned crops.

insightface (its real `SCRFD` and `FaceAnalysis`) and onnxruntime are test dependencies only: here they
are the reference. Each detector structure the packs ship (see `synthetic_insightface.DETECTOR_VARIANTS`)
is built with box and keypoint regressions that follow the image, so that decoding is exercised.

Bounds: where the image is not scaled (it fills the detection size) both paths see the same pixels
and agree to float rounding (measured: identical); where it is scaled, torch's resize differs from
cv2's fixed-point one by at most one uint8 level on up to 13% of the pixels, which on these images
moved keypoints by at most 3.1e-5 px (boxes: identical) and the aligned 112x112 crops by at most
6.1e-5 (in [0, 1] units). The asserted bounds: 1e-3 px unscaled, 0.01 px scaled, crops 1e-3.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from f2d_core.faces import face_detection as fd
from f2d_core.faces import scrfd
from f2d_core.faces.alignment import align_faces
from tests.support import synthetic_insightface as si
from tests.support.photos import ASTRONAUT, GROUP, load_rgb

CPU = ["CPUExecutionProvider"]
REGRESSION_GAIN = 0.3
UNSCALED_ATOL = 1e-3  # px
SCALED_ATOL = 0.01  # px
CROP_ATOL = 1e-3  # [0, 1] units


def _images() -> dict[str, tuple[np.ndarray, bool]]:
    """name -> (RGB uint8 image, whether it is scaled to fit 640)."""
    squares = [(160, 160, 128, 180), (480, 160, 64, 255), (160, 480, 32, 220)]
    return {
        "squares_640": (si.square_image((640, 640), squares), False),
        "portrait": (si.square_image((800, 480), [(120, 200, 96, 255), (300, 600, 40, 200)]), True),
        "landscape": (si.square_image((700, 1000), [(250, 300, 150, 230), (700, 400, 60, 255)]), True),
        "textured": (si.face_photo(load_rgb(ASTRONAUT), size=(600, 900), centre=(400, 300), side=140), True),
        "astronaut": (load_rgb(ASTRONAUT), True),
        "group_photo": (load_rgb(GROUP), True),
    }  # fmt: skip


@pytest.fixture(scope="module", params=list(si.DETECTOR_VARIANTS))
def pack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A pack whose detector has one of the shipped structures, named as in buffalo_l."""
    root = tmp_path_factory.mktemp(request.param)
    pack_dir = si.write_synthetic_pack(root, request.param, files=["w600k_r50.onnx"])
    model = si.DETECTOR_VARIANTS[request.param](regression_gain=REGRESSION_GAIN)
    si.onnx.save(model, str(pack_dir / "det_10g.onnx"))
    return root, request.param


@pytest.fixture(scope="module")
def detectors(pack: tuple[Path, str]) -> tuple[fd.FaceDetector, fd.FaceDetector]:
    """(torch path, insightface + onnxruntime path) on the same pack."""
    root, name = pack
    return fd.FaceDetector(root, name, device="cpu"), fd.FaceDetector(root, name, providers=CPU)


def test_structure_is_read_as_insightface_reads_it(detectors) -> None:
    torch_path, reference = detectors
    layout, det_model = torch_path._scrfd.layout, reference._det_model
    assert list(layout.strides) == list(det_model._feat_stride_fpn)
    assert layout.num_anchors == det_model._num_anchors and layout.use_kps == det_model.use_kps
    assert layout.batched == det_model.batched
    assert layout.fixed_size == det_model.static_input_size
    assert (torch_path.det_size, torch_path.retry_det_size) == (reference.det_size, reference.retry_det_size)


def test_graph_outputs_equal_onnxruntime(detectors) -> None:
    torch_path, reference = detectors
    blob = np.random.default_rng(0).uniform(-1, 1, (1, 3, 640, 640)).astype(np.float32)
    session = reference._det_model.session
    expected = session.run(None, {session.get_inputs()[0].name: blob})
    with torch.inference_mode():
        got = torch_path._scrfd.net(torch.from_numpy(blob))
    assert len(got) == len(expected)
    for g, e in zip(got, expected, strict=True):
        assert tuple(g.shape) == e.shape
        np.testing.assert_allclose(g.numpy(), e, atol=1e-5)


@pytest.mark.parametrize("image_name", list(_images()))
def test_faces_equal_insightface(detectors, image_name: str) -> None:
    torch_path, reference = detectors
    image, scaled = _images()[image_name]
    got, expected = torch_path.detect(image), reference.detect(image)
    assert len(got) == len(expected)
    if image_name.startswith(("squares", "portrait", "landscape", "textured")):
        assert got, "the synthetic detector finds these squares"
    atol = SCALED_ATOL if scaled else UNSCALED_ATOL
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.bbox, e.bbox, atol=atol)
        np.testing.assert_allclose(g.kps, e.kps, atol=atol)
        assert abs(g.score - e.score) < 1e-3 and g.det_size == e.det_size
    if got:
        rgb = torch.from_numpy(image).permute(2, 0, 1)[None].float().div(255).expand(len(got), -1, -1, -1)
        crops = align_faces(rgb, torch.from_numpy(np.stack([f.kps for f in got])))
        reference_crops = align_faces(rgb, torch.from_numpy(np.stack([f.kps for f in expected])))
        assert (crops - reference_crops).abs().max() <= CROP_ATOL


def test_retry_size_and_boxes_beyond_the_image_match(detectors) -> None:
    torch_path, reference = detectors
    big = si.square_image((640, 640), [(320, 320, 256, 255), (600, 40, 64, 255)])  # the second one at the edge
    got, expected = torch_path.detect(big), reference.detect(big)
    assert [f.det_size for f in got] == [f.det_size for f in expected]
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g.bbox, e.bbox, atol=SCALED_ATOL)


def test_letterbox_is_cv2_resize_within_one_level() -> None:
    image = load_rgb(GROUP)  # 1280x886 -> 640x443
    blob, det_scale = scrfd.letterbox(torch.from_numpy(image), (640, 640))
    pixels = blob[0].permute(1, 2, 0).numpy() * scrfd.INPUT_STD + scrfd.INPUT_MEAN
    new_h = int(640 * image.shape[0] / image.shape[1])
    expected = cv2.resize(image, (640, new_h)).astype(np.float32)
    assert det_scale == new_h / image.shape[0]
    assert np.abs(pixels[:new_h] - expected).max() <= 1.0 + 1e-4
    np.testing.assert_allclose(pixels[new_h:], 0.0, atol=1e-4)  # the black canvas below


def test_nms_keeps_what_insightface_keeps() -> None:
    from insightface.model_zoo.scrfd import SCRFD

    rng = np.random.default_rng(1)
    xy = rng.uniform(0, 200, (300, 2)).astype(np.float32)
    wh = rng.uniform(5, 60, (300, 2)).astype(np.float32)
    scores = rng.choice(np.linspace(0.5, 1, 40), 300).astype(np.float32)  # ties, as real scores have
    dets = np.concatenate([xy, xy + wh, scores[:, None]], axis=1)
    reference = SCRFD.__new__(SCRFD)
    reference.nms_thresh = scrfd.NMS_THRESHOLD
    assert scrfd.nms(torch.from_numpy(dets)).tolist() == list(reference.nms(dets))


def _laid_out(net: torch.nn.Module, layout: torch.memory_format) -> bool:
    """Whether every convolution weight of `net` is in `layout`."""
    return all(p.is_contiguous(memory_format=layout) for p in net.parameters() if p.ndim == 4)


def test_weights_take_the_layout_of_the_device_they_compute_on() -> None:
    """Weights laid out channels-last on the offload device (the CPU) are re-laid contiguous for MPS or
    CUDA, and channels-last again when they compute on the CPU (issue 13, point 10c). 3x3 kernels, as
    the real detectors have, tell the two layouts apart."""
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Conv2d(8, 4, 3))
    assert scrfd.match_layout(net, torch.device("cpu")) == torch.channels_last
    assert _laid_out(net, torch.channels_last) and not _laid_out(net, torch.contiguous_format)
    parameters = list(net.parameters())
    for device in ("mps", "cuda"):  # where ComfyUI moves the weights (the decision is per device type)
        net.to(memory_format=torch.channels_last)
        assert scrfd.match_layout(net, torch.device(device)) == torch.contiguous_format
        assert _laid_out(net, torch.contiguous_format) and not _laid_out(net, torch.channels_last)
    assert scrfd.match_layout(net, torch.device("cpu")) == torch.channels_last
    assert _laid_out(net, torch.channels_last)
    assert list(net.parameters()) == parameters  # the same Parameters, as ComfyUI's ModelPatcher holds them
