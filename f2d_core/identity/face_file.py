"""Keep a face as a small `.safetensors`: S*, its identity vector, thumbnails of the crops, settings.

Version 1 (SD1.x): `s_star` [2, 768]. Version 2 (SDXL, shared docs sdxl.md 2.5): S* per tower under ComfyUI's
embedding keys `clip_l` [2, 768] and `clip_g` [2, 1280] (token space), metadata `family sdxl`,
`s_star_space token`, `pooled_source`; such a file is also an ordinary ComfyUI SDXL embedding
(`embedding:name`), see `save_embedding`.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..atomic_io import atomic_write
from ..errors import WeightFileError
from ..weight_files import read_weights
from .face_encoder import EncodedFace
from .mapper_xl import DEFAULT_POOLED_SOURCE, POOLED_SOURCES
from .s_star_family import EMBEDDING_KEYS, s_star_family

FACE_FORMAT = "face2diffusion-face"
_SHAPES = {"s_star": (2, 768), "idvec": (1536,)}
_SHAPES_SDXL = {"clip_l": (2, 768), "clip_g": (2, 1280), "idvec": (1536,)}


def _s_star_tensors(face: EncodedFace) -> dict[str, torch.Tensor]:
    """The file's S* tensors: `s_star` (SD1.x) or `clip_l` / `clip_g` (SDXL), float32."""
    if s_star_family(face.s_star) == "sd1":
        return {"s_star": face.s_star.float().contiguous()}
    return {EMBEDDING_KEYS[t]: v.float().contiguous() for t, v in face.s_star.items()}


def save_face(path: Path | str, face: EncodedFace) -> Path:
    """Write `face` atomically; the photo itself is not stored, only its 112x112 aligned crops."""
    crops = (face.crops.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()
    tensors = {**_s_star_tensors(face), "idvec": face.idvec.float().contiguous(), "crops": crops}
    metadata = {"format": FACE_FORMAT, "format_version": "1", "settings": json.dumps(face.settings, default=str)}
    if s_star_family(face.s_star) == "sdxl":
        metadata |= {"format_version": "2", "family": "sdxl", "s_star_space": "token"}
        metadata["pooled_source"] = face.pooled_source or DEFAULT_POOLED_SOURCE
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), metadata))


def save_embedding(path: Path | str, face: EncodedFace) -> Path:
    """Write an SDXL face's S* as a ComfyUI textual-inversion file {"clip_l": [2, 768], "clip_g": [2, 1280]}
    (fp32), usable as `embedding:<name>` in any SDXL prompt without the pack (ComfyUI's `load_embed` reads the
    tensor under each tower's `embedding_key`). Raises ValueError for an SD1.x face: its official S* depends on
    the identifier's position, so a position-free file would only approximate it."""
    if s_star_family(face.s_star) != "sdxl":
        raise ValueError("only SDXL faces can be saved as an embedding file")
    tensors = _s_star_tensors(face)
    return atomic_write(Path(path), lambda tmp: save_file(tensors, str(tmp), {"format": "face2diffusion-embedding"}))


def _check_shapes(path: Path | str, tensors: dict[str, torch.Tensor], shapes: dict[str, tuple[int, ...]]) -> None:
    for key, shape in shapes.items():
        if key not in tensors or tuple(tensors[key].shape) != shape:
            found = tuple(tensors[key].shape) if key in tensors else "missing"
            raise WeightFileError(f"{path}: tensor '{key}' should have shape {shape}, found {found}; save it again.")


def load_face(path: Path | str) -> EncodedFace:
    """A face saved by `save_face` (SD1.x version 1 or SDXL version 2); a clear error for any other file."""
    tensors, metadata = read_weights(path)
    if metadata.get("format") != FACE_FORMAT:
        raise WeightFileError(
            f"{path} is not a saved F2D face (no '{FACE_FORMAT}' format tag): save faces with the Save F2D Face node."
        )
    crops = tensors.get("crops", torch.zeros(0, 112, 112, 3, dtype=torch.uint8))
    pooled_source = None
    if metadata.get("family") == "sdxl":
        _check_shapes(path, tensors, _SHAPES_SDXL)
        s_star = {t: tensors[key] for t, key in EMBEDDING_KEYS.items()}
        pooled_source = metadata.get("pooled_source", DEFAULT_POOLED_SOURCE)
        if pooled_source not in POOLED_SOURCES:
            raise WeightFileError(f"{path}: unknown pooled_source {pooled_source!r}; save the face again.")
    else:
        _check_shapes(path, tensors, _SHAPES)
        s_star = tensors["s_star"]
    return EncodedFace(
        s_star=s_star,
        idvec=tensors["idvec"],
        crops=crops.permute(0, 3, 1, 2).float() / 255,
        settings=json.loads(metadata.get("settings", "{}")),
        pooled_source=pooled_source,
    )
