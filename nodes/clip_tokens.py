"""ComfyUI's CLIP object <-> the framework-free injection: which CLIP, which towers, which tokens, which positions.

SD1.x: S* (official "token + position" space) goes into the CLIP-L list `tokens["l"]` as `S* - pos[i]`.
SDXL (shared docs sdxl.md 1.8): S*_l into `tokens["l"]` and S*_g into `tokens["g"]`, both as they are (token
space); the refiner encodes `tokens["g"]` only. The family is read from the CLIP's model class, not from its
token keys (the refiner's tokens look like SDXL's).
"""

from __future__ import annotations

import logging

import torch

from ..f2d_core.conditioning.injection import equal_chunk_counts, inject_s_star
from ..f2d_core.errors import PromptError
from ..f2d_core.identity.face_encoder import check_finite_s_star
from ..f2d_core.identity.s_star_family import FAMILY_LABELS, SStar, check_s_star_widths, s_star_family
from ..f2d_core.identity.text_fingerprint import METADATA_KEY, fingerprint_keys, text_encoder_fingerprint

log = logging.getLogger(__name__)

LAST_LAYER = -1  # CLIP Set Last Layer's stop_at_clip_layer for no clip skip
SDXL_LAYER = -2  # SDXL's towers are read at the penultimate layer (comfy/sdxl_clip.py); None means the same

_FAMILIES = {
    frozenset({"g", "l"}): "SDXL",
    frozenset({"g", "l", "t5xxl"}): "SD3",
    frozenset({"l", "t5xxl"}): "Flux",
    frozenset({"h"}): "SD2.x",
}
# ComfyUI's text-model class -> (family, the towers S* goes into, the S* family that fits)
_MODEL_FAMILIES = {
    "SDXLClipModel": ("SDXL", ("l", "g"), "sdxl"),
    "SDXLRefinerClipModel": ("the SDXL refiner", ("g",), "sdxl"),
}


def _family(keys: set[str]) -> str:
    return _FAMILIES.get(frozenset(keys), f"a text encoder with parts {sorted(keys)}")


def clip_family(clip, tokens: dict) -> tuple[str, tuple[str, ...], str | None]:
    """(family label, towers S* goes into, S* family that fits: "sd1" / "sdxl" / None for none)."""
    known = _MODEL_FAMILIES.get(type(clip.cond_stage_model).__name__)
    if known is not None:
        return known
    if set(tokens) == {"l"}:
        return "SD1.x", ("l",), "sd1"
    return _family(set(tokens)), (), None


def check_sd1_clip(clip, tokens: dict) -> None:
    """Raise a PromptError unless `clip` is an SD1.x CLIP-L (768 wide), the only one an SD1.x S* fits."""
    if set(tokens) != {"l"} or type(clip.cond_stage_model).__name__ in _MODEL_FAMILIES:
        family = clip_family(clip, tokens)[0]
        hint = (
            " To use this person on SDXL, encode the face with an SDXL F2D mapper (Load MSID Encoder's mapper_file)."
            if family in ("SDXL", "the SDXL refiner")
            else ""
        )
        raise PromptError(
            f"Apply F2D Tokens needs an SD1.x checkpoint's CLIP (CLIP-L, 768-wide words) for this F2D face, which "
            f"is for SD1.x, but this CLIP is {family}. Face2Diffusion's official S* is trained for SD1.x: load an "
            f"SD1.x checkpoint (SD1.4, SD1.5 or a fine-tune of them).{hint}"
        )
    width = position_embedding(clip).shape[-1]
    if width != 768:
        raise PromptError(f"This CLIP's words are {width} wide, S* is 768: use an SD1.x checkpoint's CLIP.")


