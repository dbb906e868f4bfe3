"""The detection cascade on the synthetic SCRFD: photos a single detection size misses, and what it costs.

Each photo of tests/support/hard_photos.py is first shown to be missed at 640 and 320 (the two sizes
tried before the cascade), then found by the cascade.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from f2d_core.errors import ModelPackError
from f2d_core.faces import detection_cascade as dc
from f2d_core.faces import face_detection as fd
from tests.support import synthetic_insightface as si
from tests.support.hard_photos import HARD_PHOTOS, hard_photo
from tests.support.photos import ASTRONAUT, load_rgb

CPU = ["CPUExecutionProvider"]
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def detector(tmp_path_factory: pytest.TempPathFactory) -> fd.FaceDetector:
    root = tmp_path_factory.mktemp("insightface")
    si.write_synthetic_pack(root, "pack", files=["det_10g.onnx"])
    return fd.FaceDetector(root, "pack", providers=CPU)


class CountingDetectAt:
    """The detector's own detect-at-a-size, recording the sizes and image shapes it was called with."""

    def __init__(self, detector: fd.FaceDetector) -> None:
        self.detector = detector
        self.calls: list[tuple[tuple[int, ...], int]] = []

    def __call__(self, bgr: np.ndarray, size: int) -> list[fd.DetectedFace]:
        self.calls.append((bgr.shape, size))
        return self.detector._detect_at(bgr, size)


def test_plan_for_a_small_photo_a_big_photo_and_a_fixed_size_detector() -> None:
    assert dc.plan_attempts(480, 640, 640, (320,)) == [
        dc.Attempt(640),
        dc.Attempt(640, 320),
        dc.Attempt(320),
        dc.Attempt(320, 320),
    ]
    big = dc.plan_attempts(4000, 6000, 640, (320,))
    assert [(a.det_size, a.padding) for a in big] == [
        (640, 0),
        (640, 3000),
        (1280, 0),
        (1920, 0),
        (320, 0),
        (320, 3000),
    ]
    assert [a.det_size for a in dc.plan_attempts(1500, 1400, 640, (320,))] == [640, 640, 1280, 1504, 320, 320]
    assert dc.plan_attempts(4000, 6000, 640, (320,), resizable=False) == [dc.Attempt(640), dc.Attempt(640, 3000)]
    assert all(a.det_size % 32 == 0 for a in big + dc.plan_attempts(1500, 1400, 640, (320,)))


def test_a_face_found_at_once_costs_one_detection(detector: fd.FaceDetector) -> None:
    """The cascade adds nothing to a photo whose face the first detection finds: one call, on the photo itself."""
    photo = si.face_photo(load_rgb(ASTRONAUT))  # a 128 px face in a 640 x 640 photo
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    counting = CountingDetectAt(detector)
    result = dc.detect_with_cascade(counting, bgr, dc.plan_attempts(640, 640, 640, (320,)))
    assert counting.calls == [((640, 640, 3), 640)]
    assert result.describe() == "found at once (the photo at detection size 640)"
    direct = detector._detect_at(bgr, 640)
    assert [f.bbox for f in result.faces] == [f.bbox for f in direct]
    (face,) = detector.detect(photo)
    assert face.found_by == "found at once (the photo at detection size 640)"


