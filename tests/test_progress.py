"""The f2d_core loops over a batch report progress after each image (or chunk) and stop when the callback
raises: what ComfyUI's Cancel button relies on (nodes/progress.py passes a callback that raises
ComfyUI's interrupt). Real loops on the synthetic models: a detector pack, an ArcFace-structured
recogniser, Deep3DFaceRecon's published format and a tiny transformers CLIP."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from f2d_core import progress
from f2d_core.evaluation.clip_models import load_clip_scorer
from f2d_core.evaluation.clip_score import clip_scores
from f2d_core.evaluation.face_similarity import identity_scores, person_embedding
from f2d_core.evaluation.recognition import load_face_recognizer
from f2d_core.faces.expression_model import expression_codes, load_expression_model
from f2d_core.faces.face_detection import FaceDetector, detect_faces
from tests.support import synthetic_arcface, synthetic_deep3d, tiny_clip
from tests.support import synthetic_insightface as si
from tests.support.photos import ASTRONAUT, load_rgb

PACK = "buffalo_l"
FRAMES = 3
CHUNK = 2  # images per forward pass here (the pack's is f2d_core.progress.CHUNK)


class Stop(Exception):
    """What the test's callback raises (ComfyUI's callback raises InterruptProcessingException)."""


class Recorder:
    """A progress callback that records each call and raises Stop on call number `stop_at` (never if 0)."""

    def __init__(self, stop_at: int = 0) -> None:
        self.calls: list[tuple[int, int]] = []
        self.stop_at = stop_at

    def __call__(self, done: int, total: int) -> None:
        self.calls.append((done, total))
        if len(self.calls) == self.stop_at:
            raise Stop


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(progress, "CHUNK", CHUNK)


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("progress_models")
    si.write_synthetic_pack(root / "insightface", PACK)
    detector = FaceDetector(root / "insightface", PACK, det_size=160)
    recognizer = load_face_recognizer(synthetic_arcface.write_arcface_recognizer(root / "w600k_r50.onnx"))
    return detector, recognizer, root


@pytest.fixture(scope="module")
def frames() -> torch.Tensor:
    """FRAMES small frames with one face each, as a ComfyUI IMAGE batch [B, H, W, 3] float in [0, 1]."""
    photo = si.face_photo(load_rgb(ASTRONAUT), (160, 160), (80, 80), 64)
    return torch.from_numpy(np.stack([photo] * FRAMES)).float() / 255.0


def test_detection_reports_each_frame_and_stops_where_the_callback_raises(models, frames) -> None:
    detector = models[0]
    done = Recorder()
    assert all(face is not None for face in detect_faces(detector, frames, progress=done))
    assert done.calls == [(i, FRAMES) for i in range(1, FRAMES + 1)]
    stop = Recorder(stop_at=2)
    with pytest.raises(Stop):
        detect_faces(detector, frames, progress=stop)
    assert stop.calls == [(1, FRAMES), (2, FRAMES)]  # nothing after the stop


def test_identity_scoring_reports_detection_then_embedding_chunks_and_stops(models, frames) -> None:
    detector, recognizer, _ = models
    reference = person_embedding(recognizer, recognizer.align(frames[:1].permute(0, 3, 1, 2), torch.zeros(1, 5, 2)))
    done = Recorder()
    result = identity_scores(detector, recognizer, frames, reference[None], done)
    assert result.face_found.all()
    chunks = [(min(i + CHUNK, FRAMES), FRAMES) for i in range(0, FRAMES, CHUNK)]
    assert done.calls == [(i, FRAMES) for i in range(1, FRAMES + 1)] + chunks
    stop = Recorder(stop_at=FRAMES + 1)  # during the embeddings
    with pytest.raises(Stop):
        identity_scores(detector, recognizer, frames, reference[None], stop)
    assert len(stop.calls) == FRAMES + 1


def test_expression_codes_run_in_chunks_and_stop(models, frames) -> None:
    detector, _, root = models
    model = load_expression_model(synthetic_deep3d.write_published_checkpoint(root / "epoch_20.pth"))
    landmarks = np.stack([face.kps for face in detect_faces(detector, frames)])
    done = Recorder()
    codes = expression_codes(model, frames, landmarks, done)
    assert codes.shape == (FRAMES, 64)
    assert done.calls == [(min(i + CHUNK, FRAMES), FRAMES) for i in range(0, FRAMES, CHUNK)]
    with pytest.raises(Stop):
        expression_codes(model, frames, landmarks, Recorder(stop_at=1))


def test_clip_scores_run_in_chunks_and_stop(models, frames) -> None:
    scorer = load_clip_scorer(tiny_clip.write_transformers_clip(models[2] / "tiny_clip"))
    done = Recorder()
    scores = clip_scores(scorer, frames, ["a photo of f l"], done)
    assert scores.shape == (FRAMES,)
    assert done.calls == [(min(i + CHUNK, FRAMES), FRAMES) for i in range(0, FRAMES, CHUNK)]
    stop = Recorder(stop_at=2)
    with pytest.raises(Stop):
        clip_scores(scorer, frames, ["a photo of f l"], stop)
    assert len(stop.calls) == 2
