"""Load the official `msid.pt` / `mapping.pt` (or converted `.safetensors`) and write combined files."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .atomic_io import atomic_write
from .errors import WeightFileError
from .identity.mapper import F2DMapper
from .identity.msid_encoder import MSIDEncoder
from .weight_files import StateDict, load_into, read_weights

log = logging.getLogger(__name__)

MSID_PREFIX = "msid."
MAPPER_PREFIX = "mapper."
FORMAT_NAME = "face2diffusion"
MSID_WHAT = "the F2D MSID encoder (msid.pt)"
MAPPER_WHAT = "the F2D mapper (mapping.pt)"


@dataclass
class F2DModels:
    """The two trained parts of Face2Diffusion and where they came from."""

    msid: MSIDEncoder
    mapper: F2DMapper
    sources: dict[str, str]


def _split(sd: StateDict, prefix: str) -> StateDict:
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}


def _is_combined(sd: StateDict, metadata: dict[str, str]) -> bool:
    """Whether a file is the converter's combined file (both parts, prefixed)."""
    return metadata.get("format") == FORMAT_NAME or any(k.startswith((MSID_PREFIX, MAPPER_PREFIX)) for k in sd)


def _part(sd: StateDict, metadata: dict[str, str], prefix: str) -> StateDict:
    """The msid or mapper tensors of a file, whether combined (prefixed) or plain."""
    return _split(sd, prefix) if _is_combined(sd, metadata) else sd


_PARTS = {  # prefix in a combined file -> (model, what it is, what a file holding only the other part lacks)
    MSID_PREFIX: (MSIDEncoder, MSID_WHAT, "the MSID encoder (only the mapper)"),
    MAPPER_PREFIX: (F2DMapper, MAPPER_WHAT, "the mapper (only the MSID encoder)"),
}


def _load_part(weights: tuple[StateDict, dict[str, str]], path: Path | str, prefix: str):
    """One part of a read weight file, checked and loaded."""
    model_type, what, lacking = _PARTS[prefix]
    part = _part(*weights, prefix)
    if not part:
        raise WeightFileError(f"{path} is a Face2Diffusion file without {lacking}.")
    return load_into(model_type, part, path, what)


def load_msid(path: Path | str) -> MSIDEncoder:
    """The MSID encoder from `msid.pt` or a `.safetensors` holding it (plain or combined)."""
    return _load_part(read_weights(path), path, MSID_PREFIX)


def load_mapper(path: Path | str) -> F2DMapper:
    """The mapper from `mapping.pt`, a trained mapper, or a combined `.safetensors`."""
    return _load_part(read_weights(path), path, MAPPER_PREFIX)


def load_f2d_models(msid_path: Path | str, mapper_path: Path | str | None = None) -> F2DModels:
    """Both parts: from two files, or from one combined `.safetensors` (read once) when `mapper_path` is None
    or the same file; WeightFileError when that one file is not a combined one (e.g. a plain msid.pt)."""
    mapper_path = mapper_path or msid_path
    msid_weights = read_weights(msid_path)
    msid = _load_part(msid_weights, msid_path, MSID_PREFIX)
    same_file = Path(mapper_path) == Path(msid_path)
    if same_file and not _is_combined(*msid_weights):
        raise WeightFileError(
            f"{msid_path} holds only {MSID_WHAT}, so the mapper cannot be read from it: reading both parts from the "
            "MSID file works only with a combined .safetensors made by the converter (cli/convert.py msid.pt "
            "mapping.pt). Choose mapping.pt as the mapper, or convert the two files into one."
        )
    return F2DModels(
        msid=msid,
        mapper=_load_part(msid_weights if same_file else read_weights(mapper_path), mapper_path, MAPPER_PREFIX),
        sources={"msid": Path(msid_path).name, "mapper": Path(mapper_path).name},
    )


def sha256_of(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def save_f2d_safetensors(
    path: Path | str,
    msid: MSIDEncoder | None = None,
    mapper: F2DMapper | None = None,
    metadata: dict[str, object] | None = None,
) -> Path:
    """Write the given parts into one `.safetensors` (keys `msid.*`, `mapper.*`), atomically.

    Raises `errors.WriteError` when it cannot be written; a previous file of that name is then intact.
    """
    tensors: StateDict = {}
    for prefix, module in ((MSID_PREFIX, msid), (MAPPER_PREFIX, mapper)):
        if module is not None:
            for k, v in module.state_dict().items():
                tensors[prefix + k] = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
    meta = {"format": FORMAT_NAME, "format_version": "1"}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    what = "mapper" if msid is None else "Face2Diffusion weights"
    atomic_write(path, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), meta), what)
    log.info("Wrote %s (%d tensors)", path, len(tensors))
    return path
