"""Face detection on synthetic packs built here: the torch path, and the optional insightface + onnxruntime one."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch

from f2d_core.errors import F2DError, MissingPackageError, ModelPackError, NoFaceError
from f2d_core.faces import face_detection as fd
from tests.support import synthetic_insightface as si
from tests.support.photos import ASTRONAUT, load_rgb

PACK = "buffalo_l_synthetic"
CPU = ["CPUExecutionProvider"]
# Three squares the detector finds (centre x, centre y, side, value): the biggest is the dimmest.
SQUARES = [(160, 160, 128, 180), (480, 160, 64, 255), (160, 480, 32, 220)]


@pytest.fixture(scope="module")
def insightface_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An insightface root: a full pack, a detector-only pack (file not named det_*), and unusable folders."""
    root = tmp_path_factory.mktemp("insightface")
    si.write_synthetic_pack(root, PACK)
    det_only = si.write_synthetic_pack(root, "det_only", files=["det_10g.onnx"])
    (det_only / "det_10g.onnx").rename(det_only / "face.onnx")
    si.write_synthetic_pack(root, "recognition_only", files=["w600k_r50.onnx"])
    (root / "models" / "empty").mkdir()
    (root / "models" / "notes.txt").write_text("not a pack")
    return root


@pytest.fixture(scope="module")
def detector(insightface_root: Path) -> fd.FaceDetector:
    """The synthetic pack's detector with torch on the CPU, at 640 with the 320 retry."""
    return fd.FaceDetector(insightface_root, PACK, device="cpu")


@pytest.fixture(scope="module")
def onnxruntime_detector(insightface_root: Path) -> fd.FaceDetector:
    """The same pack through insightface's FaceAnalysis on onnxruntime's CPU provider."""
    return fd.FaceDetector(insightface_root, PACK, providers=CPU)


@pytest.fixture(scope="module")
def squares() -> np.ndarray:
    """A 640x640 image with the three `SQUARES`."""
    return si.square_image((640, 640), SQUARES)


# --- providers -----------------------------------------------------------------------------------


def test_auto_gives_cpu_on_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    if fd.cuda_unavailable_reason() is None:
        pytest.skip("CUDA works here")
    with caplog.at_level(logging.INFO, logger="f2d_core.faces.face_detection"):
        assert fd.select_providers("auto") == CPU
    assert "['CPUExecutionProvider']" in caplog.text and "CPU" in caplog.text


def test_cuda_request_without_working_cuda_fails_clearly() -> None:
    if fd.cuda_unavailable_reason() is None:
        pytest.skip("CUDA works here")
    with pytest.raises(F2DError, match=r"CUDA was asked for.*'auto' or 'cpu'"):
        fd.select_providers("cuda")


def test_cuda_chosen_first_when_it_works(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fd, "cuda_unavailable_reason", lambda: None)
    assert fd.select_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fd.select_providers(" CUDA ") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    assert fd.select_providers("cpu") == CPU


def test_cpu_only_onnxruntime_is_named_in_the_cuda_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert fd.select_providers("auto") == CPU
    with pytest.raises(F2DError, match=r"no CUDAExecutionProvider.*onnxruntime-gpu"):
        fd.select_providers("cuda")


def test_explicit_provider_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    assert fd.select_providers("CPUExecutionProvider") == CPU
    listed = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: listed)
    assert fd.select_providers("TensorrtExecutionProvider") == ["TensorrtExecutionProvider", "CPUExecutionProvider"]
    with pytest.raises(
        F2DError, match=r"unknown onnxruntime provider 'FooExecutionProvider'.*TensorrtExecutionProvider"
    ):
        fd.select_providers("FooExecutionProvider")


# --- packs ---------------------------------------------------------------------------------------


def test_list_model_packs_finds_detectors_by_structure(insightface_root: Path, tmp_path: Path) -> None:
    assert fd.list_model_packs(insightface_root) == [PACK, "det_only"]
    assert fd.list_model_packs(tmp_path / "nowhere") == []


def test_a_whole_pack_loads_as_users_have_it(
    insightface_root: Path, detector: fd.FaceDetector, onnxruntime_detector: fd.FaceDetector
) -> None:
    names = sorted(p.name for p in (insightface_root / "models" / PACK).glob("*.onnx"))
    assert names == sorted(si.PACK_FILES)
    assert detector.backend == "torch" and detector.model_file.name == "det_10g.onnx"
    assert next(detector._scrfd.net.parameters()).device == torch.device("cpu")
    assert "backend=torch" in repr(detector)
    analysis = onnxruntime_detector._analysis
    assert list(analysis.models) == ["detection"]  # the other members routed and dropped
    # insightface 2.x routes it to SCRFD, 0.7.3 to RetinaFace (the same decoding), as it does det_10g.onnx.
    assert onnxruntime_detector._det_model.taskname == "detection" and onnxruntime_detector._det_model.use_kps
    assert onnxruntime_detector._det_model.session.get_providers() == CPU


