"""Photo(s) of one person -> S*: detect, align, MSID, pool, map. The path the nodes and the CLI use."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from ..checkpoints import F2DModels
from ..errors import F2DError, NoFaceError
from ..faces.alignment import align_faces, to_msid_input
from ..faces.face_detection import DetectedFace, FaceDetector, OnMissing, detect_faces
from ..images import ImageLike, as_labeled_images
from ..progress import Progress
from .norm_match import SETTINGS_KEY as NORM_MATCH_KEY
from .norm_match import mapper_anchors, match_anchor_norms
from .s_star_family import SStar, map_s_star, s_star_tensors

log = logging.getLogger(__name__)

Pooling = Literal["normalized_mean", "mean"]
POOLING_MODES: tuple[str, ...] = ("normalized_mean", "mean")


@dataclass
class EncodedFace:
    """S* of one person and what produced it (for previews, saving and reuse)."""

    s_star: SStar  # SD1.x: [2, 768]; SDXL: {"l": [2, 768], "g": [2, 1280]}; float32, CPU
    idvec: torch.Tensor  # [1536] pooled identity vector
    crops: torch.Tensor  # [N, 3, 112, 112] in [0, 1]: the aligned faces that were used
    faces: list[DetectedFace | None] = field(default_factory=list)  # per input image; None = skipped
    settings: dict[str, object] = field(default_factory=dict)
    pooled_source: str | None = None  # SDXL: where the pooled vector comes from, as the mapper was trained

    @property
    def norm_match(self) -> str:
        """ "anchor" when F2D Norm Match rescaled this S* (recorded in `settings`, so in a saved face), else "off":
        what `FaceEncoder.s_star` is asked for when S* is mapped again (another expression, another mapper)."""
        return str(self.settings.get(NORM_MATCH_KEY, "off"))


def face_box_masks(faces: Sequence[DetectedFace | None], height: int, width: int) -> torch.Tensor:
    """[B, H, W] masks, 1 inside each used face's box (all 0 for a skipped image)."""
    masks = torch.zeros(len(faces), height, width)
    for i, face in enumerate(faces):
        if face is not None:
            x1, y1, x2, y2 = (round(v) for v in face.bbox)
            masks[i, max(0, y1) : max(0, y2), max(0, x1) : max(0, x2)] = 1.0
    return masks


def check_finite_s_star(s_star: SStar, what: str = "S*") -> SStar:
    """Return `s_star` (any shape, or a per-tower dict) unchanged, or raise F2DError when it holds NaN or infinity.

    A non-finite S* would silently turn the whole prompt's conditioning into NaN (a black or noise
    image). It comes from half-precision overflow in the MSID encoder or mapper, or from a damaged
    weights file.
    """
    finite = torch.cat([torch.isfinite(t).flatten() for t in s_star_tensors(s_star).values()])
    if bool(finite.all()):
        return s_star
    bad = int((~finite).sum())
    raise F2DError(
        f"{what} is not finite ({bad} of {finite.numel()} values are NaN or infinite), so it cannot be put "
        "into the prompt. In Load MSID Encoder choose precision fp32 (fp16 can overflow); if it happens in "
        "fp32 too, the MSID or mapper file is damaged: download it again (or re-save the face)."
    )