def check_face_fits_clip(clip, tokens: dict, s_star: SStar) -> tuple[str, ...]:
    """The towers S* goes into; PromptError naming both families when the face does not fit this CLIP.

    Checked before ComfyUI sees a tensor: ComfyUI itself only logs a warning and drops a wrong-width embedding
    (comfy/sd1_clip.py process_tokens).
    """
    face_family = s_star_family(s_star)
    check_s_star_widths(s_star)
    if face_family == "sd1":
        check_sd1_clip(clip, tokens)
        return ("l",)
    label, towers, fits = clip_family(clip, tokens)
    if fits != face_family:
        raise PromptError(
            f"This F2D face is for {FAMILY_LABELS[face_family]} (made with an SDXL F2D mapper), but this CLIP is "
            f"{label}: connect an SDXL checkpoint's CLIP (or the SDXL refiner's), or encode the face again with "
            "the official SD1.x mapper (mapping.pt) for an SD1.x checkpoint."
        )
    for tower in towers:
        width = tower_position_embedding(clip, tower).shape[-1]
        if width != s_star[tower].shape[-1]:
            raise PromptError(
                f"This CLIP's '{tower}' tower is {width} wide, but the face's S* for it is "
                f"{s_star[tower].shape[-1]}: use a standard SDXL checkpoint's CLIP."
            )
    return towers


def tower_position_embedding(clip, tower: str) -> torch.Tensor:
    """The position embedding table [77, width] of one tower ("l" or "g") of a ComfyUI CLIP, as its next encode
    adds it (read after `clip.load_model()`, which applies weight patches such as a LoRA)."""
    clip.load_model()
    text_model = getattr(clip.cond_stage_model, f"clip_{tower}").transformer.text_model
    return text_model.embeddings.position_embedding.weight


def position_embedding(clip) -> torch.Tensor:
    """The CLIP-L position embedding table [77, 768] of a ComfyUI CLIP, as its next encode will add it.

    Read after `clip.load_model()`: only loading applies ComfyUI's weight patches (a LoRA or a model
    merge that changes the table), so a table read before it differs on the first queue from later ones.
    """
    return tower_position_embedding(clip, "l")


def identifier_ids(clip, identifier: str) -> list[int]:
    """The CLIP-L token ids of the identifier, tokenized the way the prompt is (SDXL's towers share the BPE)."""
    chunk = clip.tokenize(identifier)["l"][0]
    special = special_tokens(clip)
    return [int(t) for t, *_ in chunk if isinstance(t, int) and t not in special]


def tower_tokens(clip, tower: str = "l") -> tuple[set[int], int | None]:
    """(start and end token ids, the pad token when it is not one of them) of one tower's tokenizer.

    CLIP-L pads with its end token; SDXL's bigG pads with 0, a real vocabulary entry that may be content.
    """
    tokenizer = getattr(clip.tokenizer, f"clip_{tower}")
    special = {t for t in (tokenizer.start_token, tokenizer.end_token) if t is not None}
    pad = tokenizer.pad_token
    return special, (None if pad is None or pad in special else pad)


def special_tokens(clip) -> set[int]:
    """Start, end and pad token ids of the CLIP-L tokenizer."""
    tokenizer = clip.tokenizer.clip_l
    return {t for t in (tokenizer.start_token, tokenizer.end_token, tokenizer.pad_token) if t is not None}


def tokens_with_face(clip, text: str, s_star: SStar, identifier: str) -> dict:
    """`clip.tokenize(text)` with S* spliced in at every occurrence of the identifier, in each tower it fits."""
    tokens = clip.tokenize(text)
    towers = check_face_fits_clip(clip, tokens, s_star)
    ids = identifier_ids(clip, identifier)
    check_finite_s_star(s_star)
    if s_star_family(s_star) == "sd1":
        tokens["l"] = inject_s_star(
            tokens["l"], ids, s_star, position_embedding(clip), special_tokens(clip), identifier
        )
        return tokens
    for tower in towers:
        special, pad = tower_tokens(clip, tower)
        tokens[tower] = inject_s_star(tokens[tower], ids, s_star[tower], None, special, identifier, pad)
    if len(towers) > 1 and len({len(tokens[t]) for t in towers}) > 1:
        empty = clip.tokenize("")
        tokens |= equal_chunk_counts({t: tokens[t] for t in towers}, {t: empty[t][0] for t in towers})
    return tokens


