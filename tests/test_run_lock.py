"""One writer per training run folder (issue 18, two writers on one run): the lock itself, and two
cli/train_msid.py runs started on one --run-dir (the second is refused, naming the first)."""

from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from f2d_core.run_lock import LOCK_FILE, RunLocked, run_lock
from tests.support.identity_sets import identity_set

REPO_ROOT = Path(__file__).resolve().parent.parent


def test_a_held_run_is_refused_naming_its_holder_and_released_after(tmp_path: Path) -> None:
    with run_lock(tmp_path / "run", "cli/train_mapper.py"):
        holder = json.loads((tmp_path / "run" / LOCK_FILE).read_text(encoding="utf-8"))
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        with pytest.raises(RunLocked) as refused:
            with run_lock(tmp_path / "run", "Train F2D Mapper (ComfyUI)"):
                pass
        message = str(refused.value)
        assert f"is in use by cli/train_mapper.py (pid {os.getpid()} on {socket.gethostname()}, since" in message
        assert "choose another run name / --run-dir" in message
        assert (tmp_path / "run" / LOCK_FILE).exists()  # the refused writer leaves the holder's lock alone
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    with pytest.raises(ZeroDivisionError), run_lock(tmp_path / "run", "x"):
        1 / 0  # noqa: B018
    assert not (tmp_path / "run" / LOCK_FILE).exists()  # released however the run ends
    with run_lock(tmp_path / "run", "rank 1", enabled=False):
        assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_lock_of_a_dead_process_on_this_host_is_taken_over_and_another_hosts_is_not(tmp_path: Path) -> None:
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid = int(gone.stdout)
    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"pid": dead_pid, "host": socket.gethostname(), "started": 0, "what": "old"}))
    with run_lock(tmp_path, "new"):
        assert json.loads(lock.read_text())["what"] == "new"
    lock.write_text(json.dumps({"pid": dead_pid, "host": "another-computer", "started": 0, "what": "old"}))
    with pytest.raises(RunLocked, match=f"pid {dead_pid} on another-computer.*delete {lock}"):
        with run_lock(tmp_path, "new"):
            pass
    lock.write_text("{not json")
    with pytest.raises(RunLocked, match="in use by another process"):
        with run_lock(tmp_path, "new"):
            pass


def _read_lines(stream, into: queue.Queue) -> None:
    for line in stream:
        into.put(line)


def test_two_msid_trainings_on_one_run_dir_the_second_is_refused(tmp_path: Path) -> None:
    folder = identity_set(2, 2, seed=0).write_folder(tmp_path / "faces")
    command = [sys.executable, str(REPO_ROOT / "cli" / "train_msid.py"), "--data", str(folder)]
    command += ["--run-dir", str(tmp_path / "run"), "--batch-size", "8", "--scale", "16", "--epochs", "1000"]
    command += ["--cpu", "--workers", "0", "--checkpoint-every", "1000000"]
    first = subprocess.Popen(
        [*command, "--out", str(tmp_path / "first.safetensors")], stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_read_lines, args=(first.stderr, lines), daemon=True).start()
    seen, deadline = [], time.monotonic() + 600
    try:
        while not any("training steps" in line for line in seen):
            assert time.monotonic() < deadline and first.poll() is None, "".join(seen)
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
        second = subprocess.run(
            [*command, "--out", str(tmp_path / "second.safetensors")],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            timeout=600,
        )
        assert second.returncode == 1, second.stderr[-3000:]
        assert f"is in use by cli/train_msid.py (pid {first.pid} on {socket.gethostname()}" in second.stderr
        assert "Traceback" not in second.stderr and not (tmp_path / "second.safetensors").exists()
    finally:
        first.send_signal(signal.SIGINT)  # saves the state and exits
        first.wait(timeout=300)
    assert first.returncode == 130
    assert not (tmp_path / "run" / LOCK_FILE).exists()


def test_a_run_refused_before_it_wrote_anything_leaves_no_folder(tmp_path: Path) -> None:
    """The lock makes the run folder; a block that leaves it empty (a model refused before training) removes it
    again, while a folder the run wrote into, or one that existed before, stays."""
    refused = tmp_path / "runs" / "refused"
    with pytest.raises(ValueError), run_lock(refused, "test"):
        raise ValueError("this MODEL cannot be trained")
    assert not refused.exists() and (tmp_path / "runs").is_dir()
    wrote = tmp_path / "runs" / "wrote"
    with run_lock(wrote, "test"):
        (wrote / "state.safetensors").write_bytes(b"x")
    assert sorted(p.name for p in wrote.iterdir()) == ["state.safetensors"]
    existing = tmp_path / "runs" / "existing"
    existing.mkdir()
    with run_lock(existing, "test"):
        pass
    assert existing.is_dir() and not any(existing.iterdir())
