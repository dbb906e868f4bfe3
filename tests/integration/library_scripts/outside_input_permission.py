"""Library script (run by tests/support/comfy_library_run.py): who may let training read outside input/.

Points ComfyUI's folder_paths at fresh input and user folders, then asks `training_folder` about a
folder inside input/, one outside it, and the same one once the owner allowed it by the environment
variable and by the file in the user directory.
"""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths
from comfyui_face2diffusion.f2d_core.errors import DatasetError
from comfyui_face2diffusion.nodes.training.outside_input import ALLOW_ENV, ALLOW_FILE, training_folder


def _ask(folder: str) -> str:
    try:
        return f"allowed: {training_folder(folder)}"
    except DatasetError as e:
        return f"refused: {e}"


def main(work_dir: str) -> dict:
    work = Path(work_dir)
    for name in ("input/faces", "user", "elsewhere/photos", "elsewhere_too/photos"):
        (work / name).mkdir(parents=True, exist_ok=True)
    folder_paths.set_input_directory(str(work / "input"))
    folder_paths.set_user_directory(str(work / "user"))
    outside, other = work / "elsewhere" / "photos", work / "elsewhere_too" / "photos"
    out = {"empty": _ask("  "), "input_itself": _ask(".")}
    out |= {"inside": _ask("faces"), "relative_escape": _ask("../elsewhere/photos"), "outside": _ask(str(outside))}
    os.environ[ALLOW_ENV] = str(work / "elsewhere")
    out["outside_env"], out["other_env"] = _ask(str(outside)), _ask(str(other))
    del os.environ[ALLOW_ENV]
    listing = work / "user" / ALLOW_FILE
    listing.parent.mkdir(parents=True, exist_ok=True)
    listing.write_text(f"# folders training may read\n\n{work / 'elsewhere_too'}\nrelative/ignored\n")
    out["outside_file"], out["other_file"] = _ask(str(outside)), _ask(str(other))
    out["listing"] = str(listing)
    return out