def test_missing_pack_names_the_path_and_the_packs_found(insightface_root: Path) -> None:
    with pytest.raises(ModelPackError) as info:
        fd.FaceDetector(insightface_root, "antelopev2")
    message = str(info.value)
    assert str(insightface_root / "models" / "antelopev2") in message
    assert f"{PACK}, det_only" in message
    assert "ComfyUI/models/insightface/models/antelopev2/" in message


def test_pack_without_detector_lists_its_files(insightface_root: Path) -> None:
    with pytest.raises(ModelPackError) as info:
        fd.FaceDetector(insightface_root, "recognition_only")
    message = str(info.value)
    assert "has no face detection model" in message and "w600k_r50.onnx" in message
    assert str(insightface_root / "models" / "recognition_only") in message and PACK in message
    with pytest.raises(ModelPackError, match=r"no \.onnx files"):
        fd.FaceDetector(insightface_root, "empty")


def test_pack_name_must_be_a_folder_name(insightface_root: Path) -> None:
    with pytest.raises(ModelPackError, match="must be a folder name"):
        fd.FaceDetector(insightface_root, f"../models/{PACK}")


@pytest.mark.parametrize("damage", ["truncate", "garbage"])
def test_corrupt_detector_is_named(tmp_path: Path, damage: str) -> None:
    si.write_synthetic_pack(tmp_path, PACK)
    broken = si.write_synthetic_pack(tmp_path, "broken", files=["det_10g.onnx", "w600k_r50.onnx"]) / "det_10g.onnx"
    data = broken.read_bytes()
    broken.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"<html>404 Not Found</html>")
    assert fd.list_model_packs(tmp_path) == [PACK]
    with pytest.raises(ModelPackError) as info:
        fd.FaceDetector(tmp_path, "broken")
    message = str(info.value)
    assert f"cannot read {broken}" in message and "download the pack again" in message and PACK in message


def test_corrupt_member_next_to_a_good_detector(tmp_path: Path) -> None:
    pack_dir = si.write_synthetic_pack(tmp_path, "broken")
    (pack_dir / "w600k_r50.onnx").write_bytes(b"\x00" * 100)
    squares = si.square_image((640, 640), SQUARES)
    assert len(fd.FaceDetector(tmp_path, "broken").detect(squares)) == 3  # torch reads the detector only
    with pytest.raises(ModelPackError) as info:
        fd.FaceDetector(tmp_path, "broken", providers=CPU)  # insightface loads every member
    assert f"cannot load {pack_dir / 'w600k_r50.onnx'}" in str(info.value)


def test_graph_that_torch_cannot_run_is_named(tmp_path: Path) -> None:
    pack_dir = si.write_synthetic_pack(tmp_path, "odd", files=[])
    model = si.build_scrfd_detector()
    model.graph.node[0].op_type = "NoSuchOperator"  # still parses; onnx2torch has no converter for it
    si.onnx.save(model, str(pack_dir / "det_10g.onnx"))
    with pytest.raises(ModelPackError, match=r"det_10g\.onnx cannot be run with torch.*NoSuchOperator"):
        fd.FaceDetector(tmp_path, "odd")


def test_det_size_must_suit_scrfd(insightface_root: Path) -> None:
    with pytest.raises(F2DError, match="det_size 600 must be a multiple of 32"):
        fd.FaceDetector(insightface_root, PACK, det_size=600)


def test_insightface_prints_go_to_the_log(capsys: pytest.CaptureFixture, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, logger="f2d_core.faces.face_detection"), fd._stdout_to_log():
        sys.stdout.write("find model: det_10g.onnx detection\n")
    assert capsys.readouterr().out == ""
    assert "insightface: find model: det_10g.onnx detection" in caplog.text


# --- detection -----------------------------------------------------------------------------------


