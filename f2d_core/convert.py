"""Command line: convert the official `msid.pt` + `mapping.pt` into one `.safetensors` with metadata.

From any folder, with the pack's own script (paths are relative to the folder you run it in):

    cd ComfyUI
    python custom_nodes/comfyui-face2diffusion/cli/convert.py models/face2diffusion/msid.pt \\
        models/face2diffusion/mapping.pt -o models/face2diffusion/face2diffusion.safetensors

or, from the pack's folder, `python -m f2d_core.convert msid.pt mapping.pt -o face2diffusion.safetensors`.
Exit codes: 0 written; 1 an input file cannot be used (the message names the argument and the fix).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .checkpoints import load_mapper, load_msid, save_f2d_safetensors, sha256_of
from .errors import F2DError, WeightFileError

log = logging.getLogger("f2d_core.convert")

# argument -> the fix the command line gives when its file cannot be used
ARGUMENTS = {
    "msid": "give the official msid.pt as the first argument (MSID)",
    "mapping": "give the official mapping.pt, or a mapper you trained, as the second argument (MAPPING)",
}


class ArgumentFileError(F2DError):
    """An input file of the converter cannot be used; the message names the argument and the fix."""


def _load(loader, path: Path, argument: str):
    """`loader(path)`, its WeightFileError told as the command line's: the argument, the problem, the fix."""
    try:
        return loader(path)
    except WeightFileError as e:
        raise ArgumentFileError(f"{argument.upper()} {path}: {e.problem} Fix: {ARGUMENTS[argument]}.") from e


def convert(msid_path: Path, mapping_path: Path, out_path: Path) -> Path:
    """Validate both files by loading them, then write them together with their provenance.

    Raises ArgumentFileError naming the argument (MSID or MAPPING) whose file cannot be used.
    """
    msid, mapper = _load(load_msid, msid_path, "msid"), _load(load_mapper, mapping_path, "mapping")
    metadata = {
        "source_msid": msid_path.name,
        "source_msid_sha256": sha256_of(msid_path),
        "source_mapping": mapping_path.name,
        "source_mapping_sha256": sha256_of(mapping_path),
        "license": "Face2Diffusion official weights: CC BY-NC-SA 4.0 (non-commercial)",
    }
    return save_f2d_safetensors(out_path, msid, mapper, metadata)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("msid", type=Path, help="the official msid.pt")
    parser.add_argument("mapping", type=Path, help="the official mapping.pt (or a trained mapper)")
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("face2diffusion.safetensors"),
        help="the combined file to write; put it in ComfyUI/models/face2diffusion (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        written = convert(args.msid, args.mapping, args.out)
    except F2DError as e:
        log.error("%s", e)
        return 1
    log.info("wrote %s: choose it as msid_file and '(in the MSID file)' as mapper_file", written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
