"""The pack's one write error (errors.WriteError) for the MSID state and a saved face on a full disk or a
read-only folder: the previous file is kept, no partial file is left, and the message is the pack's."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from f2d_core.errors import WriteError
from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax
from f2d_core.msid_training.run_state import MSIDRunIdentity, save_run_state

IDENTITY = MSIDRunIdentity("data", "init", "msid", 8, 0, 1, "tiny")

# The file-size limit makes every write past 16 KiB fail as a full disk does (EFBIG, os error 27, which
# safetensors' own writer reports as "Error while serializing: I/O error: File too large (os error 27)").
_FULL_DISK = """
import json, resource, signal, sys, torch
from pathlib import Path
from f2d_core.errors import WriteError
from f2d_core.identity.face_encoder import EncodedFace
from f2d_core.identity.face_file import save_face
from f2d_core.msid_training.margin_softmax import ShardedMarginSoftmax
from f2d_core.msid_training.run_state import MSIDRunIdentity, save_run_state

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 14, resource.RLIM_INFINITY))
folder = Path(sys.argv[1])
encoder, classifier = torch.nn.Linear(64, 64), ShardedMarginSoftmax(100, 64)
optimizer = torch.optim.AdamW([*encoder.parameters(), *classifier.parameters()])
identity = MSIDRunIdentity("data", "init", "msid", 8, 0, 1, "tiny")
face = EncodedFace(torch.zeros(2, 768), torch.zeros(1536), torch.rand(2, 3, 112, 112))
messages = []
for write in (
    lambda: save_run_state(folder / "run", 7, encoder, classifier, optimizer, [0.5], {}, identity),
    lambda: save_face(folder / "face.safetensors", face),
):
    try:
        write()
        messages.append(None)
    except WriteError as e:
        messages.append(str(e))
print(json.dumps(messages))
"""


def _tiny_state(run_dir):
    encoder, classifier = torch.nn.Linear(4, 4), ShardedMarginSoftmax(10, 4)
    optimizer = torch.optim.AdamW([*encoder.parameters(), *classifier.parameters()])
    return save_run_state(run_dir, 3, encoder, classifier, optimizer, [1.0], {}, IDENTITY)


def test_a_full_disk_fails_the_msid_state_and_a_saved_face_with_the_packs_message(tmp_path):
    from f2d_core.identity.face_encoder import EncodedFace
    from f2d_core.identity.face_file import save_face

    state = _tiny_state(tmp_path / "run")
    face = save_face(
        tmp_path / "face.safetensors", EncodedFace(torch.zeros(2, 768), torch.zeros(1536), torch.zeros(0, 3, 112, 112))
    )
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    done = subprocess.run(
        [sys.executable, "-c", _FULL_DISK, str(tmp_path)], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    state_error, face_error = json.loads(done.stdout.strip().splitlines()[-1])
    for message, what, path in (
        (state_error, "MSID classifier shard of rank 0", tmp_path / "run"),
        (face_error, "face file", face),
    ):
        assert message is not None, what
        assert f"Could not write the {what} {path}" in message, message
        assert "larger than this system allows" in message and "Error while serializing" not in message, message
        assert "Free some disk space or choose a writable folder" in message
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # intact, no partial file
    assert state.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder anyway")
def test_a_read_only_run_folder_fails_the_msid_state_with_the_packs_message(tmp_path):
    state = _tiny_state(tmp_path / "run")
    before = state.read_bytes()
    os.chmod(state.parent, 0o555)
    try:
        with pytest.raises(WriteError, match="the folder is not writable; the previous MSID classifier shard"):
            _tiny_state(tmp_path / "run")
    finally:
        os.chmod(state.parent, 0o755)
    assert state.read_bytes() == before


def test_one_write_error_class():
    """atomic_io and the weight writers raise the same class; file_writes.WriteFailed is gone."""
    import importlib.util

    from f2d_core import atomic_io

    assert importlib.util.find_spec("f2d_core.file_writes") is None
    assert atomic_io.WriteError is WriteError


def test_the_folder_is_fsynced_after_the_rename(tmp_path, monkeypatch):
    """A rename is durable only once its folder is fsynced (POSIX); the state file's folder is."""
    import stat

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(stat.S_ISDIR(os.fstat(fd).st_mode)) or real_fsync(fd))
    _tiny_state(tmp_path / "run")
    assert synced.count(True) == 2  # after the shard's and after the main state's rename


def test_a_full_disk_while_packing_an_identity_folder_is_the_packs_write_error(tmp_path, monkeypatch):
    import errno

    from f2d_core.msid_training.data import record_file as rf

    real_open = open

    def full(path, mode="r", *args, **kwargs):
        if "w" in mode and str(path).endswith(".rec"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full)
    with pytest.raises(WriteError, match=r"Could not write the packed crops .*pack: the disk is full; nothing was"):
        rf.write_record_folder(tmp_path / "pack", [(b"x", 0)], 1)
    assert list(tmp_path.iterdir()) == []
