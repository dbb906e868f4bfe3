"""Add F2D Person: one person's S* conditioning in that person's region, added to the scene's conditioning."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..f2d_core.conditioning.identity_start import DEFAULT_CLASS_NOUN
from ..f2d_core.conditioning.injection import DEFAULT_IDENTIFIER
from ..f2d_core.conditioning.regions import MAX_PEOPLE, person_mask
from .apply_tokens import s_star_for_prompt
from .face_conditioning import (
    checked_identifier,
    expression_inputs,
    face_conditioning,
    identifier_check,
    identifier_inputs,
    prompt_input,
)
from .sockets import F2DExpression, F2DFace, F2DFaceSocket


class F2DAddPerson(io.ComfyNode):
    """Add F2D Person."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="F2DAddPerson",
            display_name="Add F2D Person",
            category="face2diffusion",
            description="Adds one person to a scene: their prompt, with their S* at 'f l', conditions only their "
            "region (ConditioningSetMask + ConditioningCombine). Chain one per person after the scene's "
            "CLIPTextEncode; each person's S* stays in their own conditioning.",
            inputs=[
                io.Conditioning.Input(
                    "conditioning",
                    tooltip="The scene prompt's CLIPTextEncode, or the previous Add F2D Person: passed on unchanged, "
                    "with this person's conditioning added.",
                ),
                io.Clip.Input(
                    "clip", tooltip="The CLIP of the checkpoint the face is for: SD1.x, or SDXL (base or refiner)."
                ),
                io.Latent.Input("latent", tooltip="The latent that is sampled: masks are checked against its size."),
                F2DFaceSocket.Input("f2d_face", tooltip="This person, from Encode Face \u2192 S* or Load F2D Face."),
                prompt_input(f"This person's prompt, with the identifier ('{DEFAULT_IDENTIFIER}') where they go."),
                io.Mask.Input(
                    "masks",
                    tooltip="The regions: F2D Region Layout, F2D Face Masks, or any MASK (a batch holds one mask per "
                    "person) at the image's size.",
                ),
                io.Int.Input(
                    "person",
                    default=1,
                    min=1,
                    max=MAX_PEOPLE,
                    tooltip="Which mask of `masks` is this person's region (1 = the first: left, or top-left).",
                ),
                io.Float.Input(
                    "strength",
                    default=1.0,
                    min=0.0,
                    max=10.0,
                    step=0.01,
                    tooltip="Weight of this person's prompt inside the region against the scene prompt "
                    "(ConditioningSetMask's strength); raise it if the scene washes the person out.",
                ),
                *expression_inputs(
                    "From Expression Reference: this person's expression.",
                    "How much of the reference expression to use; 0 = the prompt decides.",
                ),
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
        conditioning: list,
        clip,
        latent: dict,
        f2d_face: F2DFace,
        text: str,
        masks: torch.Tensor,
        person: int,
        strength: float,
        expression: F2DExpression | None = None,
        expression_strength: float = 1.0,
        identifier: str = DEFAULT_IDENTIFIER,
        identity_start: float = 0.0,
        class_noun: str = DEFAULT_CLASS_NOUN,
    ) -> io.NodeOutput:
        mask = person_mask(masks, person, tuple(latent["samples"].shape[-2:]))
        region = {"mask": mask, "set_area_to_bounds": False, "mask_strength": strength}
        s_star = s_star_for_prompt(f2d_face, expression, expression_strength)
        pooled = f2d_face.face.pooled_source  # as the mapper was trained, or F2D Pooled Source's choice
        person_conditioning = face_conditioning(
            clip, text, s_star, checked_identifier(identifier), identity_start, class_noun, region, pooled
        )
        return io.NodeOutput(conditioning + person_conditioning)