@pytest.mark.parametrize("name", list(HARD_PHOTOS))
def test_photo_missed_at_one_size_is_found_by_the_cascade(
    detector: fd.FaceDetector, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    photo = hard_photo(name)
    size, (cx, cy), side, attempt = HARD_PHOTOS[name]
    bgr = np.ascontiguousarray(photo[:, :, ::-1])
    assert detector._detect_at(bgr, 640) == [] and detector._detect_at(bgr, 320) == []  # missed before
    with caplog.at_level(logging.INFO, logger="f2d_core.faces"):
        assert len(detector.detect(photo, "image 1 of 1")) == 1
    assert caplog.records == [], "per-image detection lines at INFO break the progress bars around them"
    with caplog.at_level(logging.DEBUG, logger="f2d_core.faces"):
        faces = detector.detect(photo, "image 1 of 1")
    assert len(faces) == 1, caplog.text
    (face,) = faces
    assert face.found_by.startswith(f"found on {attempt} (attempt ")
    assert f"image 1 of 1: 1 face(s), {face.found_by}" in caplog.text
    assert "image 1 of 1: no face on the photo at detection size 640; trying" in caplog.text
    # In the photo's pixels: the box covers the visible face's centre and its keypoints lie in the box.
    height, width = size
    visible = (max(cx - side / 2, 0), max(cy - side / 2, 0), min(cx + side / 2, width), min(cy + side / 2, height))
    x1, y1, x2, y2 = face.bbox
    centre = ((visible[0] + visible[2]) / 2, (visible[1] + visible[3]) / 2)
    assert x1 < centre[0] < x2 and y1 < centre[1] < y2
    assert 0.5 * side < x2 - x1 < 1.5 * side
    assert np.all((face.kps >= [x1, y1]) & (face.kps <= [x2, y2]))


def test_a_photo_without_a_face_tries_every_attempt(detector: fd.FaceDetector) -> None:
    black = np.zeros((4000, 6000, 3), np.uint8)
    counting = CountingDetectAt(detector)
    attempts = dc.plan_attempts(4000, 6000, 640, (320,))
    result = dc.detect_with_cascade(counting, black, attempts)
    assert result.faces == [] and result.attempt is None and result.describe() == "no face in 6 attempt(s)"
    assert [size for _, size in counting.calls] == [a.det_size for a in attempts]
    # Padded by 3000 px on each side, shrunk to fit 640 before padding (never 10000 x 12000 at full size).
    assert counting.calls[1][0] == (533, 640, 3)


# --- a pack unzipped one folder too deep --------------------------------------------------------


def test_pack_unzipped_inside_its_own_folder_is_used(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """insightface's antelopev2.zip unpacks into antelopev2/: unzipped in models/antelopev2/ it is one level down."""
    si.write_synthetic_pack(tmp_path / "models" / "antelopev2", "antelopev2")  # models/antelopev2/models/antelopev2
    inner = tmp_path / "models" / "antelopev2" / "antelopev2"
    (tmp_path / "models" / "antelopev2" / "models" / "antelopev2").rename(inner)
    (tmp_path / "models" / "antelopev2" / "models").rmdir()
    assert fd.list_model_packs(tmp_path) == ["antelopev2"]
    with caplog.at_level(logging.INFO, logger="f2d_core.faces.face_detection"):
        detector = fd.FaceDetector(tmp_path, "antelopev2", providers=CPU)
    assert f"its .onnx files are one folder down, in {inner}" in caplog.text
    assert Path(detector._det_model.model_file).parent == inner
    assert len(detector.detect(si.face_photo(load_rgb(ASTRONAUT)))) == 1


def test_pack_files_two_folders_down_are_pointed_at(tmp_path: Path) -> None:
    deep = tmp_path / "models" / "antelopev2" / "antelopev2" / "antelopev2"
    deep.mkdir(parents=True)
    si.onnx.save(si.build_scrfd_detector(), str(deep / "scrfd_10g_bnkps.onnx"))
    assert fd.list_model_packs(tmp_path) == []
    with pytest.raises(ModelPackError) as error:
        fd.FaceDetector(tmp_path, "antelopev2", providers=CPU)
    assert f"holds no .onnx files itself; they are in {deep}" in str(error.value)
    assert f"Move the .onnx files up into {tmp_path / 'models' / 'antelopev2'}/" in str(error.value)


def test_every_attempt_runs_without_opencv(tmp_path: Path) -> None:
    """The pack installs no OpenCV: with `import cv2` failing, the padded and resized attempts still run."""
    script = f"""
import sys
import numpy as np
from f2d_core.faces import face_detection as fd
from tests.support import synthetic_insightface as si
from tests.support.hard_photos import hard_photo

si.write_synthetic_pack({str(tmp_path)!r}, "pack", files=["det_10g.onnx"])
headshot, grey = hard_photo("face_fills_the_photo"), np.full((2000, 3000, 3), 128, np.uint8)
sys.modules["cv2"] = None  # from here on `import cv2` raises ImportError, as in a venv without OpenCV
detector = fd.FaceDetector({str(tmp_path)!r}, "pack")
(face,) = detector.detect(headshot, "headshot")
assert "padded" in face.found_by, face.found_by
assert detector.detect(grey, "grey") == []
print("found by:", face.found_by)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "found by: found on the photo padded" in done.stdout
