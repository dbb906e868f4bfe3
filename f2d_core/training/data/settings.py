"""Every setting that changes a prepared sample, for the cache key: crop, models (by their weights), mask source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...faces.expression_model import ExpressionRegressor
from ...faces.face_detection import FaceDetector
from ...faces.face_parsing import FACE_CLASSES, FaceParser
from ...identity.face_encoder import FaceEncoder
from . import masks as mask_rules
from .cache import module_fingerprint

CROP_RECIPE = "ffhq-5pt-v1"  # bump when ffhq_crop.py changes its output


@dataclass
class MaskPlan:
    """Where the face masks come from: a parser, a mask folder, a list by file name, or (all None) the ellipse."""

    parser: FaceParser | None = None
    folder: Path | None = None
    by_name: dict[str, torch.Tensor] | None = None

    def describe(self) -> str:
        """For reports and settings."""
        if self.parser is not None:
            return "face parser (BiSeNet)"
        if self.folder is not None:
            return f"mask folder {self.folder}"
        if self.by_name is not None:
            return "masks given in file order"
        return "landmark ellipse (fallback: no parser or masks given)"

    def cache_key(self) -> str:
        """What of the mask source changes results (per-photo masks are hashed into each photo's key)."""
        if self.parser is not None:
            ids = sorted(FACE_CLASSES.values())
            return f"parser:{module_fingerprint(self.parser)}:{self.parser.input_size}:{ids}"
        if self.folder is not None:
            return "folder"
        if self.by_name is not None:
            return "list"
        rule = (mask_rules.ELLIPSE_CENTRE, mask_rules.ELLIPSE_ACROSS, mask_rules.ELLIPSE_ALONG)
        return f"ellipse:{rule}"


def detector_identity(detector: FaceDetector) -> dict[str, object]:
    """The detector settings that change detections: pack, its ONNX files (name and size), detection sizes."""
    pack_dir = getattr(detector, "pack_dir", None)
    files = {p.name: p.stat().st_size for p in sorted(Path(pack_dir).glob("*.onnx"))} if pack_dir else {}
    return {
        "pack": getattr(detector, "pack_name", type(detector).__name__),
        "files": files,
        "det_size": getattr(detector, "det_size", None),
        "retry_det_size": getattr(detector, "retry_det_size", None),
    }


def build_settings(
    encoder: FaceEncoder,
    detector: FaceDetector,
    latent_key: str,
    plan: MaskPlan,
    expression_model: ExpressionRegressor | None,
    crop_size: int,
    flip: bool,
    face_index: int,
) -> dict[str, object]:
    """Every setting that changes a sample; models are named by a hash of their weights, not their file names."""
    return {
        "crop": CROP_RECIPE,
        "crop_size": crop_size,
        "flip": flip,
        "face_index": face_index,
        "msid": module_fingerprint(encoder.msid),
        "msid_file": encoder.sources.get("msid", ""),
        "msid_dtype": str(encoder.dtype),
        "detector": detector_identity(detector),
        "latent_key": latent_key,
        "masks": plan.cache_key(),
        "expression": "none" if expression_model is None else module_fingerprint(expression_model),
    }
