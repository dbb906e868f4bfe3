"""One photo at a time into a training sample (detect, crop, mask), the model calls batched over a few photos.

A sample holds V views (1, or 2 with the horizontal flip): identity vectors [V, 1536] of the 112
MSID crops, VAE latents [V, C, S/8, S/8] of the FFHQ crops, masks [V, 1, S/8, S/8] in {0, 1}, and
expression codes [V, 64] when an expression model is given. View 1 is the mirror image: its FFHQ
crop and mask are view 0's flipped; its identity and expression come from the mirrored photo, aligned
from the mirrored landmarks exactly as a mirrored photo would be at inference.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ...errors import F2DError
from ...faces.alignment import ARCFACE_TEMPLATE_112, similarity_transform
from ...faces.expression_model import ExpressionRegressor, expression_codes
from ...faces.face_detection import DetectedFace
from ...faces.face_parsing import FaceParser, downsample_mask
from ...identity.face_encoder import FaceEncoder
from .cache import OK, CachedSample
from .ffhq_crop import ffhq_matrix, mirror_landmarks, shrink_factor, transform_points, warp_to_crop
from .masks import ellipse_mask, photo_mask_to_latent

log = logging.getLogger(__name__)

LatentEncoder = Callable[[torch.Tensor], torch.Tensor]
_WINDOW_MARGIN = 2  # pixels beyond the sampled area (bilinear neighbours), in shrunk pixels


@dataclass
class PhotoWork:
    """A photo's crops, ready for the batched model calls; `index` is its place in the folder's file list."""

    index: int
    key: str
    face: DetectedFace
    crops112: torch.Tensor  # [V, 3, 112, 112] in 0..1
    views: torch.Tensor  # [V, 3, S, S] in 0..1: the FFHQ crop (and its mirror)
    masks: torch.Tensor | None  # [V, 1, h, w] in {0, 1}; None: the face parser makes them
    photos: list[np.ndarray] | None  # the photo (and its mirror) for the expression model
    landmarks: torch.Tensor  # [V, 5, 2] landmarks in those photos


def _corners_in_photo(matrix: torch.Tensor, size: float) -> torch.Tensor:
    """The 4 corners [4, 2] of a size x size output, in photo pixels, for a photo->output matrix [2, 3]."""
    full = torch.cat([matrix.to(torch.float64), torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64)])
    inverse = torch.linalg.inv(full)[:2]
    lo, hi = -0.5, size - 0.5
    corners = torch.tensor([[lo, lo], [lo, hi], [hi, hi], [hi, lo]], dtype=torch.float64)
    return corners @ inverse[:, :2].T + inverse[:, 2]


def face_window(points: torch.Tensor, k: int, height: int, width: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1): the part of the photo the crops read (corners `points` [N, 2]), plus a margin.

    Big photos are never converted whole. x0 and y0 are multiples of the FFHQ warp's shrink factor k,
    so its box filter sees the same pixel blocks as on the whole photo: the crops are the same.
    """
    margin = (_WINDOW_MARGIN + 1) * k
    x0 = max(0, math.floor(points[:, 0].min().item()) - margin) // k * k
    y0 = max(0, math.floor(points[:, 1].min().item()) - margin) // k * k
    x1 = min(width, max(x0 + 1, math.ceil(points[:, 0].max().item()) + margin + 1))
    y1 = min(height, max(y0 + 1, math.ceil(points[:, 1].max().item()) + margin + 1))
    return x0, y0, x1, y1


