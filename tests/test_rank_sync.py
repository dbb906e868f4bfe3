"""cli/rank_sync.py: ranks meeting through a real torch.distributed store, with no timeout to hit."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
import torch.distributed as dist

from cli.rank_sync import RankFailed, RankSync


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
