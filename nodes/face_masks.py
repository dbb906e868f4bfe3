"""F2D Face Masks: one mask per face of a photo, left to right, e.g. the people of a template to inpaint."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.conditioning.regions import RegionError, face_box_regions
from .progress import comfy_progress
from .sockets import F2DModel, F2DModelSocket


class F2DFaceMasks(io.ComfyNode):
    """F2D Face Masks."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DFaceMasks",
            display_name="F2D Face Masks",
            category="face2diffusion",
            description="Finds every face in a photo and gives one mask per face, ordered left to right, plus their "
            "count and their union: the regions for Add F2D Person and the inpaint mask of a multi-person template.",
            inputs=[
                F2DModelSocket.Input("f2d_model", tooltip="From Load MSID Encoder: its detector finds the faces."),
                io.Image.Input("image", tooltip="One photo (e.g. a template with several people)."),
                io.Float.Input(
                    "grow",
                    default=0.5,
                    min=0.0,
                    max=3.0,
                    step=0.05,
                    tooltip="How far each mask reaches beyond the face's box, as a fraction of the box's size "
                    "(hair, ears and neck lie outside it); 0 = the box.",
                ),
            ],
            outputs=[
                io.Mask.Output(display_name="masks", tooltip="One mask per face, left to right, [N, H, W]."),
                io.Int.Output(display_name="count", tooltip="How many faces were found."),
                io.Mask.Output(display_name="all_faces", tooltip="All faces in one mask [1, H, W]: the inpaint mask."),
            ],
        )

    @classmethod
    def execute(cls, f2d_model: F2DModel, image: torch.Tensor, grow: float) -> io.NodeOutput:
        if image.shape[0] != 1:
            raise RegionError(f"F2D Face Masks reads one photo; it got a batch of {image.shape[0]}: pick one image.")
        faces = f2d_model.detector.detect(image[0], "the photo")  # one photo: one step to show, then a Cancel stops
        comfy_progress()(1, 1)
        masks = face_box_regions([face.bbox for face in faces], image.shape[1], image.shape[2], grow)
        return io.NodeOutput(masks, masks.shape[0], masks.amax(dim=0, keepdim=True))
