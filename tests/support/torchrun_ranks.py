"""A torchrun launch the test can watch line by line and whose worker processes it can find (Linux /proc)."""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path


def _children(pid: int) -> list[int]:
    """Direct children of `pid`: from /proc/<pid>/task/*/children where the kernel has it, else every ppid."""
    listed = list(Path(f"/proc/{pid}/task").glob("*/children"))
    if listed:
        return [int(c) for path in listed for c in path.read_text().split()]
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:  # the process ended while we looked
            continue
        if int(text.rsplit(")", 1)[1].split()[1]) == pid:  # field 4, after the "(comm)" that may hold spaces
            found.append(int(stat.parent.name))
    return found


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    return dict(item.split("=", 1) for item in raw.decode(errors="replace").split("\0") if "=" in item)


def descendants(root: int) -> list[int]:
    """Every process below `root`, parents before their children."""
    found, todo = [], _children(root)
    while todo:
        pid = todo.pop(0)
        found.append(pid)
        todo += _children(pid)
    return found


def rank_process(root: int, rank: int) -> int:
    """The pid of the worker process below `root` (torchrun) whose environment holds RANK=`rank`."""
    for pid in descendants(root):
        if _environ(pid).get("RANK") == str(rank):
            return pid
    raise LookupError(f"no process with RANK={rank} below pid {root}")


class WatchedRun:
    """A command started in the background, its stdout and stderr read together, line by line."""

    def __init__(self, argv: list, env: dict[str, str] | None = None) -> None:
        self.process = subprocess.Popen(
            [str(a) for a in argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
        )
        self.lines: list[str] = []
        self._queue: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self._queue.put(line)
        self._queue.put(None)

    def _drain(self, wait: float) -> bool:
        """Take what was printed (waiting up to `wait` s for a line); False once the output has ended."""
        try:
            line = self._queue.get(timeout=wait)
            while line is not None:
                self.lines.append(line)
                line = self._queue.get_nowait()
        except queue.Empty:
            return True
        return False

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, needle: str, timeout: float) -> None:
        """Until a printed line contains `needle`; AssertionError (with the output) on exit or timeout."""
        deadline = time.monotonic() + timeout
        while not any(needle in line for line in self.lines):
            running = self._drain(1.0)
            assert running and time.monotonic() < deadline, f"{needle!r} never printed:\n{self.text[-8000:]}"

    def wait(self, timeout: float) -> int | None:
        """The exit code, or None if it still runs after `timeout` s; all its output read."""
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        deadline = time.monotonic() + 30  # a process it left behind may hold the pipe open
        while self._drain(1.0) and time.monotonic() < deadline:
            pass
        return code

    def kill_group(self) -> None:
        """End the run (started by this test) and every process below it."""
        if self.process.poll() is None:
            for pid in [self.process.pid, *descendants(self.process.pid)]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            self.process.wait()
