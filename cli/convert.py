"""Combine the official msid.pt + mapping.pt into one .safetensors, from any folder.

    cd ComfyUI
    python custom_nodes/comfyui-face2diffusion/cli/convert.py models/face2diffusion/msid.pt \\
        models/face2diffusion/mapping.pt -o models/face2diffusion/face2diffusion.safetensors

The same as `python -m f2d_core.convert` run in the pack's folder (see f2d_core/convert.py).
"""

from __future__ import annotations

import sys
from pathlib import Path

PACK_DIR = Path(__file__).resolve().parents[1]
if str(PACK_DIR) not in sys.path:
    sys.path.insert(0, str(PACK_DIR))

from f2d_core.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(prog="cli/convert.py"))
