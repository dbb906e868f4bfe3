"""Socket types of the scoring nodes and the per-image scores that travel between them."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from comfy_api.latest import io

F2DRecognizerSocket = io.Custom("F2D_RECOGNIZER")
F2DClipScorerSocket = io.Custom("F2D_CLIP_SCORER")
F2DScoresSocket = io.Custom("F2D_SCORES")


@dataclass
class ImageScores:
    """One score per image of a batch (`values` [B] float32), and the columns shown in the node's table."""

    kind: str  # "identity" or "prompt"
    values: torch.Tensor
    columns: dict[str, torch.Tensor] = field(default_factory=dict)


def score_table(columns: dict[str, torch.Tensor], index: list[int] | None = None) -> str:
    """A plain-text table, one row per image: `image  col1  col2 ...` (index: which image numbers to show)."""
    names = list(columns)
    count = len(next(iter(columns.values()))) if columns else 0
    numbers = index if index is not None else list(range(count))
    lines = ["image  " + "  ".join(f"{n:>10}" for n in names)]
    for row, number in enumerate(numbers):
        cells = []
        for n in names:
            value = columns[n][row]
            cells.append(f"{'yes' if value else 'no':>10}" if value.dtype == torch.bool else f"{float(value):>10.4f}")
        lines.append(f"{number + 1:>5}  " + "  ".join(cells))
    return "\n".join(lines)
