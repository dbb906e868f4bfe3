"""Command line: convert the official `msid.pt` + `mapping.pt` into one `.safetensors` with metadata.

python -m f2d_core.convert msid.pt mapping.pt -o face2diffusion.safetensors
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from .checkpoints import load_f2d_models, save_f2d_safetensors, sha256_of
from .errors import F2DError

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("msid", type=Path, help="official msid.pt")
    parser.add_argument("mapping", type=Path, help="official mapping.pt (or a trained mapper)")
    parser.add_argument("-o", "--out", type=Path, default=Path("face2diffusion.safetensors"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        convert(args.msid, args.mapping, args.out)
    except F2DError as e:
        log.error("%s", e)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
