"""A rank killed in the middle of training (SIGKILL, as the out-of-memory killer sends) fails the run visibly.

torchrun starts 2 CPU ranks (gloo) on the tiny models; once rank 0 has trained and saved a step, the
rank-1 worker (for the mapper also rank 0, the one that writes the state) is killed. torchrun must exit
non-zero within a bounded time (the survivor must not wait in a collective for ever), no trained file
may be written or announced, and the state saved before the kill must let the same command resume.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import sys
import time

import pytest
from safetensors import safe_open

from f2d_core.checkpoints import load_mapper, load_msid
from f2d_core.weight_files import read_weights
from tests.integration.test_cli import TRAIN_MAPPER, _metadata, _output, run_cli, write_face_photos
from tests.support.f2d_graphs import CHECKPOINT, PACK
from tests.support.identity_sets import identity_set
from tests.support.torchrun_ranks import WatchedRun, rank_process

log = logging.getLogger(__name__)
TRAIN_MSID = TRAIN_MAPPER.with_name("train_msid.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
STARTUP_S = 600  # loading ComfyUI and the tiny models in both ranks, preparing 3 photos: 2-core CPU, shared
EXIT_AFTER_KILL_S = 60  # how long the survivor and torchrun may take to stop once rank 1 is gone


def _exit_code(text: str, rank: int) -> str | None:
    """A rank's exit code in torchrun's failure summary ("rank : 1 (local_rank: 1)" then "exitcode : -9")."""
    found = re.search(rf"^\s*rank\s*: {rank} \(local_rank: {rank}\)\n\s*exitcode\s*: (-?\d+)", text, re.M)
    return found and found.group(1)


def _saved_step(state) -> int:
    with safe_open(str(state), framework="pt") as f:
        return int(f.metadata()["step"])


def _kill_rank_once_saved(argv: list, started: str, state, rank: int = 1) -> WatchedRun:
    """Run `argv` under torchrun until it prints `started` and `state` exists, SIGKILL `rank`, and check
    that torchrun fails in bounded time, `rank` named as killed and the other rank not stuck."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    run = WatchedRun(argv, env=env)
    try:
        run.wait_for(started, STARTUP_S)
        deadline = time.monotonic() + 60
        while not state.exists():  # the first checkpoint may follow the step's log line
            assert time.monotonic() < deadline and run.process.poll() is None, run.text[-8000:]
            time.sleep(0.2)
        os.kill(rank_process(run.process.pid, rank), signal.SIGKILL)
        killed = time.monotonic()
        code = run.wait(EXIT_AFTER_KILL_S)
        stopped_in = time.monotonic() - killed
    finally:
        run.kill_group()
    assert code is not None, f"torchrun ran on {EXIT_AFTER_KILL_S} s after rank {rank} was killed:\n{run.text[-8000:]}"
    log.info("torchrun exited %d %.1f s after rank %d was killed", code, stopped_in, rank)
    assert code != 0, run.text[-8000:]
    assert _exit_code(run.text, rank) == "-9", run.text[-8000:]  # torchrun names the killed rank
    # The survivor stopped on its own when the collective lost its peer (1), or was ending when torchrun's
    # SIGTERM came (-15, once Python has put the default handler back); -9 would be torchrun's SIGKILL after
    # its grace period: a survivor stuck in a collective.
    assert _exit_code(run.text, 1 - rank) in ("1", "-15"), run.text[-8000:]
    return run


@pytest.mark.parametrize("killed", [1, 0], ids=["rank_1", "rank_0_the_writer"])
def test_train_mapper_fails_visibly_when_a_rank_is_killed_and_the_rerun_resumes(
    comfyui_path, comfy_models_dir, tmp_path, killed
):
    models = comfy_models_dir / "face2diffusion"
    run_dir, out = tmp_path / "run", tmp_path / "trained_mapper.safetensors"
    state = run_dir / "training_state.safetensors"
    argv = [*TORCHRUN, TRAIN_MAPPER]
    argv += ["--comfyui", comfyui_path, "--checkpoint", comfy_models_dir / "checkpoints" / CHECKPOINT]
    argv += ["--msid", models / "msid.pt", "--mapper", models / "mapping.pt"]
    argv += ["--insightface-root", comfy_models_dir / "insightface", "--pack", PACK]
    argv += ["--folder", write_face_photos(tmp_path / "photos")[0].parent, "--crop-size", "64", "--no-flip"]
    argv += ["--batch-size", "2", "--loss", "reconstruction", "--run-dir", run_dir, "--out", out, "--cpu"]
    argv += ["--checkpoint-every", "1"]

    run = _kill_rank_once_saved([*argv, "--steps", "100000"], "[rank 0] step 1/100000", state, killed)
    assert not out.exists(), run.text[-8000:]
    assert "trained mapper" not in run.text and "(completed)" not in run.text, run.text[-8000:]

    saved = _saved_step(state)  # whole and readable, even when its writer was killed
    assert saved >= 1, run.text[-8000:]
    again = run_cli([*argv, "--steps", str(saved + 1)])
    assert again.returncode == 0, _output(again)
    assert re.search(rf"^\[rank 0\] Resuming from .*training_state.safetensors at step {saved}$", again.stderr, re.M)
    assert _metadata(out)["trained_steps"] == str(saved + 1)
    load_mapper(out)


def test_train_msid_fails_visibly_when_a_rank_is_killed_and_the_rerun_resumes(tmp_path):
    folder = identity_set(2, 2, seed=0).write_folder(tmp_path / "faces")  # 10 identities x 2 aligned crops
    run_dir, out = tmp_path / "run", tmp_path / "trained_msid.safetensors"
    state = run_dir / "msid_training_state.safetensors"
    argv = [*TORCHRUN, TRAIN_MSID, "--data", folder, "--out", out, "--run-dir", run_dir, "--batch-size", "8"]
    argv += ["--scale", "16", "--epochs", "1000", "--cpu", "--workers", "0", "--checkpoint-every", "1"]

    run = _kill_rank_once_saved(argv, " step 1/2000 ", state)  # 20 crops, batch 8: 2 steps per epoch
    assert not out.exists(), run.text[-8000:]
    assert "trained encoder" not in run.text, run.text[-8000:]

    saved = _saved_step(state)
    assert saved >= 1, run.text[-8000:]
    again = run_cli([*argv, "--max-steps", str(saved + 1)])
    assert again.returncode == 0, _output(again)
    assert re.search(rf"^\[rank 0\] resuming .*run at step {saved}$", again.stderr, re.M), _output(again)
    assert f"trained encoder (step {saved + 1} of 2000)" in again.stderr, _output(again)
    assert read_weights(out)[1]["trained_steps"] == str(saved + 1)
    load_msid(out)
