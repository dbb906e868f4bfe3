"""Atomic writes whose failure (a full disk, a read-only folder) is an error the user can act on."""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from .atomic_io import atomic_write
from .errors import F2DError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this system allows (a full disk or a file-size limit)",
    errno.EACCES: "the folder is not writable",
    errno.EPERM: "the folder is not writable",
    errno.EROFS: "the folder is on a read-only file system",
}


class WriteFailed(F2DError):
    """A file could not be written; the previous file of that name (if any) is unchanged, no partial file is left."""


def write_atomically(path: Path, what: str, write: Callable[[Path], None]) -> Path:
    """`atomic_io.atomic_write(path, write)`, raising WriteFailed (naming `what`, the file and why) when it fails.

    Failures are OSError, or SafetensorError when safetensors' own writer meets the I/O error (it
    reports "I/O error: ... (os error 28)" for a full disk). The write goes to a temp file beside
    `path` that is renamed over it only when complete, so on failure the previous file is intact
    and the temp file is removed.
    """
    path = Path(path)
    try:
        return atomic_write(path, write)
    except (OSError, SafetensorError) as exc:
        code = exc.errno if isinstance(exc, OSError) else _os_error(str(exc))
        reason = _REASONS.get(code, f"{type(exc).__name__}: {exc}")
        kept = f"the previous {what} there is unchanged" if path.exists() else "nothing was written"
        raise WriteFailed(
            f"Could not write the {what} {path}: {reason}; {kept}. Free some disk space or choose a writable "
            "folder, then run again."
        ) from exc


def _os_error(message: str) -> int | None:
    """The errno in a safetensors I/O error message ("... (os error 28)"), if any."""
    found = re.search(r"os error (\d+)", message)
    return int(found.group(1)) if found else None
