"""Command line: convert pickle weight files (`.pt`, `.pth`) into `.safetensors`.

python -m f2d_core.convert msid.pt mapping.pt -o face2diffusion.safetensors
python -m f2d_core.convert --each epoch_20.pth 79999_iter.pth    # -> epoch_20.safetensors, 79999_iter.safetensors

Run it under torch >= 2.10: older torch refuses pickle files (see `weight_files.SAFE_TORCH`). The
`.safetensors` it writes load under any torch.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from safetensors.torch import save_file

from .atomic_io import atomic_write
from .checkpoints import load_f2d_models, save_f2d_safetensors, sha256_of
from .errors import F2DError
from .weight_files import read_weights

log = logging.getLogger("f2d_core.convert")


def convert(msid_path: Path, mapping_path: Path, out_path: Path) -> Path:
    """Validate both files by loading them, then write them together with their provenance."""
    models = load_f2d_models(msid_path, mapping_path)
    metadata = {
        "source_msid": msid_path.name,
        "source_msid_sha256": sha256_of(msid_path),
        "source_mapping": mapping_path.name,
        "source_mapping_sha256": sha256_of(mapping_path),
        "license": "Face2Diffusion official weights: CC BY-NC-SA 4.0 (non-commercial)",
    }
    return save_f2d_safetensors(out_path, models.msid, models.mapper, metadata)


def convert_file(path: Path) -> Path:
    """One pickle weight file -> `<stem>.safetensors` beside it, its tensors unchanged.

    The network of a training checkpoint is kept (Deep3DFaceRecon's `net_recon` of epoch_20.pth);
    raises WeightFileError for a file that is no state dict.
    """
    tensors, _ = read_weights(path, select="net_recon")
    out = Path(path).with_suffix(".safetensors")
    metadata = {"source": Path(path).name, "source_sha256": sha256_of(path)}
    atomic_write(out, lambda tmp: save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata))
    log.info("Wrote %s (%d tensors)", out, len(tensors))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", type=Path, nargs="+", help="msid.pt and mapping.pt; with --each, any weight files")
    parser.add_argument("-o", "--out", type=Path, default=Path("face2diffusion.safetensors"))
    parser.add_argument("--each", action="store_true", help="convert each file on its own, beside it")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not args.each and len(args.files) != 2:
        parser.error("give msid.pt and mapping.pt (or --each with any number of files)")
    try:
        if args.each:
            for path in args.files:
                convert_file(path)
        else:
            convert(*args.files, args.out)
    except F2DError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