def test_faces_come_largest_first_with_boxes_and_keypoints(detector: fd.FaceDetector, squares: np.ndarray) -> None:
    faces = detector.detect(squares)
    assert [round(f.area) for f in faces] == [128 * 128, 64 * 64, 32 * 32]
    for face, (cx, cy, side, _value) in zip(faces, SQUARES, strict=True):
        np.testing.assert_allclose(face.bbox, si.expected_box(cx, cy, side), atol=0.5)
        assert face.kps.shape == (5, 2) and face.kps.dtype == np.float32
        np.testing.assert_allclose(face.kps, si.expected_kps(cx, cy, side), atol=0.5)
        assert face.det_size == 640 and 0.5 < face.score < 1.0
    # insightface orders by score: the small bright square outscores the big dim one; size decides here.
    assert faces[1].score > faces[0].score


@pytest.mark.parametrize("backend", ["detector", "onnxruntime_detector"])
def test_the_network_sees_rgb(backend: str, request: pytest.FixtureRequest) -> None:
    detector = request.getfixturevalue(backend)
    red = si.square_image((640, 640), [(160, 160, 128, (255, 0, 0))])
    blue = si.square_image((640, 640), [(160, 160, 128, (0, 0, 255))])
    assert len(detector.detect(red)) == 1
    assert detector.detect(blue) == []


def test_pick_face_by_index(detector: fd.FaceDetector, squares: np.ndarray) -> None:
    faces = detector.detect(squares)
    assert fd.pick_face(faces, "image 1 of 1") is faces[0]
    np.testing.assert_allclose(fd.pick_face(faces, "image 1 of 1", 1).bbox, si.expected_box(480, 160, 64))
    with pytest.raises(NoFaceError, match=r"image 1 of 1: face_index 3 asked for, but 3 face\(s\) found"):
        fd.pick_face(faces, "image 1 of 1", 3)
    with pytest.raises(F2DError, match="negative"):
        fd.pick_face(faces, "image 1 of 1", -1)
    with pytest.raises(NoFaceError, match="image 4 of 5: no face found"):
        fd.pick_face([], "image 4 of 5")


def test_batch_with_a_faceless_image(
    detector: fd.FaceDetector, squares: np.ndarray, caplog: pytest.LogCaptureFixture
) -> None:
    black = np.zeros_like(squares)
    with pytest.raises(NoFaceError, match="image 2 of 3: no face found"):
        fd.detect_faces(detector, [squares, black, squares])
    batch = torch.from_numpy(np.stack([squares, black, squares])).float() / 255.0  # ComfyUI IMAGE
    with caplog.at_level(logging.WARNING, logger="f2d_core.faces.face_detection"):
        picked = fd.detect_faces(detector, batch, face_index=1, on_missing="skip")
    assert picked[1] is None and "image 2 of 3: no face found" in caplog.text
    for face in (picked[0], picked[2]):
        np.testing.assert_allclose(face.bbox, si.expected_box(480, 160, 64), atol=0.5)
    with pytest.raises(F2DError, match="on_missing"):
        fd.detect_faces(detector, batch, on_missing="ignore")


def test_face_too_big_for_640_is_found_on_the_padded_photo(
    insightface_root: Path, detector: fd.FaceDetector, caplog: pytest.LogCaptureFixture
) -> None:
    big = si.square_image((640, 640), [(320, 320, 256, 255)])
    assert detector._detect_at(np.ascontiguousarray(big[:, :, ::-1]), 640) == []  # 256 px > the largest anchor
    with caplog.at_level(logging.DEBUG, logger="f2d_core.faces"):  # per-image lines: DEBUG
        faces = detector.detect(big, "image 1 of 1")
    assert "image 1 of 1: no face on the photo at detection size 640; trying the photo padded by 320 px" in caplog.text
    assert "found on the photo padded by 320 px at detection size 640 (attempt 2 of 4)" in caplog.text
    assert len(faces) == 1 and faces[0].det_size == 640 and "attempt 2 of 4" in faces[0].found_by
    # Found on the padded photo, reported in the photo's pixels.
    np.testing.assert_allclose(faces[0].bbox, si.expected_box(320, 320, 256), atol=1.0)
    np.testing.assert_allclose(faces[0].kps, si.expected_kps(320, 320, 256), atol=1.0)


