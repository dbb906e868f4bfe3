"""F2D Norm Match (SDXL): rescale an SDXL face's two words to the lengths of its mapper's anchors (inference only).

Where a user turns it on, and why here: a small SDXL-only node between the face and Apply F2D Tokens / Add F2D
Person, like F2D Pooled Source.
- Not a widget on Encode Face (even an optional one): SD1.x graphs and the bundled SD1.x templates would carry a
  widget that does nothing for them, and the template checks compare every node's widget list.
- Not a widget on F2D Pooled Source: that node chooses the pooled vector's prompt, another concern; a user who
  wants one of the two would have to set the other, and its name (kept, so saved workflows load) would hide it.
- A face -> face node works on every face, from Encode Face or Load F2D Face, and the choice travels with the
  face: it is recorded in its settings (`norm_match: anchor`), so Save F2D Face keeps the rescaled S* and says
  so, and S* re-mapped later (Expression Reference, Load F2D Face with an F2D model) is rescaled again.
Bypassing the node, or norm_match "off", leaves the face as it comes in.
"""

from __future__ import annotations

import dataclasses

from comfy_api.latest import io

from ..f2d_core.errors import F2DError
from ..f2d_core.identity.norm_match import NORM_MATCH_MODES, SETTINGS_KEY, match_anchor_norms
from ..f2d_core.identity.s_star_family import s_star_family
from .sockets import F2DFace, sdxl_face_option_schema


class F2DNormMatch(io.ComfyNode):
    """F2D Norm Match."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return sdxl_face_option_schema(
            "F2DNormMatch",
            "F2D Norm Match (SDXL)",
            "SDXL only: the same face with each of its two words rescaled to the length of the anchor its mapper "
            "started from (UniID's normalized rescaling, in the text encoders' input space). The direction, i.e. the "
            "identity, is kept. An inference-time experiment: mappers are trained without it. Connect it between the "
            "face and Apply F2D Tokens / Add F2D Person.",
            "An SDXL face (from an SDXL mapper with anchors).",
            io.Combo.Input(
                "norm_match",
                options=list(NORM_MATCH_MODES),
                default=NORM_MATCH_MODES[0],
                tooltip="anchor = each word takes its anchor's length (anchor.l / anchor.g in the mapper file); "
                "off = the face as it comes in (to compare).",
            ),
        )

    @classmethod
    def execute(cls, f2d_face: F2DFace, norm_match: str) -> io.NodeOutput:
        if norm_match == "off":
            return io.NodeOutput(f2d_face)
        face = f2d_face.face
        if s_star_family(face.s_star) == "sdxl" and f2d_face.encoder is None:
            raise F2DError(
                "F2D Norm Match needs the face's mapper (its anchors), but this face was loaded from a file without "
                "one: connect an F2D model (with the SDXL mapper) to Load F2D Face, or norm-match before Save F2D Face "
                "(the saved face then keeps the rescaled S*)."
            )
        anchors = f2d_face.encoder.anchors if f2d_face.encoder is not None else None
        s_star = match_anchor_norms(face.s_star, anchors)
        settings = {**face.settings, SETTINGS_KEY: norm_match}
        return io.NodeOutput(
            dataclasses.replace(f2d_face, face=dataclasses.replace(face, s_star=s_star, settings=settings))
        )
