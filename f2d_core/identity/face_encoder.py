"""Photo(s) of one person -> S*: detect, align, MSID, pool, map. The path the nodes and the CLI use."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from ..checkpoints import F2DModels
from ..errors import NoFaceError
from ..faces.alignment import align_faces, to_msid_input
from ..faces.face_detection import DetectedFace, FaceDetector, OnMissing, detect_faces
from ..images import ImageLike, as_labeled_images

log = logging.getLogger(__name__)

Pooling = Literal["normalized_mean", "mean"]
POOLING_MODES: tuple[str, ...] = ("normalized_mean", "mean")


@dataclass
class EncodedFace:
    """S* of one person and what produced it (for previews, saving and reuse)."""

    s_star: torch.Tensor  # [2, 768] float32, CPU
    idvec: torch.Tensor  # [1536] pooled identity vector
    crops: torch.Tensor  # [N, 3, 112, 112] in [0, 1]: the aligned faces that were used
    faces: list[DetectedFace | None] = field(default_factory=list)  # per input image; None = skipped
    settings: dict[str, object] = field(default_factory=dict)


def face_box_masks(faces: Sequence[DetectedFace | None], height: int, width: int) -> torch.Tensor:
    """[B, H, W] masks, 1 inside each used face's box (all 0 for a skipped image)."""
    masks = torch.zeros(len(faces), height, width)
    for i, face in enumerate(faces):
        if face is not None:
            x1, y1, x2, y2 = (round(v) for v in face.bbox)
            masks[i, max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = 1.0
    return masks


class FaceEncoder:
    """The MSID encoder and mapper on one device, ready to turn faces into S*."""

    def __init__(self, models: F2DModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.device, self.dtype = torch.device(device), dtype
        self.msid = models.msid.to(self.device, dtype).eval()
        self.mapper = models.mapper.to(self.device, dtype).eval()
        self.sources = models.sources

    def crops(
        self, images: torch.Tensor | Sequence[torch.Tensor], landmarks: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """Aligned 112 crops [N, 3, 112, 112] in [0, 1] from [N, 3, H, W] images (or a list) and [N, 5, 2] points."""
        landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float32)).to(self.device)
        if isinstance(images, torch.Tensor):
            return align_faces(images.to(self.device, self.dtype), landmarks)
        return torch.cat(
            [
                align_faces(img[None].to(self.device, self.dtype), lm[None])
                for img, lm in zip(images, landmarks, strict=True)
            ]
        )

    @torch.inference_mode()
    def identity(self, crops: torch.Tensor, pooling: Pooling | None = None) -> torch.Tensor:
        """Identity vectors [N, 1536] of crops, or one pooled [1536] when `pooling` is given."""
        x = to_msid_input(crops.to(self.device, self.dtype))
        if pooling is None:
            return self.msid(x).float()
        if pooling == "normalized_mean":
            return self.msid.pooled_identity(x).float()
        if pooling == "mean":
            return self.msid(x).float().mean(dim=0)
        raise ValueError(f"pooling must be one of {POOLING_MODES}, not {pooling!r}")

    @torch.inference_mode()
    def s_star(
        self, idvec: torch.Tensor, expression: torch.Tensor | None = None, strength: float = 1.0
    ) -> torch.Tensor:
        """S* [..., 2, 768] float32 from identity vector(s) [..., 1536] and an optional expression [64]."""
        single = idvec.ndim == 1
        idvec = idvec.reshape(-1, idvec.shape[-1]).to(self.device, self.dtype)
        if expression is not None:
            expression = expression.reshape(-1, expression.shape[-1]).expand(idvec.shape[0], -1).to(self.device)
        out = self.mapper(idvec, expression, strength).float()
        return out[0] if single else out

    def encode(
        self,
        images: ImageLike | Sequence[ImageLike],
        detector: FaceDetector,
        face_index: int = 0,
        on_missing: OnMissing = "error",
        pooling: Pooling = "normalized_mean",
        expression: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> EncodedFace:
        """One S* for one person from one or several photos: every photo's face is pooled."""
        photos = [item.rgb for item in as_labeled_images(images)]  # RGB uint8, converted once
        faces = detect_faces(detector, photos, face_index, on_missing)
        used = [i for i, face in enumerate(faces) if face is not None]
        if not used:
            raise NoFaceError(f"No face found in any of the {len(faces)} image(s): nothing to encode.")
        landmarks = np.stack([faces[i].kps for i in used])
        tensors = [torch.from_numpy(photos[i]).permute(2, 0, 1).float().div_(255) for i in used]
        same_size = len({tuple(t.shape) for t in tensors}) == 1
        picked = torch.stack(tensors) if same_size else tensors
        crops = self.crops(picked, landmarks)
        idvec = self.identity(crops, pooling)
        settings = {
            "face_index": face_index,
            "pooling": pooling,
            "images_used": len(used),
            "images_given": len(faces),
            "expression_strength": strength if expression is not None else 0.0,
            "msid": self.sources.get("msid", ""),
            "mapper": self.sources.get("mapper", ""),
        }
        log.info("Encoded S* from %d of %d image(s) (%s)", len(used), len(faces), pooling)
        return EncodedFace(
            s_star=self.s_star(idvec, expression, strength).cpu(),
            idvec=idvec.cpu(),
            crops=crops.float().cpu(),
            faces=faces,
            settings=settings,
        )
