"""What the detection cascade costs: on a photo whose face is found at once, and in the worst case.

    python bench/detection_cascade.py                                   # synthetic pack (see below)
    python bench/detection_cascade.py --insightface-root ~/ComfyUI/models/insightface --pack antelopev2

Side by side, interleaved, in one process: `FaceDetector.detect` (the cascade) against the straightforward
way, `detect` as it was before the cascade without its retry: the photo converted to BGR uint8, one
detection at the detection size (`_detect_at(bgr, 640)`), faces sorted largest first.

- found at once: a 640 x 640 photo with a 128 px face (cost added by the cascade: none expected);
- worst case: photos without a face, where every attempt runs (a 640 x 480 photo: 4 attempts; a
  6000 x 4000 camera photo: 6, including detection at 1280 and 1920);
- the hard photos of tests/support/hard_photos.py, and which attempt found each.

"detector pixels" is the attempts' summed input area over one 640 x 640 detection: what an SCRFD's
convolutions cost in proportion. Without --insightface-root the synthetic pack's detector is a few
convolutions, far cheaper per pixel than SCRFD-10G, so its times are dominated by resizing and
normalizing the photo: read its ratios as a lower bound and the detector-pixel ratio as the SCRFD one.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from f2d_core.faces.detection_cascade import plan_attempts
from f2d_core.faces.face_detection import FaceDetector
from f2d_core.images import to_rgb_uint8
from tests.support import synthetic_insightface as si
from tests.support.hard_photos import HARD_PHOTOS, hard_photo
from tests.support.photos import ASTRONAUT, load_rgb


def paired(cascade: Callable[[], object], single: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median seconds of each function, run alternately (so load on the machine hits both alike)."""
    cascade(), single()  # warm-up
    samples: dict[int, list[float]] = {0: [], 1: []}
    for r in range(rounds):
        for which in (0, 1) if r % 2 == 0 else (1, 0):
            start = time.perf_counter()
            (cascade if which == 0 else single)()
            samples[which].append(time.perf_counter() - start)
    return statistics.median(samples[0]), statistics.median(samples[1])


def single_size_detect(detector: FaceDetector, rgb: np.ndarray) -> list:
    """One detection at the detector's size: what `detect` did before the cascade (without the 320 retry)."""
    bgr = np.ascontiguousarray(to_rgb_uint8(rgb, "image")[:, :, ::-1])
    faces = detector._detect_at(bgr, detector.det_size)
    faces.sort(key=lambda face: (-face.area, -face.score))
    return faces


def detector_pixels(height: int, width: int, det_size: int, retry: int | None) -> float:
    """The attempts' summed detector input area, in 640 x 640 detections (SCRFD's cost is per pixel)."""
    attempts = plan_attempts(height, width, det_size, () if retry is None else (retry,))
    return sum(a.det_size**2 for a in attempts) / det_size**2


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--insightface-root", type=Path, help="a folder holding models/<pack>/ (real SCRFD)")
    parser.add_argument("--pack", default="antelopev2")
    parser.add_argument("--provider", default="cpu", help="cpu, cuda or auto")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    from f2d_core.faces.face_detection import select_providers

    if args.insightface_root is None:
        root, pack = Path(tempfile.mkdtemp(prefix="f2d_bench_")), "synthetic"
        si.write_synthetic_pack(root, pack, files=["det_10g.onnx"])
    else:
        root, pack = args.insightface_root, args.pack
    detector = FaceDetector(root, pack, providers=select_providers(args.provider))
    det_size, retry = detector.det_size, detector.retry_det_size

    photos = {
        "found at once (640x640, 128 px face)": si.face_photo(load_rgb(ASTRONAUT)),
        "worst case: no face, 640x480": np.zeros((480, 640, 3), np.uint8),
        "worst case: no face, 6000x4000": np.zeros((4000, 6000, 3), np.uint8),
        **{f"hard: {name}": hard_photo(name) for name in HARD_PHOTOS},
    }
    rows = []
    for name, rgb in photos.items():
        faces = detector.detect(rgb)
        cascade_s, single_s = paired(
            lambda rgb=rgb: detector.detect(rgb), lambda rgb=rgb: single_size_detect(detector, rgb), args.rounds
        )
        rows.append(
            {
                "photo": name,
                "found_by": faces[0].found_by if faces else "no face",
                "cascade_ms": round(cascade_s * 1e3, 2),
                "single_detection_ms": round(single_s * 1e3, 2),
                "ratio": round(cascade_s / single_s, 3),
                "detector_pixels": round(detector_pixels(*rgb.shape[:2], det_size, retry), 3),
            }
        )
    print(json.dumps({"pack": pack, "det_size": det_size, "retry": retry, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
