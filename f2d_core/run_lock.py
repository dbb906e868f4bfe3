"""One writer per training run folder: a lock file naming who holds it, refused to a second writer.

Two ComfyUI instances sharing an output folder, or the training CLI and the Train F2D Mapper node on
the same run name, would otherwise both resume one state and overwrite each other's. The first to
start writes `run.lock` in the run folder (created with O_EXCL, so exactly one of two racing writers
gets it) holding its pid, host name, start time and what it is; the second gets a RunLocked error
naming all of them. The file is removed when the run ends, however it ends. A lock left by a process
that died without removing it (killed, power cut) is taken over when it names this host and a pid no
longer running; one from another host is never judged stale (its pids are not this host's), and the
message says to delete it if that run is over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import F2DError

log = logging.getLogger(__name__)

LOCK_FILE = "run.lock"
_ATTEMPTS = 3  # take-overs of a stale lock before giving up (another process may take it over at once too)


class RunLocked(F2DError):
    """The run folder is being written by another live process."""


def _alive(pid: int) -> bool:
    """Whether a process with this pid runs on this host (a process of another user counts as running)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # Windows: os.kill(pid, 0) of a gone process raises a plain OSError
        return False
    return True


def _holder(path: Path) -> dict[str, object] | None:
    """The lock file's fields, {} when it cannot be parsed, None when it is gone."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}


def _describe(holder: dict[str, object]) -> str:
    when = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    what, pid, host = holder.get("what", "another training"), holder.get("pid", "?"), holder.get("host", "?")
    return f"{what} (pid {pid} on {host}, since {since})"


def _stale(holder: dict[str, object]) -> bool:
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not _alive(pid)


@contextlib.contextmanager
def run_lock(run_dir: Path, what: str, enabled: bool = True) -> Iterator[None]:
    """Hold `run_dir/run.lock` for the block; RunLocked when a live process holds it.

    Args:
        run_dir: the run folder (created if missing, and removed again when the block leaves it empty: a
            training refused before it wrote anything leaves no run folder behind).
        what: who this writer is, for the other's message (e.g. "cli/train_mapper.py", "Train F2D Mapper").
        enabled: False holds nothing (ranks other than 0, which write no state).

    Raises:
        RunLocked: another live process (or a process on another host) holds the run; the message names
            its pid, host, start time and what it is, and what to do.
        OSError: the folder cannot be written (the caller's write error says so).
    """
    if not enabled:
        yield
        return
    run_dir = Path(run_dir)
    created = not run_dir.exists()
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK_FILE
    mine = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time(), "what": what}
    for _ in range(_ATTEMPTS):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _holder(path)
            if holder is None:  # removed meanwhile: try again
                continue
            if holder and _stale(holder):
                log.warning(
                    "Taking over the lock of %s left by %s, which is no longer running", run_dir, _describe(holder)
                )
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                continue
            raise RunLocked(
                f"The training run {run_dir} is in use by {_describe(holder) if holder else 'another process'}: "
                "two trainings on one run would resume the same state and overwrite each other's. Wait for that "
                f"one to finish or stop it, or choose another run name / --run-dir. If it is not running any "
                f"more (e.g. it ran on another computer that shares this folder), delete {path}."
            ) from None
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(mine, f)
        break
    else:
        raise RunLocked(f"The training run {run_dir} changes hands too quickly to lock ({path}); try again.")
    try:
        yield
    finally:
        holder = _holder(path)
        if holder and holder.get("pid") == mine["pid"] and holder.get("started") == mine["started"]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if created:
            with contextlib.suppress(OSError):  # not empty (the run wrote its state), or already gone
                run_dir.rmdir()
