"""Where a trained mapper may be written: never over a file that is not one of this pack's mappers."""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open

from ..checkpoints import FORMAT_NAME, MAPPER_PREFIX
from ..errors import F2DError


def _not_a_mapper(path: Path) -> str | None:
    """What `path` is when it is not a mapper this pack wrote (None when it is one)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata, keys = f.metadata() or {}, list(f.keys())
    except Exception:  # any unreadable file is "not a mapper", whatever the reader's error
        return "not a safetensors file this pack can read"
    if metadata.get("format") != FORMAT_NAME:
        return "a safetensors file of another model"
    if not keys or not all(k.startswith(MAPPER_PREFIX) for k in keys):
        return "a Face2Diffusion file that holds more than a mapper (e.g. the MSID encoder)"
    return None


def check_mapper_destination(path: Path, overwrite: bool) -> None:
    """Raise F2DError unless a trained mapper may be written to `path`.

    A missing file may be written; a mapper this pack wrote (format "face2diffusion", only `mapper.*`
    tensors) only with `overwrite`; any other file never (it is left untouched).
    """
    path = Path(path)
    if not path.exists():
        return
    other = _not_a_mapper(path)
    if other is not None:
        raise F2DError(
            f"{path} already exists and is {other}: it is left alone. Choose another name for the trained mapper."
        )
    if not overwrite:
        raise F2DError(
            f"{path} already holds a Face2Diffusion mapper. Turn on overwrite to replace it, or choose another name."
        )
