"""The pack's own socket types and the objects that travel along them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

from ..f2d_core.faces.face_detection import FaceDetector
from ..f2d_core.identity.face_encoder import EncodedFace, FaceEncoder
from ..f2d_core.identity.mapper import F2DMapper

F2DModelSocket = io.Custom("F2D_MODEL")
F2DFaceSocket = io.Custom("F2D_FACE")
F2DExpressionSocket = io.Custom("F2D_EXPRESSION")
F2DDatasetSocket = io.Custom("F2D_DATASET")
F2DTrainedMapperSocket = io.Custom("F2D_TRAINED_MAPPER")


@dataclass
class F2DModel:
    """MSID encoder + mapper (under ComfyUI's model management), and the face detector to find faces with."""

    encoder: FaceEncoder
    detector: FaceDetector | None
    info: dict[str, object] = field(default_factory=dict)


@dataclass
class F2DFace:
    """One person's S*; the encoder is kept so an expression can be mixed in later (None: file without it)."""

    face: EncodedFace
    encoder: FaceEncoder | None = None


@dataclass
class F2DExpression:
    """A 64-d expression code (Deep3DFaceRecon coefficients 80..143) and how strongly to apply it."""

    code: torch.Tensor
    strength: float = 1.0


@dataclass
class TrainedMapper:
    """A mapper fresh from training, with what is needed to save and describe it."""

    mapper: F2DMapper
    step: int
    losses: list[float]
    settings: dict[str, object]
    dataset_report: str = ""


def sdxl_face_option_schema(
    node_id: str, display_name: str, description: str, face_tooltip: str, option: io.Combo.Input
) -> io.Schema:
    """The schema of an SDXL-only face -> face node (F2D Pooled Source, F2D Norm Match): an `f2d_face` input, one
    combo `option`, the same face out. Such options live in their own nodes so SD1.x graphs (and the bundled SD1.x
    templates, whose widget lists are checked) never carry a widget that does nothing for them."""
    return io.Schema(
        node_id=node_id,
        display_name=display_name,
        category="face2diffusion",
        description=description,
        inputs=[F2DFaceSocket.Input("f2d_face", tooltip=face_tooltip), option],
        outputs=[F2DFaceSocket.Output()],
    )
