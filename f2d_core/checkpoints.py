"""Load the official `msid.pt` / `mapping.pt` (or converted `.safetensors`) and write combined files."""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import WeightFileError
from .file_writes import write_atomically
from .identity.mapper import ExpressionMixing, F2DMapper
from .identity.mapper_xl import DEFAULT_POOLED_SOURCE, POOLED_SOURCES, F2DMapperXL
from .identity.msid_encoder import MSIDEncoder
from .weight_files import StateDict, load_into, read_weights

log = logging.getLogger(__name__)

MSID_PREFIX = "msid."
MAPPER_PREFIX = "mapper."
FORMAT_NAME = "face2diffusion"
MSID_WHAT = "the F2D MSID encoder (msid.pt)"
MAPPER_WHAT = "the F2D mapper (mapping.pt)"
MAPPER_XL_WHAT = "the F2D SDXL mapper"
SDXL_MAPPER_KEY = "heads.g."  # a mapper with a bigG head is for SDXL; `i2t_first.` at the top is SD1.x
FAMILY_NAMES = {"sd1": "SD1.x", "sdxl": "SDXL"}


@dataclass
class F2DModels:
    """The two trained parts of Face2Diffusion and where they came from."""

    msid: MSIDEncoder
    mapper: F2DMapper | F2DMapperXL
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


def mapper_family(part: StateDict) -> str:
    """ "sdxl" for a mapper state dict with a bigG head (`heads.g.*`), else "sd1"."""
    return "sdxl" if any(k.startswith(SDXL_MAPPER_KEY) for k in part) else "sd1"


def _load_part(weights: tuple[StateDict, dict[str, str]], path: Path | str, prefix: str):
    """One part of a read weight file, checked and loaded; a mapper as F2DMapper or F2DMapperXL by its keys."""
    model_type, what, lacking = _PARTS[prefix]
    part = _part(*weights, prefix)
    if not part:
        raise WeightFileError(f"{path} is a Face2Diffusion file without {lacking}.")
    if prefix == MAPPER_PREFIX and mapper_family(part) == "sdxl":
        pooled = weights[1].get("pooled_source", DEFAULT_POOLED_SOURCE)
        if pooled not in POOLED_SOURCES:
            raise WeightFileError(
                f"{path}: metadata pooled_source is {pooled!r}, expected one of {POOLED_SOURCES}; the file is damaged "
                "or from a newer version of the pack."
            )
        mapper = load_into(F2DMapperXL, part, path, MAPPER_XL_WHAT)
        mapper.pooled_source = pooled
        mapper.text_encoder_fingerprint = weights[1].get("text_encoder_fingerprint")
        return mapper
    return load_into(model_type, part, path, what)


def load_msid(path: Path | str) -> MSIDEncoder:
    """The MSID encoder from `msid.pt` or a `.safetensors` holding it (plain or combined)."""
    return _load_part(read_weights(path), path, MSID_PREFIX)


def load_mapper(path: Path | str, family: str | None = None) -> F2DMapper | F2DMapperXL:
    """The mapper from `mapping.pt`, a trained mapper, or a combined `.safetensors`: an `F2DMapper` (SD1.x) or,
    for a file with `mapper.heads.g.*` keys, an `F2DMapperXL` (SDXL).

    With `family` ("sd1" / "sdxl"), a mapper of the other family raises WeightFileError naming both.
    """
    mapper = _load_part(read_weights(path), path, MAPPER_PREFIX)
    if family is not None and mapper.family != family:
        raise WeightFileError(
            f"{path} is an {FAMILY_NAMES[mapper.family]} F2D mapper, but an {FAMILY_NAMES[family]} one is needed "
            f"here: choose a mapper trained for {FAMILY_NAMES[family]}."
        )
    return mapper


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
    mapper: ExpressionMixing | None = None,
    metadata: dict[str, object] | None = None,
) -> Path:
    """Write the given parts into one `.safetensors` (keys `msid.*`, `mapper.*`), atomically.

    An SDXL mapper (`F2DMapperXL`) adds the metadata `format_version 2`, `family sdxl`, `s_star_space token`
    and its `pooled_source` (shared docs sdxl.md 2.5); SD1.x files stay version 1 and unchanged.

    Raises `file_writes.WriteFailed` when it cannot be written; a previous file of that name is then intact.
    """
    tensors: StateDict = {}
    for prefix, module in ((MSID_PREFIX, msid), (MAPPER_PREFIX, mapper)):
        if module is not None:
            for k, v in module.state_dict().items():
                tensors[prefix + k] = v.detach().to("cpu", torch.float32 if v.is_floating_point() else v.dtype)
    meta = {"format": FORMAT_NAME, "format_version": "1"}
    if isinstance(mapper, F2DMapperXL):
        meta |= {"format_version": "2", "family": mapper.family, "s_star_space": mapper.s_star_space}
        meta["pooled_source"] = mapper.pooled_source
        if mapper.text_encoder_fingerprint:
            meta["text_encoder_fingerprint"] = mapper.text_encoder_fingerprint
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    path = Path(path)
    what = "mapper" if msid is None else "Face2Diffusion weights"
    write_atomically(path, what, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), meta))
    log.info("Wrote %s (%d tensors)", path, len(tensors))
    return path
