"""S* of either base-model family: one tensor [2, 768] for SD1.x, a dict per text tower for SDXL.

SD1.x S* is the official one ("token + position" space, CLIP-L). SDXL S* is {"l": [2, 768], "g": [2, 1280]} in
token-embedding space (shared docs sdxl.md D2), keyed like ComfyUI's SDXL token dict and written to files
under ComfyUI's embedding keys `clip_l` / `clip_g`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..errors import F2DError
from .mapper_xl import SDXL_WIDTHS

SStar = torch.Tensor | dict[str, torch.Tensor]
SD1_WIDTH = 768
FAMILY_LABELS = {"sd1": "SD1.x", "sdxl": "SDXL"}
EMBEDDING_KEYS = {"l": "clip_l", "g": "clip_g"}  # ComfyUI's `embedding_key` per SDXL tower (comfy/sdxl_clip.py)


def s_star_family(s_star: SStar) -> str:
    """ "sd1" for a tensor, "sdxl" for a per-tower dict."""
    return "sdxl" if isinstance(s_star, dict) else "sd1"


def map_s_star(s_star: SStar, fn: Callable[[torch.Tensor], torch.Tensor]) -> SStar:
    """`fn` applied to the tensor, or to each tower's tensor (same family out)."""
    return {t: fn(v) for t, v in s_star.items()} if isinstance(s_star, dict) else fn(s_star)


def s_star_tensors(s_star: SStar) -> dict[str, torch.Tensor]:
    """Tower key -> S* tensor: {"l": s} for SD1.x, the dict itself for SDXL."""
    return dict(s_star) if isinstance(s_star, dict) else {"l": s_star}


def check_s_star_widths(s_star: SStar, what: str = "S*") -> None:
    """Raise F2DError unless each tower's S* is [2, width] with the family's widths (768; 768 and 1280)."""
    widths = SDXL_WIDTHS if isinstance(s_star, dict) else {"l": SD1_WIDTH}
    tensors = s_star_tensors(s_star)
    for tower, width in widths.items():
        shape = tuple(tensors[tower].shape) if tower in tensors else None
        if shape != (2, width):
            raise F2DError(
                f"{what} has the wrong width for the {FAMILY_LABELS[s_star_family(s_star)]} text tower "
                f"'{tower}': expected [2, {width}], found {list(shape) if shape else 'nothing'}. Encode the face "
                "again with a mapper of this family."
            )
