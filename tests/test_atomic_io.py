"""Atomic writes: the permissions they give, and none taken from files other threads create meanwhile."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from f2d_core import atomic_io
from f2d_core.atomic_io import atomic_write
from f2d_core.errors import WriteError


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_written_file_gets_the_mode_a_plain_open_gives(tmp_path, umask_022):
    assert atomic_io._default_mode() == 0o644
    path = atomic_write(tmp_path / "a.bin", lambda tmp: tmp.write_bytes(b"x"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_files_other_threads_create_while_atomic_writes_run_are_never_world_writable(tmp_path, umask_022):
    """ComfyUI's server thread saves uploads while a node saves a face: the uploads keep the umask.

    The mode of each atomic write is worked out 20,000 times (an fsync per write would make the
    writes themselves too slow to meet the other thread often); with the mode read by `os.umask(0)`
    thousands of uploads came out world-writable.
    """
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    stop = threading.Event()

    def upload_loop() -> None:
        i = 0
        while not stop.is_set():
            with open(uploads / f"{i}.png", "wb") as f:
                f.write(b"p")
            i += 1

    thread = threading.Thread(target=upload_loop)
    thread.start()
    try:
        for _ in range(20):
            atomic_write(tmp_path / "face.safetensors", lambda tmp: tmp.write_bytes(b"f"))
        for _ in range(20_000):
            assert atomic_io._default_mode() == 0o644
    finally:
        stop.set()
        thread.join()
    created = list(uploads.iterdir())
    assert len(created) > 100
    writable = [p.name for p in created if p.stat().st_mode & stat.S_IWOTH]
    assert writable == [], f"{len(writable)} of {len(created)} files were created world-writable"


@pytest.mark.parametrize(
    ("error", "advice"),
    [(errno.ENOSPC, "the disk is full"), (errno.EACCES, "the folder is not writable")],
)
def test_a_failed_write_is_a_clear_error_leaving_the_previous_file_and_no_partial_file(tmp_path, error, advice):
    """A full disk shows as ENOSPC from the writer; a read-only folder as EACCES/EROFS."""
    path = atomic_write(tmp_path / "Zoë_\u674e_00001.safetensors", lambda tmp: tmp.write_bytes(b"old"))

    def failing(tmp):
        tmp.write_bytes(b"half")
        raise OSError(error, os.strerror(error))

    with pytest.raises(
        WriteError, match=rf"Could not write the file .*Zoë_\u674e_00001.safetensors: {advice}"
    ) as caught:
        atomic_write(path, failing)
    assert "previous file of that name is unchanged. Free some disk space or choose a writable folder" in str(
        caught.value
    )
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
