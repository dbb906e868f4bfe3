"""A run folder held by another process refuses a 2-rank torchrun launch on every rank at once (issue 18).

Rank 0 takes the run's lock first (before preparing the data, before the process group), the other ranks
waiting in torchrun's store to hear whether it got it. Refused, every rank stops within seconds with the
lock's message and a non-zero code, instead of waiting in a collective until --dist-timeout (600 s here).
The --run-dir is typed decomposed (NFD, as macOS writes names) while this test holds the lock of the
composed (NFC) folder: one run, one lock.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
import unicodedata
from pathlib import Path

from f2d_core.run_lock import LOCK_FILE, run_lock
from tests.integration.test_cli import TRAIN_MAPPER, write_face_photos
from tests.integration.test_killed_rank import STARTUP_S, TRAIN_MSID
from tests.support.f2d_graphs import CHECKPOINT, PACK
from tests.support.identity_sets import identity_set
from tests.support.torchrun_ranks import WatchedRun

log = logging.getLogger(__name__)
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
HOLDER = "a test holding the run"
STOP_S = 20  # from rank 0's refusal to torchrun's exit (--dist-timeout is 600)


def _refused_on_every_rank(argv: list, run_dir: Path) -> None:
    composed = Path(unicodedata.normalize("NFC", str(run_dir)))
    decomposed = Path(unicodedata.normalize("NFD", str(run_dir)))
    assert composed != decomposed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    with run_lock(composed, HOLDER):
        run = WatchedRun([*TORCHRUN, *argv, "--run-dir", decomposed, "--dist-timeout", "600"], env=env)
        try:
            run.wait_for(f"is in use by {HOLDER}", STARTUP_S)
            refused = time.monotonic()
            code = run.wait(STOP_S)
            stopped_in = time.monotonic() - refused
        finally:
            run.kill_group()
        assert json.loads((composed / LOCK_FILE).read_text())["what"] == HOLDER  # the holder's lock, untouched
    assert code is not None, f"torchrun ran on {STOP_S} s after rank 0 was refused:\n{run.text[-8000:]}"
    log.info("torchrun exited %d %.1f s after rank 0 was refused", code, stopped_in)
    message = f"The training run {composed} is in use by {HOLDER} (pid {os.getpid()} on "
    assert code != 0, run.text[-8000:]
    assert f"[rank 0] {message}" in run.text, run.text[-8000:]
    assert f"[rank 1] stopping: {message}" in run.text, run.text[-8000:]
    ranks_said = run.text.split("torch/distributed/elastic")[0]  # torchrun's own summary has a traceback
    assert "Traceback" not in ranks_said, run.text[-8000:]
    assert not re.search(r"exitcode\s*: -9", run.text), run.text[-8000:]  # no rank needed torchrun's SIGKILL
    assert not decomposed.exists()  # no second run folder was made


def test_train_mapper_refused_by_the_run_lock_stops_every_rank_at_once(comfyui_path, comfy_models_dir, tmp_path):
    models = comfy_models_dir / "face2diffusion"
    argv = [TRAIN_MAPPER, "--comfyui", comfyui_path, "--checkpoint", comfy_models_dir / "checkpoints" / CHECKPOINT]
    argv += ["--msid", models / "msid.pt", "--mapper", models / "mapping.pt"]
    argv += ["--insightface-root", comfy_models_dir / "insightface", "--pack", PACK]
    argv += ["--folder", write_face_photos(tmp_path / "photos")[0].parent, "--crop-size", "64", "--no-flip"]
    argv += ["--batch-size", "2", "--loss", "reconstruction", "--out", tmp_path / "m.safetensors", "--cpu"]
    _refused_on_every_rank(argv, tmp_path / "Zo\u00eb")
    assert not (tmp_path / "m.safetensors").exists()


def test_train_msid_refused_by_the_run_lock_stops_every_rank_at_once(tmp_path):
    folder = identity_set(2, 2, seed=0).write_folder(tmp_path / "faces")
    argv = [TRAIN_MSID, "--data", folder, "--out", tmp_path / "msid.safetensors", "--batch-size", "8"]
    argv += ["--scale", "16", "--epochs", "1", "--cpu", "--workers", "0"]
    _refused_on_every_rank(argv, tmp_path / "Zo\u00eb")
    assert not (tmp_path / "msid.safetensors").exists()
