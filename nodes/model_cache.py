"""Auxiliary model files (expression model, face parser) loaded once per file version and device."""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import comfy.model_management
from torch import nn

from .model_paths import weight_path

Loader = Callable[[Path], nn.Module]


@lru_cache(maxsize=4)
def _loaded(loader: Loader, path: Path, mtime_ns: int, device: str) -> nn.Module:
    return loader(path).to(device)


def load_weight_file(loader: Loader, filename: str, how_to_get: str) -> nn.Module:
    """`loader(path)` of a file in the face2diffusion folders, on ComfyUI's device; reloaded when the file changes."""
    path = weight_path(filename, how_to_get)
    device = str(comfy.model_management.get_torch_device())
    return _loaded(loader, path, path.stat().st_mtime_ns, device)
