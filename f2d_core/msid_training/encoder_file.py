"""An MSID encoder from its file for analysis: `msid.pt`, a trained `.safetensors`, also a smaller trained one.

Files of the official architecture load through `checkpoints.load_msid` (every check it makes). A file
trained at another size (tests, quick experiments: `MSIDEncoder(width, depth, heads, tap_blocks)`) is
built from its own tensor shapes, the number of heads read from the architecture its trainer recorded
(`run_identity` metadata, trainer.architecture_of).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ..checkpoints import MSID_PREFIX, _part, load_msid
from ..errors import WeightFileError
from ..identity.msid_encoder import MSID_TAP_BLOCKS, MSID_WIDTH, MSIDEncoder
from ..weight_files import read_weights

OFFICIAL_DEPTH = 12


def load_msid_any_size(path: Path | str) -> MSIDEncoder:
    """The MSID encoder in `path` (eval mode, float32, CPU), of the official or a smaller architecture.

    Raises:
        WeightFileError: not an MSID encoder file, or a non-official size without a recorded number of
        heads (the file was not written by the MSID trainer).
    """
    sd, metadata = read_weights(path)
    part = _part(sd, metadata, MSID_PREFIX)
    if "cls_token" not in part or not any(k.startswith("norms.layer_") for k in part):
        return load_msid(path).eval()  # load_msid names what the file is instead
    width = part["cls_token"].shape[-1]
    depth = 1 + max(int(k.split(".")[1]) for k in part if k.startswith("blocks."))
    taps = tuple(sorted({int(k.split(".")[1].removeprefix("layer_")) for k in part if k.startswith("norms.layer_")}))
    if (width, depth, taps) == (MSID_WIDTH, OFFICIAL_DEPTH, MSID_TAP_BLOCKS):
        return load_msid(path).eval()
    recorded = json.loads(metadata.get("run_identity") or "{}").get("architecture", "")
    heads = re.search(r"heads (\d+)", recorded)
    if heads is None:
        raise WeightFileError(
            f"{path} holds an MSID encoder of width {width}, depth {depth}, taps {taps}, not the official "
            "architecture, and does not record its number of attention heads: it was not written by "
            "cli/train_msid.py."
        )
    encoder = MSIDEncoder(width=width, depth=depth, heads=int(heads.group(1)), tap_blocks=taps)
    try:
        encoder.load_state_dict(part)
    except RuntimeError as e:
        raise WeightFileError(f"{path}: the MSID tensors do not fit their own architecture: {e}") from None
    return encoder.eval()
