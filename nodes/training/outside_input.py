"""Whether the server's owner lets training read a folder outside ComfyUI's input folder.

A widget cannot grant that: any client of the HTTP API can set one. The owner grants it where only
the owner can write, each a list of folders (a folder inside one of them is allowed):
- the environment variable F2D_ALLOW_OUTSIDE_INPUT, folders separated by the OS path separator
  (':' on Linux and macOS, ';' on Windows), set when starting ComfyUI;
- the file `face2diffusion/allowed_training_folders.txt` in ComfyUI's user directory, one folder
  per line (blank lines and lines starting with '#' are ignored).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from ...f2d_core.errors import DatasetError
from ...f2d_core.training.run_identity import existing_spelling

ALLOW_ENV = "F2D_ALLOW_OUTSIDE_INPUT"
ALLOW_FILE = Path("face2diffusion") / "allowed_training_folders.txt"


def allowed_outside_folders(user_dir: Path, environ: Mapping[str, str] = os.environ) -> list[Path]:
    """The folders the owner allows, from `ALLOW_ENV` and `<user_dir>/ALLOW_FILE` (resolved, absolute only)."""
    entries = [e for e in environ.get(ALLOW_ENV, "").split(os.pathsep) if e.strip()]
    listing = Path(user_dir) / ALLOW_FILE
    if listing.is_file():
        lines = [line.strip() for line in listing.read_text(encoding="utf-8").splitlines()]
        entries += [line for line in lines if line and not line.startswith("#")]
    folders = [Path(e.strip()).expanduser() for e in entries]
    return [f.resolve() for f in folders if f.is_absolute()]


def check_outside_input(path: Path, input_dir: Path, user_dir: Path, environ: Mapping[str, str] = os.environ) -> Path:
    """`path` resolved, when it lies inside `input_dir` or a folder the owner allows; else a DatasetError."""
    path, base = Path(path).resolve(), Path(input_dir).resolve()
    if path.is_relative_to(base) or any(path.is_relative_to(f) for f in allowed_outside_folders(user_dir, environ)):
        return path
    raise DatasetError(
        f"The training folder {path} is outside ComfyUI's input folder {base}. Move the photos into the input "
        f"folder, or, as the owner of this server, allow the folder: list it in "
        f"{Path(user_dir) / ALLOW_FILE} (one folder per line), or start ComfyUI with {ALLOW_ENV}={path}."
    )


def training_folder(folder: str) -> Path:
    """A training folder given in the graph (relative to ComfyUI's input folder, or absolute), checked."""
    import folder_paths

    base = Path(folder_paths.get_input_directory())
    if not folder.strip() or (base / folder.strip()).resolve() == base.resolve():
        raise DatasetError(
            f"Name the folder of training photos inside ComfyUI's input folder {base} (e.g. 'faces'), not the "
            "input folder itself: it holds every image uploaded to this server."
        )
    path = existing_spelling(base / Path(folder).expanduser())  # "Zo\u00eb" typed, "Zoe\u0308" on disk (macOS)
    return check_outside_input(path, base, Path(folder_paths.get_user_directory()))
