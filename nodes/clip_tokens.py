"""ComfyUI's CLIP object <-> the framework-free injection: which CLIP, which tokens, which positions."""

from __future__ import annotations

import torch

from ..f2d_core.conditioning.injection import inject_s_star
from ..f2d_core.errors import PromptError
from ..f2d_core.identity.face_encoder import check_finite_s_star

LAST_LAYER = -1  # CLIP Set Last Layer's stop_at_clip_layer for no clip skip

_FAMILIES = {
    frozenset({"g", "l"}): "SDXL",
    frozenset({"g", "l", "t5xxl"}): "SD3",
    frozenset({"l", "t5xxl"}): "Flux",
    frozenset({"h"}): "SD2.x",
}


def _family(keys: set[str]) -> str:
    return _FAMILIES.get(frozenset(keys), f"a text encoder with parts {sorted(keys)}")


def check_sd1_clip(clip, tokens: dict) -> None:
    """Raise a PromptError unless `clip` is an SD1.x CLIP-L (768 wide), the only one S* fits."""
    if set(tokens) != {"l"}:
        raise PromptError(
            f"Apply F2D Tokens needs an SD1.x checkpoint's CLIP (CLIP-L, 768-wide words), but this CLIP is "
            f"{_family(set(tokens))}. Face2Diffusion's S* is trained for SD1.x: load an SD1.x checkpoint "
            f"(SD1.4, SD1.5 or a fine-tune of them)."
        )
    width = position_embedding(clip).shape[-1]
    if width != 768:
        raise PromptError(f"This CLIP's words are {width} wide, S* is 768: use an SD1.x checkpoint's CLIP.")


def position_embedding(clip) -> torch.Tensor:
    """The CLIP-L position embedding table [77, 768] of a ComfyUI CLIP, as its next encode will add it.

    Read after `clip.load_model()`: only loading applies ComfyUI's weight patches (a LoRA or a model
    merge that changes the table), so a table read before it differs on the first queue from later ones.
    """
    clip.load_model()
    text_model = clip.cond_stage_model.clip_l.transformer.text_model
    return text_model.embeddings.position_embedding.weight


def identifier_ids(clip, identifier: str) -> list[int]:
    """The CLIP-L token ids of the identifier, tokenized the way the prompt is."""
    chunk = clip.tokenize(identifier)["l"][0]
    special = special_tokens(clip)
    return [int(t) for t, *_ in chunk if isinstance(t, int) and t not in special]


def special_tokens(clip) -> set[int]:
    """Start, end and pad token ids of the CLIP-L tokenizer."""
    tokenizer = clip.tokenizer.clip_l
    return {t for t in (tokenizer.start_token, tokenizer.end_token, tokenizer.pad_token) if t is not None}


def tokens_with_face(clip, text: str, s_star: torch.Tensor, identifier: str) -> dict:
    """`clip.tokenize(text)` with S* spliced in at every occurrence of the identifier."""
    tokens = clip.tokenize(text)
    check_sd1_clip(clip, tokens)
    ids = identifier_ids(clip, identifier)
    check_finite_s_star(s_star)
    tokens["l"] = inject_s_star(tokens["l"], ids, s_star, position_embedding(clip), special_tokens(clip), identifier)
    return tokens


def clip_skip_warning(clip) -> str | None:
    """A warning when `clip` stops before CLIP's last layer (clip skip), else None.

    ComfyUI keeps CLIP Set Last Layer's `stop_at_clip_layer` (or a checkpoint config's `layer_idx`) in
    `CLIP.layer_idx` and applies it at encode time (comfy/sd.py); None or -1 is the last layer.
    The official Face2Diffusion code trains and runs S* on the last layer's output.
    """
    layer = getattr(clip, "layer_idx", None)
    if layer is None or layer == LAST_LAYER:
        return None
    return (
        f"clip skip: this CLIP stops at layer {layer} (CLIP Set Last Layer), but S* was trained on CLIP's last "
        f"layer ({LAST_LAYER}), as in the official Face2Diffusion code, so the likeness may drop. Set "
        f"stop_at_clip_layer to {LAST_LAYER} before Apply F2D Tokens for the official behaviour."
    )
