"""Ranks waiting for each other while they prepare the training set: polling torchrun's store, no collective.

A collective (broadcast, barrier) gives up after the process group's timeout (NCCL: 10 minutes), and
preparing a few thousand photos takes longer. So the ranks meet before the process group exists, in
the key-value store torchrun's rendezvous gives every rank: each one counts itself in and polls the
count (`Store.add(key, 0)` and `Store.check` return at once), sleeping between looks, for as long as
it takes. A rank that fails says so under FAILED, and every waiting rank stops with its message
instead of waiting forever, counting itself under HEARD first: torchrun ends every rank as soon as one
exits with an error, so the failed one waits (a few seconds at most) until the others have said why
they stop. A rank that dies outright is seen by torchrun, which ends the others.
`rank_0_holds` uses the same store for the run folder's lock, which only rank 0 takes: the others
learn at once whether it got it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from typing import NoReturn

import torch.distributed as dist

log = logging.getLogger("f2d.train_mapper")

PREFIX = "f2d/prepare/"
FAILED = PREFIX + "failed"
HEARD = PREFIX + "heard"  # how many ranks have reported the failure
POLL_SECONDS = 0.5
HEARD_WAIT_S = 10.0  # how long a failed rank waits for the others to report it (they may be busy, not waiting)


NO_LIBUV = "without libuv"  # in "use_libuv was requested but PyTorch was build without libuv support"


def rendezvous_store(rendezvous: Callable = dist.rendezvous) -> tuple[dist.Store, int, int]:
    """(store, rank, world size) from torchrun's environment (`env://`).

    A PyTorch built without libuv (some Windows builds of torch 2.4-2.5) refuses the store's default
    libuv backend; then the plain TCP backend is used (`use_libuv=0`, and USE_LIBUV=0 for whatever
    this process starts later) with a warning, instead of a traceback.
    """
    try:
        return next(rendezvous("env://"))
    except (RuntimeError, ValueError) as exc:
        if NO_LIBUV not in str(exc):
            raise
    log.warning(
        "This PyTorch was built without libuv (usual on Windows): the ranks' store uses its plain TCP backend "
        "(USE_LIBUV=0). If torchrun itself stops with this error, set USE_LIBUV=0 before running it."
    )
    os.environ["USE_LIBUV"] = "0"
    return next(rendezvous("env://?use_libuv=0"))


class RankFailed(RuntimeError):
    """Another rank failed while this one waited for it."""


class RankSync:
    """Counted meeting points and published values among `world_size` ranks of one torchrun store."""

    def __init__(self, store: dist.Store, rank: int, world_size: int, poll_seconds: float = POLL_SECONDS) -> None:
        self.store, self.rank, self.world_size, self.poll_seconds = store, rank, world_size, poll_seconds

    def _check_failed(self) -> None:
        if self.store.check([FAILED]):
            raise RankFailed(self.store.get(FAILED).decode(errors="replace"))

    def fail(self, message: str, wait_s: float = HEARD_WAIT_S) -> float:
        """Tell the other ranks this one failed: they stop waiting and exit with `message` (`stop`).

        Waits until every other rank has reported it, or `wait_s` seconds (a rank busy preparing its share
        does not look): torchrun ends the others as soon as this rank exits, perhaps before they would
        have said why. Returns the seconds waited.
        """
        start = time.monotonic()
        self.store.set(FAILED, message)
        while self.store.add(HEARD, 0) < self.world_size - 1 and time.monotonic() - start < wait_s:
            time.sleep(self.poll_seconds / 10)
        return time.monotonic() - start

    def stop(self, failure: RankFailed) -> NoReturn:
        """Stop this rank because another failed: log why ("[rank N] stopping: <its message>"), tell the
        failed rank it was heard, exit with code 1 (SystemExit)."""
        log.error("stopping: %s", failure)
        self.store.add(HEARD, 1)
        raise SystemExit(1)

    def meet(self, name: str) -> float:
        """Wait until every rank has reached `name`; the seconds waited. RankFailed if one failed."""
        start = time.monotonic()
        key = PREFIX + name
        self.store.add(key, 1)
        while self.store.add(key, 0) < self.world_size:
            self._check_failed()
            time.sleep(self.poll_seconds)
        return time.monotonic() - start

    def publish(self, name: str, value: str) -> None:
        """Make `value` readable by every rank under `name`."""
        self.store.set(PREFIX + name, value)

    def read(self, name: str) -> tuple[str, float]:
        """(the value published under `name`, seconds waited for it); RankFailed if a rank failed first."""
        start = time.monotonic()
        key = PREFIX + name
        while not self.store.check([key]):
            self._check_failed()
            time.sleep(self.poll_seconds)
        return self.store.get(key).decode(), time.monotonic() - start


@contextlib.contextmanager
def rank_0_holds(
    lock: Callable[[], contextlib.AbstractContextManager], sync: RankSync | None, name: str = "run_lock"
) -> Iterator[None]:
    """Rank 0 holds `lock()` for the block (e.g. the run folder's lock); the other ranks enter once it has it.

    When rank 0 is refused (RunLocked: another run holds the folder), it logs why, says so under FAILED,
    waits until the others have logged it too ("[rank N] stopping: <why>", `RankSync.fail`), and exits
    with code 1, as they do: none waits in a collective until --dist-timeout. `sync` None (one process):
    just `lock()`, whose error propagates.

    Raises:
        SystemExit(1): on every rank, when rank 0 could not take the lock (on the others also when rank 0
            failed earlier and said so).
        Whatever `lock()` raises, when `sync` is None.
    """
    if sync is None:
        with lock():
            yield
        return
    if sync.rank != 0:
        try:
            sync.read(name)
        except RankFailed as e:
            sync.stop(e)
        yield
        return
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(lock())
        except Exception as e:
            log.error("%s", e)  # before the others exit: torchrun then ends this rank at once
            sync.fail(str(e))
            raise SystemExit(1) from None
        sync.publish(name, "held")
        yield
