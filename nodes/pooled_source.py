"""F2D Pooled Source: choose where an SDXL face's pooled text vector comes from (an SDXL-only override).

Apply F2D Tokens and Add F2D Person follow the face's `pooled_source`, which an SDXL mapper records as it
was trained (shared docs sdxl.md 2.4, D5). This node overrides it for experiments, so SD1.x graphs never
show an input that does nothing for them.
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..f2d_core.identity.mapper_xl import POOLED_SOURCES
from ..f2d_core.identity.s_star_family import s_star_family
from .sockets import F2DFace, sdxl_face_option_schema


class F2DPooledSource(io.ComfyNode):
    """F2D Pooled Source."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return sdxl_face_option_schema(
            "F2DPooledSource",
            "F2D Pooled Source (SDXL)",
            "SDXL only: the same face, with the pooled text vector taken from another prompt than the one its mapper "
            "was trained with. Connect it between the face and Apply F2D Tokens / Add F2D Person.",
            "An SDXL face (from an SDXL mapper).",
            io.Combo.Input(
                "pooled_source",
                options=list(POOLED_SOURCES),
                default=POOLED_SOURCES[0],
                tooltip="class_prompt = the prompt with the class noun in place of the person (identity only "
                "through the words); identity_prompt = the prompt with the person (ComfyUI's own).",
            ),
        )

    @classmethod
    def execute(cls, f2d_face: F2DFace, pooled_source: str) -> io.NodeOutput:
        if s_star_family(f2d_face.face.s_star) != "sdxl":
            raise ValueError(
                "F2D Pooled Source is for SDXL faces: this face is for SD1.x, whose conditioning has no pooled "
                "vector. Remove the node, or encode the face with an SDXL mapper."
            )
        face = dataclasses.replace(f2d_face.face, pooled_source=pooled_source)
        return io.NodeOutput(dataclasses.replace(f2d_face, face=face))
