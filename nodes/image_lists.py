"""Image lists (from RebatchImages, or any node that outputs a list) for the nodes that take them whole.

A node with `is_input_list=True` is called once with every input as a list: a list of IMAGE batches
[B_i, H_i, W_i, C] that may differ in size, and one-item lists for its widgets and models.
"""

from __future__ import annotations

from typing import Any

import torch

from ..f2d_core.errors import F2DError


def first(values: list[Any] | None, name: str) -> Any:
    """The one value of a widget or model input of a list node; a clear error if several were linked in."""
    if values is None:
        return None
    same = (v is values[0] or (isinstance(v, (bool, int, float, str)) and v == values[0]) for v in values)
    if not all(same):
        raise F2DError(
            f'"{name}" was given a list of {len(values)} different values; this node takes one: link a single '
            "value (only the images may be a list)."
        )
    return values[0]


def flat_images(batches: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every image [H, W, C] of a list of IMAGE batches [B_i, H_i, W_i, C], in order."""
    return [image for batch in batches for image in batch]


def one_batch(batches: list[torch.Tensor], what: str) -> torch.Tensor:
    """A list of IMAGE batches as one batch [sum B_i, H, W, C]; a clear error when their sizes differ."""
    if len(batches) == 1:
        return batches[0]
    sizes = sorted({tuple(batch.shape[1:]) for batch in batches})
    if len(sizes) > 1:
        shown = ", ".join(f"{w}x{h}" for h, w, _ in sizes[:4])
        raise F2DError(
            f"{what}: the image list holds images of different sizes ({shown}), which cannot make one batch; "
            "scale them to one size first (Upscale Image), or send a batch."
        )
    return torch.cat(batches)
