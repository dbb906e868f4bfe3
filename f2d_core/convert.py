"""Command line: convert pickle weight files (`.pt`, `.pth`) into `.safetensors`.

From any folder, with the pack's own script (paths are relative to the folder you run it in):

    cd ComfyUI
    python custom_nodes/comfyui-face2diffusion/cli/convert.py models/face2diffusion/msid.pt \\
        models/face2diffusion/mapping.pt -o models/face2diffusion/face2diffusion.safetensors
    python custom_nodes/comfyui-face2diffusion/cli/convert.py --each models/face2diffusion/epoch_20.pth

or, from the pack's folder, `python -m f2d_core.convert msid.pt mapping.pt -o face2diffusion.safetensors`.
Run it under torch >= 2.10: older torch refuses pickle files (see `weight_files.SAFE_TORCH`); the
`.safetensors` it writes load under any torch.
Exit codes: 0 written; 1 an input file cannot be used (the message names the argument and the fix).
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from safetensors.torch import save_file

from .atomic_io import atomic_write
from .checkpoints import load_mapper, load_msid, save_f2d_safetensors, sha256_of
from .errors import F2DError, WeightFileError
from .weight_files import read_weights

log = logging.getLogger("f2d_core.convert")

# argument -> the fix the command line gives when its file cannot be used
ARGUMENTS = {
    "msid": "give the official msid.pt as the first argument (MSID)",
    "mapping": "give the official mapping.pt, or a mapper you trained, as the second argument (MAPPING)",
    "each": "give pickle weight files (.pt/.pth) holding a state dict",
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


def convert_file(path: Path) -> Path:
    """One pickle weight file -> `<stem>.safetensors` beside it, its tensors unchanged.

    The network of a training checkpoint is kept (Deep3DFaceRecon's `net_recon` of epoch_20.pth).
    Raises ArgumentFileError for a file that is no state dict.
    """
    tensors, _ = _load(lambda p: read_weights(p, select="net_recon"), Path(path), "each")
    out = Path(path).with_suffix(".safetensors")
    metadata = {"source": Path(path).name, "source_sha256": sha256_of(path)}
    atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata))
    log.info("wrote %s (%d tensors)", out, len(tensors))
    return out


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "files", type=Path, nargs="+", help="msid.pt then mapping.pt (or a trained mapper); with --each, any files"
    )
    parser.add_argument(
        "-o",
        "--out",
        type=Path,
        default=Path("face2diffusion.safetensors"),
        help="the combined file to write; put it in ComfyUI/models/face2diffusion (default: %(default)s)",
    )
    parser.add_argument("--each", action="store_true", help="convert each file alone, to <name>.safetensors beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.each and len(args.files) != 2:
        parser.error("give MSID and MAPPING (msid.pt and mapping.pt), or --each with any number of files")
    try:
        if args.each:
            for path in args.files:
                convert_file(path)
            return 0
        written = convert(*args.files, args.out)
    except F2DError as e:
        log.error("%s", e)
        return 1
    log.info("wrote %s: choose it as msid_file and '(in the MSID file)' as mapper_file", written)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
