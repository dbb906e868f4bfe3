"""Write files so that a crash or a full disk never leaves a half-written file under the real name."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from .errors import WriteError


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


def atomic_write(path: Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp)` on a temp file beside `path`, fsync it, then rename it over `path`.

    Raises WriteError naming `path` when the disk is full or the folder cannot be written (OSError);
    then no partial file is left and a previous file at `path` is unchanged.
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
    except OSError as e:
        reason = e.strerror or str(e)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            advice = "free some disk space"
        else:
            advice = f"make {path.parent} writable or choose another folder"
        previous = " The previous file of that name is unchanged." if path.exists() else ""
        raise WriteError(f"Could not write {path}: {reason}. Nothing was saved: {advice}.{previous}") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
