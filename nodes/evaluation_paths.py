"""Where the scoring models live: face recognisers (insightface packs, models/face_recognition) and CLIP folders."""

from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..f2d_core.errors import WeightFileError
from ..f2d_core.folder_scan import entries, is_dir, is_file, subfolders
from .model_paths import insightface_roots

RECOGNITION_FOLDER = "face_recognition"  # models/face_recognition/*.onnx: any ArcFace-style recogniser
CLIP_SCORING_FOLDER = "clip_scoring"  # models/clip_scoring/<folder>: transformers or open_clip CLIP
# Members of insightface packs that are not recognisers (detectors, landmarks, gender/age).
_NOT_RECOGNISERS = ("det_", "scrfd", "1k3d68", "2d106det", "genderage", "landmark")
_PREFERRED = ("w600k_r50.onnx", "glintr100.onnx")
_CLIP_MARKERS = ("config.json", "open_clip_config.json")


def register_evaluation_folders() -> None:
    """Register models/face_recognition (.onnx) and models/clip_scoring; safe to call more than once."""
    for name in (RECOGNITION_FOLDER, CLIP_SCORING_FOLDER):
        folder_paths.add_model_folder_path(name, os.path.join(folder_paths.models_dir, name))
    paths, exts = folder_paths.folder_names_and_paths[RECOGNITION_FOLDER]
    folder_paths.folder_names_and_paths[RECOGNITION_FOLDER] = (paths, set(exts) | {".onnx"})


def _pack_recognisers() -> dict[str, Path]:
    """`<pack>/<file>.onnx` -> path, for the recognisers inside the insightface packs."""
    found = {}
    for root in insightface_roots():
        for pack in subfolders(root / "models"):
            for path in entries(pack):
                if path.suffix == ".onnx" and not path.name.lower().startswith(_NOT_RECOGNISERS) and is_file(path):
                    found.setdefault(f"{pack.name}/{path.name}", path)
    return found


def recognition_models() -> list[str]:
    """Recognition-model choices: models/face_recognition files, then pack members; w600k_r50, glintr100 first."""
    own = [f for f in folder_paths.get_filename_list(RECOGNITION_FOLDER) if f.lower().endswith(".onnx")]
    names = own + [n for n in _pack_recognisers() if n not in own]
    ordered = sorted(names, key=lambda n: (Path(n).name not in _PREFERRED, n))
    return ordered or ["buffalo_l/w600k_r50.onnx"]


def recognition_model_path(name: str) -> Path:
    """The file behind a recognition-model choice, or an error saying where recognisers go."""
    own = folder_paths.get_full_path(RECOGNITION_FOLDER, name)
    if own is not None:
        return Path(own)
    pack_file = _pack_recognisers().get(name)
    if pack_file is not None:
        return pack_file
    folders = ", ".join(folder_paths.get_folder_paths(RECOGNITION_FOLDER))
    raise WeightFileError(
        f"face recognition model {name!r} not found. Put an insightface pack (buffalo_l holds w600k_r50.onnx, "
        f"antelopev2 glintr100.onnx) in models/insightface/models/, or an ArcFace-style .onnx in {folders}."
    )


def _is_clip_folder(path: Path) -> bool:
    return any(is_file(path / marker) for marker in _CLIP_MARKERS)


def clip_models() -> list[str]:
    """Folders in models/clip_scoring that look like a CLIP model (they hold config.json or open_clip_config.json).

    Odd entries (an unreadable folder, a broken symlink, a file) are skipped with a log line (`folder_scan`).
    """
    found = set()
    for base in folder_paths.get_folder_paths(CLIP_SCORING_FOLDER):
        found |= {p.name for p in subfolders(Path(base)) if _is_clip_folder(p)}
    return sorted(found) or ["(no CLIP model in models/clip_scoring)"]


def clip_model_path(name: str) -> Path:
    """The folder behind a CLIP choice, or an error saying where CLIP models go."""
    for base in folder_paths.get_folder_paths(CLIP_SCORING_FOLDER):
        path = Path(base) / name
        if Path(name).name == name and is_dir(path):
            return path
    folders = ", ".join(folder_paths.get_folder_paths(CLIP_SCORING_FOLDER))
    raise WeightFileError(
        f"CLIP model {name!r} not found. Put a CLIP model folder (transformers save_pretrained, or an open_clip hub "
        f"folder such as laion/CLIP-ViT-H-14-laion2B-s32B-b79K) in {folders}."
    )
