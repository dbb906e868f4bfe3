"""Norm matching of SDXL S* to the mapper's anchors, at inference (shared docs sdxl.md 2.3, `norm_match = "anchor"`).

    S*_t[k] <- S*_t[k] / ||S*_t[k]|| * ||A_t[k]||      for each tower t in {l, g} and word k in {0, 1}

Each word keeps its direction (the identity) and takes the length of the anchor its head started from (the
mean celebrity-name token, or the class noun's token, in that tower's token-embedding table), so a word the
mapper made too long or too short for the frozen text towers reads like an ordinary word again. Source:
UniID's "normalized rescaling" (lyuPang/UniID inference.py:219-249, train_uniid.py:456-461), which rescales in
encoder-output space and trains without it; this is the input-space analogue. Off by default: a mapper is
trained without it, so it is an inference-time experiment (sdxl.md 6.1 evaluates both).
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from ..errors import F2DError
from .s_star_family import FAMILY_LABELS, SStar, s_star_family

NORM_MATCH_MODES: tuple[str, ...] = ("anchor", "off")  # first: what the SDXL-only node does by default
SETTINGS_KEY = "norm_match"  # in EncodedFace.settings (and so in a saved face): "anchor" once rescaled

NO_ANCHORS = (
    "it holds no anchors (anchor.l / anchor.g are missing or zero: a mapper saved before anchored initialisation). "
    "Norm matching rescales each word to its anchor's length, so it needs a mapper trained by this pack (Train F2D "
    "Mapper starts every SDXL mapper at its anchors): choose such a mapper_file in Load MSID Encoder, or set "
    "norm_match to off."
)


def mapper_anchors(mapper: nn.Module) -> dict[str, torch.Tensor] | None:
    """The SDXL mapper's anchors {"l": [2, 768], "g": [2, 1280]} (float32, CPU), or None when it has none: an SD1.x
    mapper (no `anchor` buffers), or an SDXL mapper whose anchor buffers are missing or hold a zero row."""
    anchor = getattr(mapper, "anchor", None)
    if anchor is None:
        return None
    anchors = {t: b.detach().float().cpu() for t, b in anchor.named_buffers()}
    if not anchors or any(not bool((a.norm(dim=-1) > 0).all()) for a in anchors.values()):
        return None
    return anchors


def match_anchor_norms(s_star: SStar, anchors: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
    """SDXL S* {"l": [..., 2, 768], "g": [..., 2, 1280]} with every word rescaled to its anchor's norm.

    anchors: tower -> [2, D] (`mapper_anchors`). Float32 in, float32 out, same devices; a new dict, the input is
    not changed. Raises F2DError for an SD1.x S* (a tensor: its official S* has no anchors), for missing anchors
    (None) and for a zero-length word (no direction to keep).
    """
    family = s_star_family(s_star)
    if family != "sdxl":
        raise F2DError(
            f"Norm matching is for SDXL faces, but this face is for {FAMILY_LABELS[family]}: its official S* has no "
            "anchors to match. Remove F2D Norm Match, or encode the face with an SDXL F2D mapper."
        )
    if anchors is None:
        raise F2DError(f"This face's SDXL mapper cannot be norm-matched: {NO_ANCHORS}")
    out = {}
    for tower, words in s_star.items():
        norms = words.norm(dim=-1, keepdim=True)
        if not bool((norms > 0).all()):
            raise F2DError(f"S* for tower '{tower}' has a zero-length word, which has no direction to rescale.")
        target = anchors[tower].to(words).norm(dim=-1, keepdim=True)  # [2, 1], broadcast over leading dims
        out[tower] = words / norms * target
    return out
