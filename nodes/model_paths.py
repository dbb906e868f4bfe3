"""Where the pack's model files live inside ComfyUI (and `extra_model_paths.yaml` remaps)."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..f2d_core.errors import WeightFileError
from ..f2d_core.faces.face_detection import list_model_packs
from ..f2d_core.folder_scan import skipped
from ..f2d_core.training.run_identity import run_folder_name

F2D_FOLDER = "face2diffusion"  # models/face2diffusion: msid.pt, mapping.pt, epoch_20.pth, 79999_iter.pth
FACES_FOLDER = "face2diffusion_faces"  # models/face2diffusion/faces: saved F2D faces
INSIGHTFACE_FOLDER = "insightface"  # models/insightface/models/<pack>, shared with InstantID, PuLID, ...
WEIGHT_EXTENSIONS = {".pt", ".pth", ".bin", ".safetensors"}


def _register(name: str, default: str, extensions: set[str]) -> None:
    """Add `default` to a model folder (kept after paths from extra_model_paths.yaml), with extensions."""
    folder_paths.add_model_folder_path(name, default)
    paths, exts = folder_paths.folder_names_and_paths[name]
    folder_paths.folder_names_and_paths[name] = (paths, set(exts) | extensions)


def register_model_folders() -> None:
    """Register this pack's model folders; safe to call more than once."""
    _register(F2D_FOLDER, os.path.join(folder_paths.models_dir, F2D_FOLDER), WEIGHT_EXTENSIONS)
    for f2d_dir in folder_paths.get_folder_paths(F2D_FOLDER):  # faces/ inside each, remapped ones first
        _register(FACES_FOLDER, os.path.join(f2d_dir, "faces"), {".safetensors"})
    _register(INSIGHTFACE_FOLDER, os.path.join(folder_paths.models_dir, INSIGHTFACE_FOLDER), set())


def _readable(filename: str) -> bool:
    """Whether a file ComfyUI lists in the face2diffusion folders is one (a broken symlink is skipped, logged)."""
    if any(os.path.isfile(os.path.join(folder, filename)) for folder in folder_paths.get_folder_paths(F2D_FOLDER)):
        return True
    skipped(Path(filename), "listed in the face2diffusion folders but not a file there (a broken symlink?)")
    return False


def weight_files(expected_name: str, name_hint: str = "") -> list[str]:
    """Files in the face2diffusion folders, those whose name contains `name_hint` first.

    `expected_name` is listed even when absent, so that choosing it reaches the node, whose error then
    says where to get the file, instead of ComfyUI's bare "value not in list".
    """
    files = [f for f in folder_paths.get_filename_list(F2D_FOLDER) if not f.startswith("faces/") and _readable(f)]
    hint = (name_hint or Path(expected_name).stem).lower()
    ordered = sorted(files, key=lambda f: (hint not in f.lower(), f))
    return ordered if expected_name in ordered else [expected_name, *ordered]


def weight_path(filename: str, how_to_get: str = "") -> Path:
    """Full path of a file in the face2diffusion folders, or an error saying where it should go."""
    path = folder_paths.get_full_path(F2D_FOLDER, filename)
    if path is None:
        folders = ", ".join(folder_paths.get_folder_paths(F2D_FOLDER))
        raise WeightFileError(f"{filename} is not in the face2diffusion model folder ({folders}). {how_to_get}".strip())
    return Path(path)


def training_cache_dir() -> Path:
    """Where prepared training photos are cached (survives restarts; not a model folder)."""
    return Path(folder_paths.get_user_directory()) / "face2diffusion" / "training_cache"


def training_run_dir(run_name: str) -> Path:
    """Where a training run keeps its resumable state: output/face2diffusion_training/<run_name>."""
    return Path(folder_paths.get_output_directory()) / "face2diffusion_training" / run_folder_name(run_name)


def insightface_roots() -> list[Path]:
    """Every registered insightface root (each holds `models/<pack>/`)."""
    return [Path(p) for p in folder_paths.get_folder_paths(INSIGHTFACE_FOLDER)]


def insightface_packs() -> list[str]:
    """Names of the usable packs across the insightface roots."""
    return sorted({pack for root in insightface_roots() for pack in list_model_packs(root)})


def insightface_root_of(pack: str) -> Path:
    """The root holding `pack` (the first registered root when none does: the error then names it)."""
    for root in insightface_roots():
        if pack in list_model_packs(root):
            return root
    return insightface_roots()[0]
