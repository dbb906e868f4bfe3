"""Identity similarity maths on real photos with a real pretrained recogniser (dlib's ResNet; test-only)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from f2d_core.errors import EvaluationError, NoFaceError
from f2d_core.evaluation.face_similarity import (
    identity_scores,
    largest_face_crops,
    match_to_references,
    person_embedding,
)
from tests.support.photos import ASTRONAUT, CAT, GROUP, load_rgb

pytest.importorskip("dlib", reason="dlib-bin (test dependency) is not installed")
dlib_support = pytest.importorskip("tests.support.dlib_recognizer")


@pytest.fixture(scope="module")
def dlib_models():
    return dlib_support.DlibDetector(), dlib_support.DlibRecognizer()


@pytest.fixture(scope="module")
def group_people(dlib_models) -> list[np.ndarray]:
    """Each person of insightface's t1.jpg cut out with a margin, largest face first."""
    detector, _ = dlib_models
    group = load_rgb(GROUP)
    people = []
    for face in detector.detect(group):
        x1, y1, x2, y2 = (int(v) for v in face.bbox)
        side = x2 - x1
        people.append(np.ascontiguousarray(group[max(0, y1 - side) : y2 + side, max(0, x1 - side) : x2 + side]))
    assert len(people) == 6
    return people


def test_mirror_scores_above_two_different_people(dlib_models, group_people) -> None:
    detector, recognizer = dlib_models
    astronaut = load_rgb(ASTRONAUT)
    reference = person_embedding(recognizer, largest_face_crops(detector, recognizer, [astronaut]))[None]
    mirror = np.ascontiguousarray(astronaut[:, ::-1])
    result = identity_scores(detector, recognizer, [mirror, group_people[0], group_people[1]], reference)
    assert result.face_found.all()
    assert result.scores[0] > result.scores[1] and result.scores[0] > result.scores[2]
    assert 0.0 <= float(result.scores.min()) and float(result.scores.max()) <= 1.0


def test_each_face_is_matched_to_its_closest_reference(dlib_models, group_people) -> None:
    """Two references from t1: the whole group photo holds both (score ~1); one person's crop gets only half."""
    detector, recognizer = dlib_models
    crops = largest_face_crops(detector, recognizer, group_people[:2])
    references = torch.stack([person_embedding(recognizer, crops[i : i + 1]) for i in range(2)])
    result = identity_scores(detector, recognizer, [load_rgb(GROUP), group_people[0]], references)
    assert result.faces_per_image[0] == 6
    assert float(result.scores[0]) > 0.99
    assert 0.49 < float(result.scores[1]) < 0.51  # person 1 found (~1), person 2 not in the image (0)


def test_an_image_without_a_face_scores_zero_and_lowers_the_found_rate(dlib_models) -> None:
    detector, recognizer = dlib_models
    astronaut = load_rgb(ASTRONAUT)
    reference = person_embedding(recognizer, largest_face_crops(detector, recognizer, [astronaut]))[None]
    result = identity_scores(detector, recognizer, [astronaut, load_rgb(CAT)], reference)
    assert result.face_found.tolist() == [True, False] and float(result.scores[1]) == 0.0
    assert result.found_rate == 0.5 and float(result.scores[0]) > 0.99


def test_no_face_in_any_image_scores_zero_and_the_reference_must_have_one(dlib_models) -> None:
    detector, recognizer = dlib_models
    reference = torch.nn.functional.normalize(torch.ones(1, 128), dim=1)
    result = identity_scores(detector, recognizer, [load_rgb(CAT), np.zeros((64, 64, 3), np.uint8)], reference)
    assert result.scores.tolist() == [0.0, 0.0] and result.face_found.tolist() == [False, False]
    assert result.found_rate == 0.0
    with pytest.raises(NoFaceError, match=r"reference image 1 of 1: no face found"):
        largest_face_crops(detector, recognizer, [load_rgb(CAT)])
    with pytest.raises(EvaluationError, match="no reference person"):
        identity_scores(detector, recognizer, [load_rgb(CAT)], torch.zeros(0, 128))


def test_read_only_photos_give_no_numpy_warning(dlib_models) -> None:
    """A photo read with np.asarray(PIL image) is read-only (as cli/benchmark.py reads them)."""
    detector, recognizer = dlib_models
    photo = load_rgb(ASTRONAUT).copy()
    photo.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reference = person_embedding(recognizer, largest_face_crops(detector, recognizer, [photo]))[None]
        assert float(identity_scores(detector, recognizer, [photo], reference).scores[0]) > 0.99


def test_matching_clips_negative_similarity_at_zero() -> None:
    references = torch.eye(3)[:2]  # two people along x and y
    faces = torch.tensor([[-1.0, 0.0, 0.0], [0.6, 0.8, 0.0]])  # opposite of person 1; closer to person 2
    assert match_to_references(faces, references).tolist() == pytest.approx([0.0, 0.8])
    assert match_to_references(torch.zeros(0, 3), references).tolist() == [0.0, 0.0]