def check_finite_identity(idvec: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Return the identity vector(s) `idvec` (float32, [..., 1536]) unchanged, or raise F2DError when one holds
    NaN or infinity: in half precision a large activation of the MSID encoder overflows (fp16 ends at 65504),
    and a NaN identity would score every face 0 or turn S* into NaN further on. A meta tensor (shapes only,
    no values) is returned as it is."""
    if idvec.device.type == "meta":
        return idvec
    finite = torch.isfinite(idvec)
    if bool(finite.all()):
        return idvec
    precision = str(dtype).removeprefix("torch.")
    raise F2DError(
        f"The identity vector computed in {precision} is not finite ({int((~finite).sum())} of {finite.numel()} "
        "values are NaN or infinite). In Load MSID Encoder choose precision fp32 (or bf16 on a GPU that has it); "
        "if it happens in fp32 too, the MSID file is damaged: download it again."
    )


class EncoderNetworks(nn.Module):
    """MSID and the mapper as one module, so that a memory manager loads and offloads them together."""

    def __init__(self, msid: nn.Module, mapper: nn.Module) -> None:
        super().__init__()
        self.msid, self.mapper = msid, mapper


def _weights_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter: where it computes now."""
    return next(module.parameters()).device


class FaceEncoder:
    """The MSID encoder and mapper, ready to turn faces into S*.

    The weights may move between calls (ComfyUI offloads them to the CPU and loads them back):
    `prepare()` runs before every forward pass (the node layer makes it load the weights onto
    ComfyUI's device), and each call computes wherever the weights then are. Only MSID and the mapper
    run in `dtype`; the alignment warp is always float32.
    """

    def __init__(self, models: F2DModels, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        self.dtype = dtype
        self.msid = models.msid.to(device, dtype).eval()
        self.mapper = models.mapper.to(device, dtype).eval()
        self.networks = EncoderNetworks(self.msid, self.mapper)
        self.sources = models.sources
        self.prepare: Callable[[], object] = lambda: None

    @property
    def device(self) -> torch.device:
        """Where the MSID weights are now."""
        return _weights_device(self.msid)

    def crops(
        self, images: torch.Tensor | Sequence[torch.Tensor], landmarks: torch.Tensor | np.ndarray
    ) -> torch.Tensor:
        """Aligned 112 crops [N, 3, 112, 112] float32 in [0, 1], from [N, 3, H, W] images (or a list of
        [3, H, W]) and [N, 5, 2] landmarks (fitted on the CPU, see `align_faces`).

        The crops are cut where the photos are: only they go on to the encoder's device (`identity`),
        never the full-resolution photos (30 twelve-megapixel photos in float32 are 4.4 GB).
        """
        landmarks = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
        if isinstance(images, torch.Tensor):
            return align_faces(images, landmarks)
        return torch.cat([align_faces(img[None], lm[None]) for img, lm in zip(images, landmarks, strict=True)])

    @torch.inference_mode()
    def identity(self, crops: torch.Tensor, pooling: Pooling | None = None) -> torch.Tensor:
        """Identity vectors [N, 1536] float32 of crops, or one pooled [1536] when `pooling` is given."""
        if pooling not in (None, *POOLING_MODES):
            raise ValueError(f"pooling must be one of {POOLING_MODES}, not {pooling!r}")
        self.prepare()
        x = to_msid_input(crops.to(self.device, self.dtype))
        if pooling == "normalized_mean":
            idvec = self.msid.pooled_identity(x).float()
        else:
            idvec = self.msid(x).float()
            idvec = idvec.mean(dim=0) if pooling == "mean" else idvec
        return check_finite_identity(idvec, self.dtype)

    @torch.inference_mode()
    def s_star(
        self,
        idvec: torch.Tensor,
        expression: torch.Tensor | None = None,
        strength: float = 1.0,
        norm_match: str = "off",
    ) -> SStar:
        """S* [..., 2, 768] float32 on the CPU from identity vector(s) [..., 1536] and an optional expression [64];
        with an SDXL mapper a dict {"l": [..., 2, 768], "g": [..., 2, 1280]}. `norm_match` "anchor" rescales each
        SDXL word to its anchor's norm (`norm_match.match_anchor_norms`); "off" (default) leaves it as mapped.

        Raises F2DError when the result is not finite (`check_finite_s_star`), or when norm matching does not
        apply (an SD1.x mapper, or an SDXL mapper without anchors).
        """
        self.prepare()
        device = _weights_device(self.mapper)
        single = idvec.ndim == 1
        idvec = idvec.reshape(-1, idvec.shape[-1]).to(device, self.dtype)
        if expression is not None:
            expression = expression.reshape(-1, expression.shape[-1]).expand(idvec.shape[0], -1).to(device)
        out = map_s_star(self.mapper(idvec, expression, strength), lambda t: t.float().cpu())
        check_finite_s_star(out, f"S* (mapped in {str(self.dtype).removeprefix('torch.')})")
        if norm_match == "anchor":
            out = match_anchor_norms(out, mapper_anchors(self.mapper))
        elif norm_match != "off":
            raise ValueError(f"norm_match must be 'anchor' or 'off', not {norm_match!r}")
        return map_s_star(out, lambda t: t[0]) if single else out

    @property
    def anchors(self) -> dict[str, torch.Tensor] | None:
        """The SDXL mapper's anchors {"l": [2, 768], "g": [2, 1280]}; None for SD1.x or a mapper without them."""
        return mapper_anchors(self.mapper)

    @property
    def pooled_source(self) -> str | None:
        """The SDXL mapper's pooled-vector source ("class_prompt" / "identity_prompt"); None for SD1.x."""
        return getattr(self.mapper, "pooled_source", None)

    def encode(
        self,
        images: ImageLike | Sequence[ImageLike],
        detector: FaceDetector,
        face_index: int = 0,
        on_missing: OnMissing = "error",
        pooling: Pooling = "normalized_mean",
        expression: torch.Tensor | None = None,
        strength: float = 1.0,
        progress: Progress | None = None,
    ) -> EncodedFace:
        """One S* for one person from one or several photos: every photo's face is pooled.

        `progress(done, total)` is called after each photo's detection (`f2d_core.progress`); what it raises
        stops the encoding.
        """
        photos = [item.rgb for item in as_labeled_images(images)]  # RGB uint8, converted once
        faces = detect_faces(detector, photos, face_index, on_missing, progress)
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
        fingerprint = getattr(self.mapper, "text_encoder_fingerprint", None)
        if fingerprint:  # SDXL: the towers the mapper was trained with, for Apply's fine-tune warning
            settings["text_encoder_fingerprint"] = fingerprint
        log.info("Encoded S* from %d of %d image(s) (%s)", len(used), len(faces), pooling)
        return EncodedFace(
            s_star=self.s_star(idvec, expression, strength),
            idvec=idvec.cpu(),
            crops=crops.float().cpu(),
            faces=faces,
            settings=settings,
            pooled_source=self.pooled_source,
        )
