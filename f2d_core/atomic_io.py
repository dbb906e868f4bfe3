"""Write files so that a crash or a full disk never leaves a half-written file under the real name."""

from __future__ import annotations

import errno
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from .errors import WriteError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is used up",
    errno.EFBIG: "the file is larger than this system allows (a full disk or a file-size limit)",
    errno.EACCES: "the folder is not writable",
    errno.EPERM: "the folder is not writable",
    errno.EROFS: "the folder is on a read-only file system",
}


def _umask_by_setting() -> int:
    """The umask read the only portable way, by setting it: files other threads create meanwhile get it.

    Called once, at import (ComfyUI imports the pack before it serves uploads); the brief value set is
    owner-only, so such a file is never world-writable.
    """
    umask = os.umask(0o077)
    os.umask(umask)
    return umask


_UMASK_AT_IMPORT = _umask_by_setting()


def process_umask() -> int:
    """The process umask: `Umask:` of /proc/self/status where Linux shows it (read without changing it,
    so no other thread's files are affected), else the value read at import."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return _UMASK_AT_IMPORT


def _default_mode() -> int:
    """The permissions a plain `open(path, "w")` would give (mkstemp's are owner-only)."""
    return 0o666 & ~process_umask()


def _errno_of(exc: BaseException) -> int | None:
    """The errno of an OSError, or the one in safetensors' own I/O error text ("... (os error 28)")."""
    if isinstance(exc, OSError):
        return exc.errno
    found = re.search(r"os error (\d+)", str(exc))
    return int(found.group(1)) if found else None


def fsync_folder(folder: Path) -> None:
    """fsync a folder, so that a rename into it survives a power cut (POSIX); a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows opens no folder this way; its renames are journaled by NTFS
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems (network, FUSE) refuse fsync on a folder
        pass
    finally:
        os.close(fd)


def write_error(path: Path, what: str, exc: OSError | SafetensorError) -> WriteError:
    """The pack's write error for a failed write of `what` at `path`: why (full disk, read-only folder, ...)
    and whether a previous file of that name is still there."""
    code = _errno_of(exc)
    reason = _REASONS.get(code) or (exc.strerror if isinstance(exc, OSError) and exc.strerror else f"{exc}")
    kept = f"the previous {what} of that name is unchanged" if Path(path).exists() else "nothing was written"
    return WriteError(
        f"Could not write the {what} {path}: {reason}; {kept}. Free some disk space or choose a writable "
        "folder, then run again."
    )


def atomic_write(path: Path, write: Callable[[Path], None], what: str = "file") -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, rename it over `path`, fsync the folder.

    `what` names the file in the error ("training state", "face file"). Raises WriteError (the pack's
    one write error) naming `what`, `path` and why, when the disk is full or the folder cannot be
    written: an OSError, or safetensors' SafetensorError for an I/O error in its own writer ("I/O
    error: File too large (os error 27)"). Then no partial file is left and a previous file at `path`
    is unchanged.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".partial", dir=path.parent)
        os.close(fd)
        tmp = Path(tmp_name)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
        fsync_folder(path.parent)
    except (OSError, SafetensorError) as e:
        if isinstance(e, WriteError):
            raise
        raise write_error(path, what, e) from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