@pytest.mark.parametrize("providers", [None, CPU], ids=["torch", "onnxruntime"])
def test_fixed_input_detector_runs_at_its_own_size(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, providers: list[str] | None
) -> None:
    pack_dir = si.write_synthetic_pack(tmp_path, "static", files=["w600k_r50.onnx"])
    si.onnx.save(si.build_scrfd_detector(input_size=(640, 640)), str(pack_dir / "det_10g.onnx"))
    with caplog.at_level(logging.INFO, logger="f2d_core.faces.face_detection"):
        static = fd.FaceDetector(tmp_path, "static", providers=providers, det_size=320)
    assert "fixed at 640x640" in caplog.text
    assert (static.det_size, static.retry_det_size) == (640, None)
    faces = static.detect(si.square_image((640, 640), SQUARES))
    assert [round(f.area) for f in faces] == [128 * 128, 64 * 64, 32 * 32]
    assert {f.det_size for f in faces} == {640}
    # No other size is possible, but padding is: the photo is padded and fitted into 640 x 640.
    (padded,) = static.detect(si.square_image((640, 640), [(320, 320, 256, 255)]))
    assert padded.found_by == "found on the photo padded by 320 px at detection size 640 (attempt 2 of 2)"
    assert static.detect(si.square_image((640, 640), [(320, 320, 640, 255)])) == []  # still too big padded


def test_real_photo_runs_through_the_pipeline(detector: fd.FaceDetector) -> None:
    photo = load_rgb(ASTRONAUT)
    faces = detector.detect(photo)
    # The bright-square detector is no face detector: it finds the white highlight on the black
    # helmet (lower right), not her face (upper half); what it finds is well formed.
    height, width = photo.shape[:2]
    assert len(faces) == 1 and faces[0].bbox[0] > width / 2 and faces[0].bbox[1] > height / 2
    assert [f.area for f in faces] == sorted((f.area for f in faces), reverse=True)
    for face in faces:
        x1, y1, x2, y2 = face.bbox
        assert 0 <= x1 < x2 <= width and 0 <= y1 < y2 <= height and face.score >= 0.5
        assert np.all((face.kps >= [x1, y1]) & (face.kps <= [x2, y2]))
    # The same photo as a ComfyUI float batch gives the same answer (conversion is lossless).
    batch = torch.from_numpy(photo)[None].float() / 255.0
    picked = fd.detect_faces(detector, batch, on_missing="skip")
    assert len(picked) == 1 and picked[0] is not None
    np.testing.assert_array_equal(picked[0].bbox, faces[0].bbox)
    np.testing.assert_array_equal(picked[0].kps, faces[0].kps)


# --- a broken optional runtime -------------------------------------------------------------------

BROKEN_PACKAGES = Path(__file__).parent / "support" / "broken_packages"


@pytest.mark.parametrize(
    ("package", "error"), [("onnxruntime", "DLL load failed"), ("insightface", "numpy.core.multiarray failed")]
)
def test_broken_runtime_is_named_and_torch_detection_still_works(
    insightface_root: Path, monkeypatch: pytest.MonkeyPatch, package: str, error: str
) -> None:
    for name in [m for m in sys.modules if m == package or m.startswith(f"{package}.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.syspath_prepend(str(BROKEN_PACKAGES))
    with pytest.raises(MissingPackageError) as info:
        fd.FaceDetector(insightface_root, PACK, providers=CPU)
    message = str(info.value)
    assert f"`import {package}` failed: ImportError: {error}" in message
    assert "Choose detector_device 'auto' or 'cpu'" in message and "pip install" in message
    faces = fd.FaceDetector(insightface_root, PACK).detect(si.square_image((640, 640), SQUARES))
    assert len(faces) == 3


def test_detector_device_choices(insightface_root: Path) -> None:
    auto = fd.load_detector(insightface_root, PACK, "auto", torch.device("cpu"), 640)
    assert (auto.backend, auto.device, auto.det_size) == ("torch", torch.device("cpu"), 640)
    assert fd.load_detector(insightface_root, PACK, "cpu", "meta", 320).device == torch.device("cpu")
    runtime = fd.load_detector(insightface_root, PACK, "onnxruntime", "cpu", 640)
    assert runtime.backend == "onnxruntime" and runtime.providers[-1] == "CPUExecutionProvider"
    with pytest.raises(F2DError, match="detector device 'cuda' is not one of auto, cpu, onnxruntime"):
        fd.load_detector(insightface_root, PACK, "cuda", "cpu", 640)


def test_packs_are_listed_by_file_name_when_onnx_does_not_import(
    insightface_root: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with caplog.at_level(logging.WARNING, logger="f2d_core.faces.face_detection"):
        assert fd.list_model_packs(insightface_root) == [PACK]  # det_only's detector is not named det_*
    assert "cannot import onnx" in caplog.text
    with pytest.raises(MissingPackageError, match=r"needs the Python package 'onnx'.*pip install -r requirements"):
        fd.FaceDetector(insightface_root, PACK)
