"""dlib's real pretrained face detector and ResNet recogniser behind the interfaces the scoring code uses.

TEST-ONLY (`dlib-bin` + `face_recognition_models`; the 68-point landmark model's training data
forbids commercial use). `DlibDetector.detect` gives `DetectedFace`s with the 5 points the official
code derives from 68 landmarks (eye centres 36..41 and 42..47, nose tip 30, mouth corners 48, 54);
`DlibRecognizer` aligns to the ArcFace template at 150 px (dlib's chip size) with the pack's own
`align_faces` and embeds with dlib's ResNet (128-d).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch.nn import functional

from f2d_core.faces.alignment import align_faces
from f2d_core.faces.face_detection import DetectedFace
from f2d_core.images import to_rgb_uint8

CHIP_SIZE = 150


def _model_file(name: str) -> str:
    """A file of the installed `face_recognition_models` (found without importing it: it needs pkg_resources)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("face_recognition_models is not installed")
    return str(Path(spec.submodule_search_locations[0]) / "models" / name)


class DlibDetector:
    """dlib's HOG face detector + 68-point landmarks, largest face first (FaceDetector.detect's contract)."""

    def __init__(self) -> None:
        import dlib

        self._detect = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(_model_file("shape_predictor_68_face_landmarks.dat"))

    def detect(self, image: np.ndarray | torch.Tensor, label: str = "image") -> list[DetectedFace]:
        rgb = to_rgb_uint8(image, label)
        faces = []
        for box in self._detect(rgb, 1):
            points = np.array([(p.x, p.y) for p in self._landmarks(rgb, box).parts()], np.float32)
            kps = np.stack([points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]])
            bbox = (float(box.left()), float(box.top()), float(box.right()), float(box.bottom()))
            faces.append(DetectedFace(bbox=bbox, kps=kps.astype(np.float32), score=1.0, det_size=0))
        faces.sort(key=lambda face: -face.area)
        return faces


class DlibRecognizer:
    """dlib's ResNet face recogniser on ArcFace-template crops (FaceRecognizer's interface)."""

    input_size = CHIP_SIZE
    embedding_dim = 128

    def __init__(self) -> None:
        import dlib

        self._net = dlib.face_recognition_model_v1(_model_file("dlib_face_recognition_resnet_model_v1.dat"))

    def align(self, images: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        return align_faces(images.float(), landmarks, CHIP_SIZE)

    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        chips = [(c.permute(1, 2, 0).clamp(0, 1) * 255).round().byte().numpy().copy() for c in crops]
        vectors = torch.tensor(np.array([np.array(self._net.compute_face_descriptor(chip)) for chip in chips]))
        return functional.normalize(vectors.float().reshape(-1, self.embedding_dim), dim=-1)
