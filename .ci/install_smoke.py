"""CI: in a venv made by .ci/install_check.sh, import the pack's core and find faces with the torch detector.

Run from the repository root. Prints which device detection ran on and, when onnxruntime is installed,
that it was left importable.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))

from f2d_core.faces.face_detection import FaceDetector
from tests.support import synthetic_insightface as si

device = "cuda" if torch.cuda.is_available() else "cpu"
root = Path(tempfile.mkdtemp())
si.write_synthetic_pack(root, "buffalo_l")
detector = FaceDetector(root, "buffalo_l", device=device)
faces = detector.detect(si.square_image((640, 640), [(160, 160, 128, 255), (480, 480, 64, 255)]))
assert [round(f.area) for f in faces] == [128 * 128, 64 * 64], faces
print(f"detection works: {len(faces)} faces, torch on {device}")
if importlib.util.find_spec("onnxruntime") is not None:
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__} still imports: {onnxruntime.get_available_providers()}")