class SampleBuilder:
    """Turns detected photos into samples; `add` queues a photo, `flush` runs the models on the queue."""

    def __init__(
        self,
        encoder: FaceEncoder,
        encode_latents: LatentEncoder,
        crop_size: int,
        flip: bool,
        face_parser: FaceParser | None,
        expression_model: ExpressionRegressor | None,
        batch_size: int = 4,
    ) -> None:
        self.encoder, self.encode_latents, self.batch_size = encoder, encode_latents, batch_size
        self.crop_size, self.flip = crop_size, flip
        self.latent_size = crop_size // 8
        self.face_parser, self.expression_model = face_parser, expression_model
        self.pending: list[PhotoWork] = []

    @property
    def views(self) -> int:
        return 2 if self.flip else 1

    @staticmethod
    def _align_corners(lm5: torch.Tensor) -> torch.Tensor:
        """The photo-space corners [4, 2] of the 112 MSID crop of landmarks [1, 5, 2]."""
        return _corners_in_photo(similarity_transform(lm5, ARCFACE_TEMPLATE_112)[0], 112)

    def prepare(
        self, index: int, key: str, rgb: np.ndarray, face: DetectedFace, photo_mask: torch.Tensor | None
    ) -> PhotoWork:
        """Crops of one photo (and the mask, unless the parser makes it): everything but the model calls."""
        height, width = rgb.shape[:2]
        kps = torch.from_numpy(np.asarray(face.kps, dtype=np.float32))[None]  # [1, 5, 2]
        matrix = ffhq_matrix(kps, self.crop_size)  # [1, 2, 3] photo -> crop
        corners = [_corners_in_photo(matrix[0], self.crop_size), self._align_corners(kps)]
        if self.flip:  # the mirrored photo's 112 crop, mirrored back
            mirrored = self._align_corners(mirror_landmarks(kps, width))
            corners.append(torch.stack([(width - 1) - mirrored[:, 0], mirrored[:, 1]], dim=1))
        k = int(shrink_factor(matrix)[0])
        x0, y0, x1, y1 = face_window(torch.cat(corners), k, height, width)
        shift = torch.tensor([x0, y0], dtype=torch.float32)
        patch = torch.from_numpy(rgb[y0:y1, x0:x1]).permute(2, 0, 1).float().div_(255)[None]
        local = matrix.clone()
        local[:, :, 2] += matrix[:, :, :2] @ shift  # crop = A (p_window + shift) + t
        crop = warp_to_crop(patch, local, self.crop_size)
        lm_window = kps - shift
        if self.flip:
            patches = torch.cat([patch, patch.flip(-1)])
            lm_pair = torch.cat([lm_window, mirror_landmarks(lm_window, x1 - x0)])
        else:
            patches, lm_pair = patch, lm_window
        crops112 = self.encoder.crops(patches, lm_pair).cpu()
        views = torch.cat([crop, crop.flip(-1)]) if self.flip else crop
        masks = None
        if photo_mask is not None:
            masks = photo_mask_to_latent(photo_mask[y0:y1, x0:x1], local, self.crop_size, self.latent_size)
        elif self.face_parser is None:
            lm_crop = transform_points(kps, matrix)
            masks = downsample_mask(ellipse_mask(lm_crop, self.crop_size), self.latent_size)
        if masks is not None and self.flip:
            masks = torch.cat([masks, masks.flip(-1)])
        photos = landmarks = None
        if self.expression_model is not None:
            photos = [rgb, rgb[:, ::-1]] if self.flip else [rgb]
            landmarks = torch.cat([kps, mirror_landmarks(kps, width)]) if self.flip else kps
        return PhotoWork(index, key, face, crops112, views, masks, photos, landmarks)

    def add(self, work: PhotoWork) -> None:
        """Queue a prepared photo for the next `flush`."""
        self.pending.append(work)

    def _latents(self, views: torch.Tensor) -> torch.Tensor:
        """encode_latents on the views, checked: [N, C, S/8, S/8] float32 on the CPU."""
        with torch.no_grad():
            latents = self.encode_latents(views)
        h = self.latent_size
        if not isinstance(latents, torch.Tensor) or latents.ndim != 4 or latents.shape[0] != len(views):
            got = tuple(latents.shape) if isinstance(latents, torch.Tensor) else type(latents).__name__
            raise F2DError(
                f"encode_latents returned {got} for {len(views)} images; expected [{len(views)}, C, {h}, {h}]."
            )
        if tuple(latents.shape[2:]) != (h, h):
            raise F2DError(
                f"encode_latents returned latents of {tuple(latents.shape)} for {self.crop_size}-pixel images; "
                f"F2D training needs an SD VAE (SD1.x or SDXL), which downsamples 8x to {h}x{h}."
            )
        if not torch.isfinite(latents).all():
            raise F2DError(
                "The VAE produced NaN or infinite latents (an SDXL VAE running in fp16 overflows): restart ComfyUI "
                "with --fp32-vae or --bf16-vae, or load the fp16-fix SDXL VAE, then prepare the training set again."
            )
        return latents.detach().float().cpu()

    def flush(self) -> list[tuple[PhotoWork, CachedSample]]:
        """Run the MSID encoder, the VAE, the parser and the expression model on the queued photos."""
        work, self.pending = self.pending, []
        if not work:
            return []
        v = self.views
        idvec = self.encoder.identity(torch.cat([w.crops112 for w in work])).float().cpu()
        views = torch.cat([w.views for w in work])
        latents = self._latents(views)
        if self.face_parser is not None:
            view0 = views[::v]
            masks = self.face_parser.face_mask(view0, size=self.latent_size).float().cpu()
            masks = torch.stack([masks, masks.flip(-1)], dim=1).flatten(0, 1) if self.flip else masks
        else:
            masks = torch.cat([w.masks for w in work])
        expression = None
        if self.expression_model is not None:
            photos = [p for w in work for p in w.photos]
            expression = expression_codes(self.expression_model, photos, torch.cat([w.landmarks for w in work]))
            expression = expression.float().cpu()
        out = []
        for i, w in enumerate(work):
            part = slice(i * v, (i + 1) * v)
            tensors = {
                "idvec": idvec[part].clone(),
                "latents": latents[part].clone(),
                "masks": masks[part].to(torch.uint8),
            }
            if expression is not None:
                tensors["expression"] = expression[part].clone()
            out.append((w, CachedSample(OK, tensors, face=face_record(w.face))))
        return out


def face_record(face: DetectedFace) -> dict[str, object]:
    """A detection as JSON-able values (kept in the cache for previews and debugging)."""
    return {
        "bbox": [round(float(v), 3) for v in face.bbox],
        "kps": np.asarray(face.kps, dtype=np.float64).round(3).tolist(),
        "score": round(float(face.score), 5),
    }
