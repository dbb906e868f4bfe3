"""Listing a user's model folders without tripping on odd entries.

Model folders hold what users put there: a folder they cannot read (another user's, a mount without
permission), a broken symlink (a moved drive), a file where a folder is expected. Listing must go on
past them: one raise in a node's choice list hides the node, or the whole pack, from ComfyUI.
Each function here returns what it can and logs the entry it skipped, once per entry and reason.
"""

from __future__ import annotations

import logging
from pathlib import Path

log = logging.getLogger(__name__)

_LOGGED: set[tuple[str, str]] = set()


def skipped(path: Path, why: str) -> None:
    """Log, once per (path, why), that `path` was skipped while listing a model folder."""
    if (str(path), why) not in _LOGGED:
        _LOGGED.add((str(path), why))
        log.warning("skipped %s while listing model files: %s", path, why)


def _reason(exc: OSError) -> str:
    return f"{type(exc).__name__}: {exc.strerror or exc}"


def is_dir(path: Path) -> bool:
    """Whether `path` is a folder (following symlinks); False, logged, when it cannot be looked at."""
    try:
        return path.is_dir()
    except OSError as exc:  # EACCES on a folder above it: Python < 3.14's pathlib raises it
        skipped(path, _reason(exc))
        return False


def is_file(path: Path) -> bool:
    """Whether `path` is a file (following symlinks); False, logged, when it cannot be looked at."""
    try:
        return path.is_file()
    except OSError as exc:
        skipped(path, _reason(exc))
        return False


def entries(folder: Path) -> list[Path]:
    """The entries of `folder`, sorted; [] (logged) when it cannot be listed. A missing folder is [] unlogged."""
    try:
        return sorted(folder.iterdir())
    except FileNotFoundError:
        return []
    except OSError as exc:  # unreadable (EACCES), a file (ENOTDIR), a symlink loop (ELOOP)
        skipped(folder, _reason(exc))
        return []


def subfolders(folder: Path) -> list[Path]:
    """The folders in `folder`, sorted. A broken symlink or a file among them is skipped with a log line;
    an unreadable folder is returned (its own listing then skips it)."""
    found = []
    for path in entries(folder):
        if is_dir(path):
            found.append(path)
        elif path.is_symlink() and not path.exists():
            skipped(path, "a broken symlink")
    return found
