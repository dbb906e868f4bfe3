"""Encode Face (shown as "Encode Face -> S*", with an arrow): photos of one person become the two words S*."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.errors import NoFaceError
from ..f2d_core.identity.face_encoder import POOLING_MODES, face_box_masks
from .image_lists import first, flat_images
from .out_of_memory import OUT_OF_MEMORY, released_out_of_memory, summary
from .progress import comfy_progress
from .sockets import F2DFace, F2DFaceSocket, F2DModel, F2DModelSocket

ON_MISSING = {"error": "error", "skip image": "skip"}


def crops_as_image(crops: torch.Tensor) -> torch.Tensor:
    """[N, 3, 112, 112] crops -> ComfyUI IMAGE [N, 112, 112, 3]."""
    return crops.permute(0, 2, 3, 1).contiguous().float().cpu()


def detection_report(faces: list) -> str:
    """One line per photo: which detection attempt found its face, or that it was skipped."""
    total = len(faces)
    lines = [
        f"image {i} of {total}: {'skipped, no face found' if face is None else face.found_by}"
        for i, face in enumerate(faces, start=1)
    ]
    return "\n".join(lines)


class F2DEncodeFace(io.ComfyNode):
    """Encode Face, shown as the design's node name (the one non-ASCII name of the pack)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DEncodeFace",
            display_name="Encode Face → S*",
            category="face2diffusion",
            description="Finds the face in each photo, aligns it and encodes it into S*, two word embeddings that "
            "stand for this person wherever the prompt says 'f l'. Several photos of the same person are pooled "
            "into one S*.",
            inputs=[
                F2DModelSocket.Input("f2d_model", tooltip="From Load MSID Encoder."),
                io.Image.Input(
                    "image",
                    tooltip="One photo, or a batch of photos of the same person (any size, colour or grey).",
                ),
                io.Int.Input(
                    "face_index",
                    default=0,
                    min=0,
                    max=64,
                    tooltip="Which face of each photo to use: 0 = the largest, 1 = the next largest, ...",
                ),
                io.Combo.Input(
                    "if_no_face",
                    options=list(ON_MISSING),
                    default="error",
                    tooltip="What to do with a photo where no face is found: stop with an error naming it, or "
                    "skip it and encode the others.",
                ),
                io.Combo.Input(
                    "pooling",
                    options=list(POOLING_MODES),
                    default="normalized_mean",
                    tooltip="How several photos are combined. normalized_mean (default) averages each scale's "
                    "standardized features and re-normalizes, so the result looks like one photo's identity "
                    "vector to the mapper; mean is the plain average.",
                ),
            ],
            outputs=[
                F2DFaceSocket.Output(display_name="f2d_face"),
                io.Image.Output(display_name="aligned_faces", tooltip="The 112x112 aligned crops that were used."),
                io.Mask.Output(
                    display_name="face_masks",
                    tooltip="Box of the face used in each photo: one MASK batch per IMAGE batch of the input.",
                    is_output_list=True,
                ),
            ],
            is_input_list=True,  # an image list is pooled into one face, like a batch
        )

    @classmethod
    def execute(
        cls,
        f2d_model: list[F2DModel],
        image: list[torch.Tensor],
        face_index: list[int],
        if_no_face: list[str],
        pooling: list[str],
    ):
        model = first(f2d_model, "f2d_model")
        photos = image[0] if len(image) == 1 else flat_images(image)
        on_missing = ON_MISSING[first(if_no_face, "if_no_face")]
        out_of_memory = None
        try:
            encoded = model.encoder.encode(
                photos,
                model.detector,
                face_index=first(face_index, "face_index"),
                on_missing=on_missing,
                pooling=first(pooling, "pooling"),
                progress=comfy_progress(),
            )
        except NoFaceError as e:
            if on_missing == "error" and photos.shape[0] > 1:  # the widget that lets the others through
                raise NoFaceError(f"{e} To encode the other photos without it, set if_no_face to 'skip image'.") from e
            raise
        except OUT_OF_MEMORY as e:  # let its frames go before anything else
            out_of_memory = summary(e)
        if out_of_memory is not None:
            raise released_out_of_memory(
                "Encode Face",
                out_of_memory,
                f"Encode fewer photos at once (this batch has {photos.shape[0]}), or choose detection_size 640 and "
                "precision fp16 in Load MSID Encoder.",
            )
        masks, start = [], 0
        for batch in image:  # one MASK batch per IMAGE batch: a batch's masks share its size
            masks.append(face_box_masks(encoded.faces[start : start + batch.shape[0]], batch.shape[1], batch.shape[2]))
            start += batch.shape[0]
        report = detection_report(encoded.faces)
        return io.NodeOutput(
            F2DFace(encoded, model.encoder), crops_as_image(encoded.crops), masks, ui={"text": [report]}
        )
