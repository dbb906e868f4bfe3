"""Keep a face as a small `.safetensors`: S*, its identity vector, thumbnails of the crops, settings."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic_io import atomic_write
from ..errors import WeightFileError
from ..weight_files import read_weights
from .face_encoder import EncodedFace

FACE_FORMAT = "face2diffusion-face"
_SHAPES = {"s_star": (2, 768), "idvec": (1536,)}


def save_face(path: Path | str, face: EncodedFace) -> Path:
    """Write `face` atomically; the photo itself is not stored, only its 112x112 aligned crops."""
    crops = (face.crops.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    tensors = {"s_star": face.s_star.float().contiguous(), "idvec": face.idvec.float().contiguous(), "crops": crops}
    metadata = {"format": FACE_FORMAT, "format_version": "1", "settings": json.dumps(face.settings, default=str)}
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata), "face file")


def load_face(path: Path | str) -> EncodedFace:
    """A face saved by `save_face`; a clear error for any other file."""
    tensors, metadata = read_weights(path)
    if metadata.get("format") != FACE_FORMAT:
        raise WeightFileError(
            f"{path} is not a saved F2D face (no '{FACE_FORMAT}' format tag): save faces with the Save F2D Face node."
        )
    for key, shape in _SHAPES.items():
        if key not in tensors or tuple(tensors[key].shape) != shape:
            found = tuple(tensors[key].shape) if key in tensors else "missing"
            raise WeightFileError(f"{path}: tensor '{key}' should have shape {shape}, found {found}; save it again.")
    crops = tensors.get("crops", torch.zeros(0, 112, 112, 3, dtype=torch.uint8))
    return EncodedFace(
        s_star=tensors["s_star"],
        idvec=tensors["idvec"],
        crops=crops.permute(0, 3, 1, 2).float() / 255,
        settings=json.loads(metadata.get("settings", "{}")),
    )
