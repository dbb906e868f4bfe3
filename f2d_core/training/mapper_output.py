"""Where a trained mapper may be written: never over a file that is not one of this pack's mappers."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from safetensors import safe_open

from ..checkpoints import FORMAT_NAME, MAPPER_PREFIX
from ..errors import F2DError


def _read_header(path: Path) -> tuple[dict[str, str], list[str]] | None:
    """(metadata, tensor names) of a safetensors file; None when it cannot be read as one."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {}), list(f.keys())
    except Exception:  # any unreadable file is "not a mapper", whatever the reader's error
        return None


def _not_a_mapper(header: tuple[dict[str, str], list[str]] | None) -> str | None:
    """What a file is when it is not a mapper this pack wrote (None when it is one)."""
    if header is None:
        return "not a safetensors file this pack can read"
    metadata, keys = header
    if metadata.get("format") != FORMAT_NAME:
        return "a safetensors file of another model"
    if not keys or not all(k.startswith(MAPPER_PREFIX) for k in keys):
        return "a Face2Diffusion file that holds more than a mapper (e.g. the MSID encoder)"
    return None


def run_of(settings: Mapping[str, object]) -> tuple[object, object] | None:
    """The run a trained mapper comes from: (run folder, run identity) of its training settings, or None."""
    run_dir, identity = settings.get("run_dir"), settings.get("run_identity")
    return (str(run_dir), identity) if run_dir and identity else None


def _saved_run(metadata: Mapping[str, str]) -> tuple[tuple[object, object] | None, str]:
    """(run, trained steps) a saved mapper's metadata records; (None, "") when it does not say."""
    try:
        settings = json.loads(metadata.get("training_settings", "{}"))
    except json.JSONDecodeError:
        return None, ""
    return (run_of(settings) if isinstance(settings, dict) else None), metadata.get("trained_steps", "")


def check_mapper_destination(path: Path, overwrite: bool, run: tuple[object, object] | None = None) -> str:
    """Raise F2DError unless a trained mapper may be written to `path`; a note when it replaces one.

    A missing file may be written. A mapper this pack wrote (format "face2diffusion", only `mapper.*`
    tensors) is replaced with `overwrite`, or when it was saved by the same run (`run`: `run_of` of the
    new mapper's settings: the same run folder and run identity), as when a finished run is continued
    with more steps: it is that run's own earlier output. Any other file is never replaced (it is left
    untouched). The note is "" unless an earlier mapper is replaced.
    """
    path = Path(path)
    if not path.exists():
        return ""
    header = _read_header(path)
    other = _not_a_mapper(header)
    if other is not None:
        raise F2DError(
            f"{path} already exists and is {other}: it is left alone. Choose another name for the trained mapper."
        )
    saved_run, saved_steps = _saved_run(header[0])
    if run is not None and saved_run == run:
        return f"replaced this run's earlier mapper (step {saved_steps or '?'}) in {path.name}"
    if not overwrite:
        raise F2DError(
            f"{path} already holds a Face2Diffusion mapper from another run. Turn on overwrite to replace it, or "
            "choose another name. (Continuing the same run, with the same run_name and more steps, replaces its "
            "own mapper without overwrite.)"
        )
    return f"replaced the mapper in {path.name} (overwrite)"
