"""CONDITIONING carrying a face's S*, optionally after a class-noun phase (identity start) and in a region."""

from __future__ import annotations

from comfy_api.latest import io

from ..f2d_core.conditioning.identity_start import DEFAULT_CLASS_NOUN, class_prompt, timestep_ranges
from ..f2d_core.conditioning.injection import DEFAULT_IDENTIFIER, find_identifier
from ..f2d_core.errors import PromptError
from ..f2d_core.identity.s_star_family import SStar, s_star_family
from .clip_tokens import identifier_ids, special_tokens, tokens_with_face
from .sockets import F2DExpressionSocket


def class_noun_tokens(clip, text: str, identifier: str, class_noun: str) -> dict:
    """`clip.tokenize` of the prompt with the class noun in place of every identifier occurrence."""
    tokens = clip.tokenize(class_prompt(text, identifier, class_noun))
    if find_identifier(tokens["l"], identifier_ids(clip, identifier), special_tokens(clip)):
        raise PromptError(
            f'The identifier "{identifier}" is written in a way that could not be replaced by the class noun '
            f'"{class_noun}" (e.g. split by a line break inside a weight): write it as "{identifier}".'
        )
    return tokens


def face_conditioning(
    clip,
    text: str,
    s_star: SStar,
    identifier: str,
    identity_start: float = 0.0,
    class_noun: str = DEFAULT_CLASS_NOUN,
    region: dict | None = None,
    pooled_source: str | None = None,
) -> list:
    """CONDITIONING of `text` with S* at the identifier, as CLIPTextEncode returns it.

    identity_start > 0 adds the class-noun prompt for sampling fractions [0, identity_start) and moves
    S* to [identity_start, 1]; at 0 the result is exactly the S* encoding. `region` ({"mask", "mask_strength",
    "set_area_to_bounds"}) is set on every entry, as ConditioningSetMask does.

    SDXL (`s_star` a per-tower dict): with `pooled_source` "class_prompt" every S* entry's `pooled_output`
    [1, 1280] is the class prompt's (the prompt with the class noun in place of the identifier), so identity
    reaches the UNet through cross-attention only (shared docs sdxl.md D5); "identity_prompt" or None keeps
    ComfyUI's own pooled vector of the S* prompt.
    """
    class_range, face_range = timestep_ranges(identity_start)
    region = region or {}
    tokens = tokens_with_face(clip, text, s_star, identifier)
    face = clip.encode_from_tokens_scheduled(tokens, add_dict={**region, **face_range})
    pooled_from_class = s_star_family(s_star) == "sdxl" and pooled_source == "class_prompt"
    if class_range is None and not pooled_from_class:
        return face
    class_tokens = class_noun_tokens(clip, text, identifier, class_noun)
    class_cond = None
    if class_range is not None:
        class_cond = clip.encode_from_tokens_scheduled(class_tokens, add_dict={**region, **class_range})
    if pooled_from_class:
        pooled = class_cond[0][1]["pooled_output"] if class_cond else class_pooled(clip, class_tokens)
        face = [[cond, {**options, "pooled_output": pooled}] for cond, options in face]
    return face if class_cond is None else class_cond + face


def class_pooled(clip, class_tokens: dict):
    """SDXL's pooled vector [1, 1280] of the class prompt, as `clip.encode_from_tokens` makes it, from the bigG tower
    and the first 77-token window alone: ComfyUI's pooled is bigG's, of the first window only (comfy/sdxl_clip.py,
    comfy/sd1_clip.py), so CLIP-L and later windows need not run. With CLIP hooks (scheduled text-encoder LoRAs)
    the whole scheduled encode runs instead, so the hooks apply as ComfyUI applies them."""
    if getattr(clip, "use_clip_schedule", False) or getattr(clip, "apply_hooks_to_conds", None):
        return clip.encode_from_tokens_scheduled(class_tokens)[0][1]["pooled_output"]
    model = clip.cond_stage_model
    model.reset_clip_options()
    if clip.layer_idx is not None:
        model.set_clip_options({"layer": clip.layer_idx})
    clip.load_model()
    return model.clip_g.encode_token_weights(class_tokens["g"][:1])[1]


def identifier_check(identifier: str | None) -> bool | str:
    """`validate_inputs` of the nodes that take an identifier: True, or why it cannot be used.

    None is a linked identifier, not known before its node runs: `checked_identifier` checks it then.
    """
    if identifier is None:
        return True
    if not isinstance(identifier, str):
        return f"the identifier is {identifier!r}, not text: link a String node, or type it ('f l')."
    if not identifier.strip():
        return "the identifier widget is empty: set it to 'f l' (the official identifier)."
    return True


def checked_identifier(identifier: str) -> str:
    """The identifier as used (stripped), or a PromptError: a linked identifier is checked only when it runs."""
    problem = identifier_check(identifier)
    if problem is not True:
        raise PromptError(f"The identifier linked into this node cannot be used: {problem}")
    return identifier.strip()


def prompt_input(tooltip: str, default: str = f"a photo of {DEFAULT_IDENTIFIER}") -> io.String.Input:
    """The `text` input of the nodes that prompt with the identifier (multiline, dynamic prompts)."""
    return io.String.Input("text", multiline=True, dynamic_prompts=True, default=default, tooltip=tooltip)


def expression_inputs(
    expression_tooltip: str = "From Expression Reference: copy that photo's expression. Without it the expression "
    "follows the prompt (the official behaviour).",
    strength_tooltip: str = "How much of the reference expression to use (multiplies the strength set on "
    "Expression Reference); 0 = the prompt decides.",
) -> list:
    """The optional `expression` and `expression_strength` inputs of the nodes that take an Expression Reference."""
    return [
        F2DExpressionSocket.Input("expression", optional=True, tooltip=expression_tooltip),
        io.Float.Input(
            "expression_strength",
            default=1.0,
            min=0.0,
            max=1.0,
            step=0.05,
            optional=True,
            tooltip=strength_tooltip,
        ),
    ]


def identifier_inputs(
    class_noun_tooltip: str = "The word that stands in for the identifier until identity_start, e.g. 'person', "
    "'woman', 'man', 'child'.",
) -> list:
    """The `identifier`, `identity_start` and `class_noun` inputs of the nodes that prompt with the identifier
    (Apply F2D Tokens, Add F2D Person, F2D FreeCure Sampler)."""
    return [
        io.String.Input(
            "identifier",
            default=DEFAULT_IDENTIFIER,
            optional=True,
            tooltip="The two-token word that stands for the person ('f l' is what the official weights were "
            "trained with).",
        ),
        io.Float.Input(
            "identity_start",
            default=0.0,
            min=0.0,
            max=0.99,
            step=0.01,
            optional=True,
            tooltip="Fraction of sampling that uses the class noun instead of the person (FastComposer's delayed "
            "subject conditioning). 0 = the person from the first step (exactly as without it). Raise it "
            "(0.1-0.3) when the face takes over the picture: layout, pose and the rest of the prompt come "
            "through better, at some cost in likeness.",
        ),
        io.String.Input(
            "class_noun",
            default=DEFAULT_CLASS_NOUN,
            optional=True,
            tooltip=class_noun_tooltip,
        ),
    ]
