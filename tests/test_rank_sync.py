"""cli/rank_sync.py: ranks meeting through a real torch.distributed store, with no timeout to hit."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch.distributed as dist

from cli.rank_sync import HEARD_WAIT_S, RankFailed, RankSync, rank_0_holds, rendezvous_store
from f2d_core.run_lock import LOCK_FILE, RunLocked, run_lock
from tests.support.comfy_server import free_port


def _store() -> dist.Store:
    store = dist.HashStore()
    store.set_timeout(timedelta(seconds=1))  # a blocking get would give up after 1 s: the waits below never block
    return store


def test_a_rank_waits_longer_than_the_store_timeout_for_the_others():
    store = _store()
    late = RankSync(store, 1, 2, poll_seconds=0.05)
    arrived = threading.Timer(2.5, lambda: late.meet("shares"))
    arrived.start()
    waited = RankSync(store, 0, 2, poll_seconds=0.05).meet("shares")
    arrived.join()
    assert waited > 2.0

    threading.Timer(1.5, lambda: RankSync(store, 0, 2).publish("set", "/cache/sets/a.safetensors")).start()
    value, waited = RankSync(store, 1, 2, poll_seconds=0.05).read("set")
    assert value == "/cache/sets/a.safetensors" and waited > 1.0


def test_a_failed_rank_stops_the_waiting_ones_with_its_message_and_waits_until_they_said_it(caplog):
    """torchrun ends every rank once one exits with an error: the failed rank waits until the others have
    logged why they stop (HEARD), not longer; with nobody listening it gives up after `wait_s`."""
    store = _store()
    waited = []
    failing = RankSync(store, 0, 2, poll_seconds=0.05)
    told = threading.Timer(0.3, lambda: waited.append(failing.fail("rank 0 could not prepare: DatasetError: empty")))
    told.start()
    start = time.monotonic()
    waiting = RankSync(store, 1, 2, poll_seconds=0.05)
    with pytest.raises(RankFailed, match="rank 0 could not prepare: DatasetError: empty") as failed:
        waiting.meet("shares")
    with pytest.raises(RankFailed):
        waiting.read("set")
    assert time.monotonic() - start < 5
    with caplog.at_level("ERROR", logger="f2d.train_mapper"), pytest.raises(SystemExit) as stopped:
        waiting.stop(failed.value)
    told.join(10)
    assert stopped.value.code == 1
    assert "stopping: rank 0 could not prepare: DatasetError: empty" in caplog.text
    assert waited and waited[0] < HEARD_WAIT_S / 2, waited  # it stopped waiting once rank 1 had said it
    alone = RankSync(_store(), 0, 3, poll_seconds=0.05).fail("nobody listens", wait_s=0.3)
    assert 0.3 <= alone < 2


def _foreign_lock(run_dir: Path) -> None:
    """run.lock of a run on another computer sharing the folder: never taken over."""
    run_dir.mkdir()
    holder = {"pid": 4242, "host": "another-computer", "started": 0, "what": "cli/train_mapper.py"}
    (run_dir / LOCK_FILE).write_text(json.dumps(holder))


def test_a_run_lock_refused_to_rank_0_stops_every_rank_at_once_with_its_message(tmp_path, caplog):
    store, run_dir, refusal = _store(), tmp_path / "run", []
    _foreign_lock(run_dir)

    def rank_0() -> None:
        try:
            with rank_0_holds(lambda: run_lock(run_dir, "rank 0"), RankSync(store, 0, 2, poll_seconds=0.05)):
                refusal.append("rank 0 went on")
        except SystemExit as e:
            refusal.append(e.code)

    start = time.monotonic()
    threading.Thread(target=rank_0).start()
    with caplog.at_level("ERROR", logger="f2d.train_mapper"), pytest.raises(SystemExit) as stopped:
        with rank_0_holds(lambda: pytest.fail("only rank 0 takes the lock"), RankSync(store, 1, 2, poll_seconds=0.05)):
            pytest.fail("rank 1 went on")
    deadline = time.monotonic() + 10
    while not refusal and time.monotonic() < deadline:
        time.sleep(0.05)
    assert time.monotonic() - start < 5  # rank 0 did not wait HEARD_WAIT_S for rank 1's word
    assert stopped.value.code == 1 and refusal == [1], refusal
    message = f"The training run {run_dir} is in use by cli/train_mapper.py (pid 4242 on another-computer"
    rank_0_said, rank_1_said = (r.getMessage() for r in caplog.records)  # rank 0 first: before it waits
    assert rank_0_said.startswith(message) and rank_1_said == f"stopping: {rank_0_said}", caplog.text
    assert json.loads((run_dir / LOCK_FILE).read_text())["host"] == "another-computer"  # left alone
    with (
        pytest.raises(RunLocked, match="pid 4242 on another-computer"),
        rank_0_holds(lambda: run_lock(run_dir, "x"), None),
    ):
        pass  # one process: the error itself, for the CLI's own message


def test_the_other_ranks_go_on_once_rank_0_holds_the_run_lock(tmp_path):
    store, lock = _store(), tmp_path / "run" / LOCK_FILE
    seen = []

    def rank_1() -> None:
        with rank_0_holds(lambda: run_lock(tmp_path / "other", "rank 1"), RankSync(store, 1, 2, poll_seconds=0.05)):
            seen.append(lock.exists())

    other = threading.Thread(target=rank_1)
    other.start()
    with rank_0_holds(lambda: run_lock(tmp_path / "run", "rank 0"), RankSync(store, 0, 2, poll_seconds=0.05)):
        other.join(10)
        assert seen == [True]
    assert not lock.exists() and not (tmp_path / "other").exists()  # released; rank 1 took nothing


NO_LIBUV = "use_libuv was requested but PyTorch was build without libuv support"


def test_a_torch_without_libuv_falls_back_to_the_plain_tcp_store(monkeypatch, caplog):
    """torchrun on Windows: a torch built without libuv refuses the default store backend; the ranks retry
    with use_libuv=0 (the error raised as such a torch raises it; the store then made for real)."""
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("USE_LIBUV", "1")  # restored when the test ends: the fallback's USE_LIBUV=0 stays here
    asked = []

    def rendezvous_without_libuv(url: str, **kwargs):
        asked.append(url)
        if "use_libuv=0" not in url:
            raise RuntimeError(NO_LIBUV)
        return dist.rendezvous(url, **kwargs)

    with caplog.at_level("WARNING", logger="f2d.train_mapper"):
        store, rank, world_size = rendezvous_store(rendezvous_without_libuv)
    assert asked == ["env://", "env://?use_libuv=0"]
    assert (rank, world_size) == (0, 1)
    store.set("k", "v")
    assert store.get("k") == b"v"
    assert "built without libuv" in caplog.text and "USE_LIBUV=0" in caplog.text
    assert os.environ["USE_LIBUV"] == "0"


def test_other_rendezvous_errors_are_not_swallowed():
    def broken(url: str, **kwargs):
        raise RuntimeError("connection refused")

    with pytest.raises(RuntimeError, match="connection refused"):
        rendezvous_store(broken)
