"""Identity similarity of generated images to reference people, as the paper scores it.

Per image: every face is found and aligned to the ArcFace template, embedded, and matched to its
closest reference person. A person's score is the cosine similarity of the best face matched to
them, clipped at 0, and 0 when no face matched them; the image's score is the mean over the people
(with one person: the best face's similarity). An image without a face scores 0 (the paper's
convention, Face2Diffusion Sec. 4 "Evaluation"), and the face-found rate is reported beside it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.nn import functional

from ..errors import EvaluationError
from ..faces.face_detection import FaceDetector, pick_face
from ..images import as_labeled_images
from ..progress import Progress, in_chunks, no_progress
from .recognition import FaceRecognizer

log = logging.getLogger(__name__)


@dataclass
class IdentityScores:
    """Per image of a batch: the identity score in [0, 1], whether a face was found, faces found."""

    scores: torch.Tensor  # [B] float32, cosine clipped at 0; 0 without a face
    face_found: torch.Tensor  # [B] bool
    faces_per_image: list[int]

    @property
    def found_rate(self) -> float:
        """Fraction of images with at least one face."""
        return float(self.face_found.float().mean()) if len(self.face_found) else 0.0


def _unit_float_chw(rgb: np.ndarray) -> torch.Tensor:
    """HxWx3 uint8 -> [1, 3, H, W] float in [0, 1] (a copy: `rgb` may be a read-only view, e.g. of a PIL image)."""
    return torch.tensor(rgb).permute(2, 0, 1)[None].float().div_(255.0)


def faces_in_images(
    detector: FaceDetector,
    recognizer: FaceRecognizer,
    images: torch.Tensor | Sequence[torch.Tensor],
    progress: Progress | None = None,
) -> list[torch.Tensor]:
    """Every face of every image, aligned for `recognizer`: per image a [F_i, 3, S, S] tensor (F_i may be 0).

    `images`: a ComfyUI IMAGE batch [B, H, W, C] float in [0, 1], or a list of images (any form
    `f2d_core.images` accepts). `progress(done, B)` after each image (`f2d_core.progress`); what it raises
    stops the loop.
    """
    report = progress or no_progress
    items = as_labeled_images(images)
    crops = []
    for item in items:
        faces = detector.detect(item.rgb, item.label)
        if not faces:
            crops.append(torch.zeros(0, 3, recognizer.input_size, recognizer.input_size))
        else:
            landmarks = torch.tensor(np.stack([face.kps for face in faces]))
            image = _unit_float_chw(item.rgb).expand(len(faces), -1, -1, -1)
            crops.append(recognizer.align(image, landmarks).cpu())
        report(len(crops), len(items))
    return crops


def largest_face_crops(
    detector: FaceDetector,
    recognizer: FaceRecognizer,
    photos: torch.Tensor | Sequence[torch.Tensor],
    progress: Progress | None = None,
) -> torch.Tensor:
    """The largest face of each reference photo, aligned: [N, 3, S, S]; NoFaceError naming a photo without one.

    `progress(done, N)` after each photo (`f2d_core.progress`); what it raises stops the loop.
    """
    report = progress or no_progress
    items = as_labeled_images(photos)
    crops = []
    for item in items:
        face = pick_face(detector.detect(item.rgb, item.label), f"reference {item.label}")
        landmarks = torch.tensor(face.kps[None])
        crops.append(recognizer.align(_unit_float_chw(item.rgb), landmarks).cpu())
        report(len(crops), len(items))
    return torch.cat(crops)


def resize_crops(crops: torch.Tensor, size: int) -> torch.Tensor:
    """Aligned crops [N, 3, s, s] at another template scale [N, 3, size, size] (the template scales with s)."""
    if crops.shape[-1] == size:
        return crops
    return functional.interpolate(crops.float(), size=(size, size), mode="bilinear", align_corners=False)


def embed_in_chunks(recognizer: FaceRecognizer, crops: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """`recognizer.embed` of crops [N, 3, S, S], CHUNK at a time with `progress(done, N)` after each: [N, D]."""
    if crops.shape[0] == 0:
        return recognizer.embed(crops)
    return torch.cat([recognizer.embed(chunk) for chunk in in_chunks(crops, progress)])


def person_embedding(recognizer: FaceRecognizer, crops: torch.Tensor, progress: Progress | None = None) -> torch.Tensor:
    """One person's reference embedding [D]: the normalised mean of the unit embeddings of their crops [N, 3, s, s]."""
    if crops.shape[0] == 0:
        raise EvaluationError("a reference person has no face crops; give a photo or an F2D face with a face")
    embeddings = embed_in_chunks(recognizer, resize_crops(crops, recognizer.input_size), progress)
    return functional.normalize(embeddings.mean(dim=0), dim=0)


def match_to_references(face_embeddings: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per reference person, the similarity of the best face matched to them: [P] in [0, 1].

    face_embeddings [F, D] and references [P, D], both unit length. Each face is matched to its
    closest reference (argmax cosine); a person's score is the highest clipped cosine among the faces
    matched to them, 0 when none was.
    """
    scores = torch.zeros(references.shape[0])
    if face_embeddings.shape[0] == 0:
        return scores
    cosine = face_embeddings @ references.T  # [F, P]
    closest = cosine.argmax(dim=1)
    for face, person in enumerate(closest.tolist()):
        scores[person] = max(float(scores[person]), float(cosine[face, person].clamp(min=0.0)))
    return scores


def identity_scores(
    detector: FaceDetector,
    recognizer: FaceRecognizer,
    images: torch.Tensor | Sequence[torch.Tensor],
    references: torch.Tensor,
    progress: Progress | None = None,
) -> IdentityScores:
    """Identity scores of generated images against reference embeddings [P, D] (one row per person).

    An image without a face scores 0, also when no image of the batch holds one (a helmet, a face
    turned away): the run goes on, and the caller shows `face_found` beside the scores. Raises
    EvaluationError without a reference person. `progress(done, total)` after each image's detection, then
    after each chunk of embeddings (`f2d_core.progress`); what it raises stops the scoring.
    """
    if references.ndim != 2 or references.shape[0] == 0:
        raise EvaluationError("no reference person to compare with: connect an F2D face or reference photos")
    crops = faces_in_images(detector, recognizer, images, progress)
    counts = [c.shape[0] for c in crops]
    found = [c for c in crops if c.shape[0]]
    embeddings = (
        embed_in_chunks(recognizer, torch.cat(found), progress) if found else torch.zeros(0, references.shape[1])
    )
    found_iter = iter(torch.split(embeddings, [c for c in counts if c]))
    scores = torch.tensor(
        [float(match_to_references(next(found_iter), references).mean()) if n else 0.0 for n in counts]
    )
    result = IdentityScores(scores=scores, face_found=torch.tensor([n > 0 for n in counts]), faces_per_image=counts)
    log.info(
        "identity: mean %.4f over %d image(s), faces found in %.0f%%",
        scores.mean(),
        len(counts),
        100 * result.found_rate,
    )
    return result