_FINGERPRINTS: dict[tuple[int, object], str | None] = {}  # (id of the CLIP's patcher, its patches' uuid) -> it


def clip_text_fingerprint(clip) -> str | None:
    """`text_encoder_fingerprint` of an SDXL CLIP's towers as its next encode uses them (after `load_model`, which
    applies weight patches such as a text-encoder LoRA); cached per patcher and patch set. None for towers in bf16
    or fp8 (--bf16-text-enc, --fp8_e4m3fn-text-enc): they have no fingerprint to compare."""
    clip.load_model()
    key = (id(clip.patcher), getattr(clip.patcher, "patches_uuid", None))
    if key not in _FINGERPRINTS:
        tensors = {}
        for tower in ("l", "g"):
            model = getattr(clip.cond_stage_model, f"clip_{tower}", None)
            if model is None:
                continue
            weights = model.transformer.text_model
            layers = len(weights.encoder.layers)
            state = dict(weights.named_parameters())
            tensors |= {f"{tower}/{k}": state[k] for k in fingerprint_keys(layers)}
        _FINGERPRINTS.clear()  # one CLIP at a time is the common case; never grows
        _FINGERPRINTS[key] = text_encoder_fingerprint(tensors)
    return _FINGERPRINTS[key]


def fine_tuned_towers_warning(clip, settings: dict) -> str | None:
    """A warning when the face's mapper was trained with other text-encoder weights than this CLIP's (a fine-tune
    that retrained them, or a text-encoder LoRA), else None; None too when the mapper recorded no fingerprint."""
    trained = settings.get(METADATA_KEY)
    if not trained or type(clip.cond_stage_model).__name__ != "SDXLClipModel":
        return None
    current = clip_text_fingerprint(clip)
    if current is None:
        log.info("the text encoders run in bf16 or fp8: whether they are the mapper's is not checked")
        return None
    if current == trained:
        return None
    return (
        "this checkpoint's text encoders differ from the ones the mapper was trained with (a Pony / Illustrious / "
        "NoobAI-style fine-tune, or a text-encoder LoRA); likeness may drop: train or fine-tune the mapper on this "
        "checkpoint."
    )


def clip_skip_warning(clip) -> str | None:
    """A warning when `clip` stops before the layer S* was trained on (clip skip), else None.

    ComfyUI keeps CLIP Set Last Layer's `stop_at_clip_layer` (or a checkpoint config's `layer_idx`) in
    `CLIP.layer_idx` and applies it at encode time (comfy/sd.py); None means the model's default layer.
    The official Face2Diffusion code trains and runs S* on CLIP-L's last layer (-1). SDXL reads both towers
    at the penultimate layer (-2, the default, comfy/sdxl_clip.py): there only a layer other than -2 warns.
    """
    layer = getattr(clip, "layer_idx", None)
    sdxl = type(clip.cond_stage_model).__name__ in _MODEL_FAMILIES
    trained = SDXL_LAYER if sdxl else LAST_LAYER
    if layer is None or layer == trained:
        return None
    if sdxl:
        return (
            f"clip skip: this CLIP stops at layer {layer} (CLIP Set Last Layer), but SDXL's S* is made for the "
            f"penultimate layer ({SDXL_LAYER}, SDXL's default), so the likeness may drop. Set stop_at_clip_layer to "
            f"{SDXL_LAYER} (or remove CLIP Set Last Layer) before Apply F2D Tokens."
        )
    return (
        f"clip skip: this CLIP stops at layer {layer} (CLIP Set Last Layer), but S* was trained on CLIP's last "
        f"layer ({LAST_LAYER}), as in the official Face2Diffusion code, so the likeness may drop. Set "
        f"stop_at_clip_layer to {LAST_LAYER} before Apply F2D Tokens for the official behaviour."
    )
