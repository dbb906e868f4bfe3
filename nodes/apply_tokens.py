"""Apply F2D Tokens: CLIPTextEncode, except that the identifier ("f l") becomes the person's S*."""

from __future__ import annotations

import logging

from comfy_api.latest import io

from ..f2d_core.conditioning.identity_start import DEFAULT_CLASS_NOUN
from ..f2d_core.conditioning.injection import DEFAULT_IDENTIFIER
from ..f2d_core.errors import F2DError
from .clip_tokens import clip_skip_warning, fine_tuned_towers_warning
from .face_conditioning import (
    checked_identifier,
    expression_inputs,
    face_conditioning,
    identifier_check,
    identifier_inputs,
    prompt_input,
)
from .sockets import F2DExpression, F2DFace, F2DFaceSocket

log = logging.getLogger(__name__)


def s_star_for_prompt(face: F2DFace, expression: F2DExpression | None, strength: float):
    """The face's S*: as encoded (expression from the prompt), or re-mapped with a reference expression (and
    rescaled to the anchors again when the face was norm-matched, F2D Norm Match)."""
    if expression is None or strength * expression.strength == 0:
        return face.face.s_star
    if face.encoder is None:
        raise F2DError(
            "This F2D face was loaded from a file without its mapper, so no expression can be mixed in: connect "
            "an F2D model to Load F2D Face."
        )
    code, mixed = expression.code, strength * expression.strength
    return face.encoder.s_star(face.face.idvec, code, mixed, face.face.norm_match)  # on the CPU


class F2DApplyTokens(io.ComfyNode):
    """Apply F2D Tokens."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DApplyTokens",
            display_name="Apply F2D Tokens",
            category="face2diffusion",
            description="Encodes the prompt like CLIPTextEncode, with the person's S* in place of the identifier "
            "(e.g. 'a photo of f l as a knight'). Works with any SD1.x checkpoint, LoRA and ControlNet; with a face "
            "from an SDXL F2D mapper, with any SDXL checkpoint (both text towers) and the SDXL refiner.",
            inputs=[
                io.Clip.Input(
                    "clip", tooltip="The CLIP of the checkpoint the face is for: SD1.x, or SDXL (base or refiner)."
                ),
                prompt_input(
                    f"The prompt. Write the identifier ('{DEFAULT_IDENTIFIER}') where the person goes; "
                    "(f l:1.2) weights work as usual."
                ),
                F2DFaceSocket.Input("f2d_face", tooltip="From Encode Face (the face as S*) or Load F2D Face."),
                *expression_inputs(),
                *identifier_inputs(),
            ],
            outputs=[io.Conditioning.Output()],
        )

    @classmethod
    def validate_inputs(cls, identifier: str | None = DEFAULT_IDENTIFIER) -> bool | str:
        # Only `identifier` in the signature: ComfyUI pins a failure on each input the function takes.
        return identifier_check(identifier)

    @classmethod
    def execute(
        cls,
        clip,
        text: str,
        f2d_face: F2DFace,
        expression: F2DExpression | None = None,
        expression_strength: float = 1.0,
        identifier: str = DEFAULT_IDENTIFIER,
        identity_start: float = 0.0,
        class_noun: str = DEFAULT_CLASS_NOUN,
    ) -> io.NodeOutput:
        s_star = s_star_for_prompt(f2d_face, expression, expression_strength)
        pooled = f2d_face.face.pooled_source  # as the mapper was trained, or F2D Pooled Source's choice
        conditioning = face_conditioning(
            clip, text, s_star, checked_identifier(identifier), identity_start, class_noun, pooled_source=pooled
        )
        warnings = [w for w in (clip_skip_warning(clip), fine_tuned_towers_warning(clip, f2d_face.face.settings)) if w]
        warning = "; ".join(warnings) or None
        if warning:
            log.warning("Apply F2D Tokens: %s", warning)
        # The text is sent even when empty, so that the node's message clears once clip skip is gone.
        return io.NodeOutput(conditioning, ui={"text": [f"Warning: {warning}" if warning else ""]})
