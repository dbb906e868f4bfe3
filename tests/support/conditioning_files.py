"""Reading back what the probe node F2DTestSaveConditioning wrote: each conditioning entry, whole."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open


@dataclass
class SavedEntry:
    """One conditioning entry: its tensor [1, 77k, 768 | 2048], its mask (or None) and its plain options."""

    cond: torch.Tensor
    mask: torch.Tensor | None
    options: dict
    pooled: torch.Tensor | None = None  # SDXL's pooled_output [1, 1280]


def read_conditioning(path: Path) -> list[SavedEntry]:
    """The entries of a CONDITIONING saved by the probe node, in order."""
    with safe_open(str(path), framework="pt") as f:
        entries = json.loads(f.metadata()["entries"])
        names = set(f.keys())
        return [
            SavedEntry(
                cond=f.get_tensor(f"cond_{i}"),
                mask=f.get_tensor(f"mask_{i}") if f"mask_{i}" in names else None,
                options=options,
                pooled=f.get_tensor(f"pooled_{i}") if f"pooled_{i}" in names else None,
            )
            for i, options in enumerate(entries)
        ]
