"""A training folder's files: photos directly in it or one subfolder per person, sorted; decoding that never raises.

Hidden files and folders (a name starting with ".") are ignored, so a cache kept inside the folder
(`.f2d_cache`) is never read as photos; so is what operating systems and NAS tools leave in photo folders
under plain names (LITTER_NAMES: macOS zip archives' `__MACOSX/`, Synology's `@eaDir/`, Windows'
`Thumbs.db` and `desktop.ini`): never a photo, never counted as a bad one.
Files are sorted by their path relative to the folder.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from ...images import to_rgb_uint8
from .report import NESTED_FOLDER, NOT_IMAGE

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Lower-case names of OS and tool litter that is not dot-prefixed: macOS's zip resource forks (__MACOSX),
# Synology's thumbnail folders (@eaDir) and recycle bin (#recycle), Windows' thumbnail caches (Thumbs.db,
# ehthumbs.db), folder settings (desktop.ini), recycle bin and volume information.
LITTER_NAMES = frozenset(
    {
        "__macosx",
        "@eadir",
        "#recycle",
        "thumbs.db",
        "ehthumbs.db",
        "ehthumbs_vista.db",
        "desktop.ini",
        "$recycle.bin",
        "system volume information",
    }
)
LITTER_SUFFIXES = ("@synoeastream", "@synoresource")  # Synology's extended-attribute companions of a file
ASPECT_TOLERANCE = 0.01  # a mask of another size is resized when its aspect ratio is this close


class UnreadableImage(Exception):
    """A file with an image suffix that does not decode (truncated, corrupt, not really an image)."""


@dataclass(frozen=True)
class FolderEntry:
    """One file of a training folder: where it is, its name relative to the folder, its person, or why it is out."""

    path: Path
    name: str  # posix path relative to the folder: "a.jpg" or "alice/a.jpg"
    person: str  # subfolder name, "" for photos directly in the folder
    skip: str | None = None  # a reason code when the file cannot be a photo


def is_user_entry(name: str) -> bool:
    """Whether a file or folder name in a training or identity folder is the user's: not hidden (".") and
    not OS or tool litter (LITTER_NAMES, LITTER_SUFFIXES; compared case-insensitively, as Windows names are)."""
    lower = name.lower()
    return not name.startswith(".") and lower not in LITTER_NAMES and not lower.endswith(LITTER_SUFFIXES)


def _visible(path: Path) -> bool:
    return is_user_entry(path.name)


def _entry(path: Path, folder: Path, person: str) -> FolderEntry:
    """A file, marked NOT_IMAGE unless its suffix is an image suffix."""
    name = path.relative_to(folder).as_posix()
    return FolderEntry(path, name, person, None if path.suffix.lower() in IMAGE_SUFFIXES else NOT_IMAGE)


def list_folder(folder: Path, exclude: Path | None = None) -> list[FolderEntry]:
    """Every visible file of the folder and of its person subfolders, sorted by relative path.

    Folders inside a person folder are listed as NESTED_FOLDER (not searched); `exclude` (the cache,
    when it lies inside the folder) is left out.
    """
    excluded = exclude.resolve() if exclude is not None else None
    entries = []
    for item in filter(_visible, folder.iterdir()):
        if excluded is not None and item.resolve() == excluded:
            continue
        if item.is_file():
            entries.append(_entry(item, folder, ""))
        elif item.is_dir():
            for inner in filter(_visible, item.iterdir()):
                if inner.is_file():
                    entries.append(_entry(inner, folder, item.name))
                elif inner.is_dir():
                    entries.append(FolderEntry(inner, inner.relative_to(folder).as_posix(), item.name, NESTED_FOLDER))
    return sorted(entries, key=lambda e: e.name)


def _stat_record(path: Path, folder: Path) -> list[object]:
    """[relative name, size, mtime in ns] of a file ([name, None, None] when it vanished meanwhile)."""
    try:
        stat = path.stat()
    except OSError:
        return [path.relative_to(folder).as_posix(), None, None]
    return [path.relative_to(folder).as_posix(), stat.st_size, stat.st_mtime_ns]


def listing_fingerprint(folder: Path, exclude: Path | None = None) -> str:
    """Hex SHA-256 of a training folder's listing as `list_folder` sees it: each file's path, size and mtime.

    Cheap (no file is read), so a UI can ask it before every run: adding, removing, replacing or
    editing a photo changes it. A folder that does not exist gives the digest of "missing".
    """
    if not folder.is_dir():
        return hashlib.sha256(b"missing").hexdigest()
    records = [_stat_record(e.path, folder) for e in list_folder(folder, exclude)]
    return hashlib.sha256(json.dumps(records).encode()).hexdigest()


def tree_fingerprint(folder: Path) -> str:
    """Hex SHA-256 of every visible file below `folder` (path, size, mtime): for a mask folder of any depth."""
    if not folder.is_dir():
        return hashlib.sha256(b"missing").hexdigest()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and _visible_below(p, folder))
    return hashlib.sha256(json.dumps([_stat_record(p, folder) for p in files]).encode()).hexdigest()


def _visible_below(path: Path, folder: Path) -> bool:
    return all(is_user_entry(part) for part in path.relative_to(folder).parts)


def _open(data: bytes) -> Image.Image:
    """A fully decoded PIL image, turned upright by its EXIF orientation (as ComfyUI's Load Image does)."""
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        return ImageOps.exif_transpose(image)
    # Decoders of untrusted bytes raise OSError, SyntaxError, ValueError, EOFError, struct.error,
    # DecompressionBombError...: every one means "not a usable image", never a crash of the whole run.
    except Exception as exc:
        raise UnreadableImage(f"{type(exc).__name__}: {exc}".strip()) from None


def decode_photo(data: bytes) -> np.ndarray:
    """RGB uint8 [H, W, 3] of an image file's bytes (transparency over black); UnreadableImage if it is not one."""
    image = _open(data)
    try:
        if image.mode.startswith("I"):  # 16-bit greyscale (I;16*, or I in older Pillow): convert() would clip
            return to_rgb_uint8(_wide_grey_unit(np.asarray(image), image.mode))
        if image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info:
            return to_rgb_uint8(np.asarray(image.convert("RGBA")))
        return np.array(image.convert("RGB"))
    except Exception as exc:  # a mode PIL cannot convert
        raise UnreadableImage(f"{type(exc).__name__}: {exc}".strip()) from None


def _wide_grey_unit(values: np.ndarray, mode: str) -> np.ndarray:
    """A 16-bit (or 32-bit integer) greyscale image as float32 [H, W, 1] in 0..1.

    I;16 modes hold 0..65535; mode I holds 0..65535 when it came from a 16-bit file (any value above
    255), else 0..255.
    """
    wide = values.astype(np.float32)
    peak = 65535.0 if mode.startswith("I;16") or wide.max(initial=0) > 255 else 255.0
    return np.clip(wide / peak, 0.0, 1.0)[..., None]


def decode_mask(data: bytes) -> np.ndarray:
    """A mask image's bytes as float32 [H, W] in 0..1 (grey level, white = face); UnreadableImage if not an image."""
    image = _open(data)
    try:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    except Exception as exc:
        raise UnreadableImage(f"{type(exc).__name__}: {exc}".strip()) from None


def find_mask_file(mask_folder: Path, entry: FolderEntry) -> Path | None:
    """The mask of a photo: same relative folder and stem in `mask_folder`, any image suffix (.png first)."""
    relative = Path(entry.name)
    base = mask_folder / relative.parent / relative.stem
    for suffix in IMAGE_SUFFIXES:
        for candidate in (base.with_name(base.name + suffix), base.with_name(base.name + suffix.upper())):
            if candidate.is_file():
                return candidate
    return None


def same_aspect(mask_hw: tuple[int, int], photo_hw: tuple[int, int]) -> bool:
    """Whether a mask of this size can be resized onto the photo (same aspect ratio within ASPECT_TOLERANCE)."""
    (mh, mw), (ph, pw) = mask_hw, photo_hw
    return abs((mw / mh) / (pw / ph) - 1.0) <= ASPECT_TOLERANCE
