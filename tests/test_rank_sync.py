"""cli/rank_sync.py: ranks meeting through a real torch.distributed store, with no timeout to hit."""

from __future__ import annotations

import os
import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from cli.rank_sync import RankFailed, RankSync, rendezvous_store
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


def test_a_failed_rank_stops_the_waiting_ones_with_its_message():
    store = _store()
    threading.Timer(0.3, lambda: RankSync(store, 0, 2).fail("rank 0 could not prepare: DatasetError: empty")).start()
    start = time.monotonic()
    with pytest.raises(RankFailed, match="rank 0 could not prepare: DatasetError: empty"):
        RankSync(store, 1, 2, poll_seconds=0.05).meet("shares")
    with pytest.raises(RankFailed):
        RankSync(store, 1, 2, poll_seconds=0.05).read("set")
    assert time.monotonic() - start < 5


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
