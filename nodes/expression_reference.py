"""Expression Reference: copy the expression of a reference photo (Deep3DFaceRecon's 64 coefficients)."""

from __future__ import annotations

import numpy as np
import torch
from comfy_api.latest import io

from ..f2d_core.faces.expression_model import HOW_TO_GET, expression_codes, load_expression_model
from ..f2d_core.faces.face_detection import detect_faces
from .model_cache import load_weight_file, weight_file_version
from .model_paths import weight_files
from .progress import comfy_progress
from .sockets import F2DExpression, F2DExpressionSocket, F2DModel, F2DModelSocket

EXPRESSION_FILE = "epoch_20.pth"


class F2DExpressionReference(io.ComfyNode):
    """Expression Reference."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DExpressionReference",
            display_name="Expression Reference",
            category="face2diffusion",
            description="Reads the facial expression of a reference photo with Deep3DFaceRecon (the paper's "
            "expression model) so Apply F2D Tokens can give the person that expression.",
            inputs=[
                F2DModelSocket.Input("f2d_model", tooltip="From Load MSID Encoder: its detector finds the face."),
                io.Image.Input("image", tooltip="Photo(s) showing the expression; several are averaged."),
                io.Combo.Input(
                    "expression_model",
                    options=weight_files(EXPRESSION_FILE, "epoch"),
                    tooltip="Deep3DFaceRecon's epoch_20.pth (github.com/sicxu/Deep3DFaceRecon_pytorch) in "
                    "ComfyUI/models/face2diffusion/.",
                ),
                io.Int.Input("face_index", default=0, min=0, max=64, tooltip="0 = the largest face of each photo."),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=1.0,
                    step=0.05,
                    tooltip="1 = this expression; 0 = none (the prompt decides); in between blends towards the "
                    "learned neutral expression.",
                ),
            ],
            outputs=[F2DExpressionSocket.Output(display_name="expression")],
        )

    @classmethod
    def fingerprint_inputs(cls, expression_model: str, **_: object) -> tuple:
        return weight_file_version(expression_model, HOW_TO_GET)

    @classmethod
    def execute(
        cls, f2d_model: F2DModel, image: torch.Tensor, expression_model: str, face_index: int, strength: float
    ) -> io.NodeOutput:
        regressor = load_weight_file(load_expression_model, expression_model, HOW_TO_GET)  # held while used
        progress = comfy_progress()
        faces = detect_faces(f2d_model.detector, image, face_index=face_index, on_missing="error", progress=progress)
        landmarks = np.stack([face.kps for face in faces])
        codes = expression_codes(regressor.model, image, landmarks, progress)
        return io.NodeOutput(F2DExpression(code=codes.float().mean(dim=0).cpu(), strength=strength))
