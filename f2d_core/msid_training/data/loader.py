"""The training loader of MSID: shuffled batches per epoch, a disjoint share per DDP rank, decoded in worker processes.

Each epoch's order is a permutation drawn from (seed, epoch) alone, the same on every rank; rank r
takes places r, r + world_size, ... of it, so the ranks' shares are disjoint and together cover the
epoch (with `drop_last`, the tail that does not fill a batch on every rank is left out, so every rank
runs the same number of steps, as DDP needs). A run resumes mid-epoch by starting at `start_batch`
with the same seed and epoch: the batches are exactly those an uninterrupted run would have seen.

The sampler hands each worker a whole batch of indices; the worker reads and decodes them together
(`FaceRecognitionDataset.batch`: one gather from a packed crops file, or PIL decodes of record-file
JPEGs) and returns uint8 [B, 3, 112, 112] and int64 [B], pinned for an asynchronous copy to the GPU.
The training thread does no work per image.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ...errors import F2DError
from .face_dataset import FaceRecognitionDataset

PREFETCH_BATCHES = 4  # batches each worker keeps ready


def batches_per_epoch(size: int, batch_size: int, world_size: int, drop_last: bool = True) -> int:
    """Batches each rank runs per epoch over `size` images at `batch_size` per rank."""
    per_step = batch_size * world_size
    return size // per_step if drop_last else math.ceil(size / per_step)


class ShardedBatchSampler(Sampler[list[int]]):
    """This rank's batches (lists of image indices) of one epoch, from `start_batch` on; `set_epoch` moves on."""

    def __init__(
        self,
        size: int,
        batch_size: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        seed: int = 0,
        epoch: int = 0,
        start_batch: int = 0,
        drop_last: bool = True,
    ) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise F2DError(f"batch_size {batch_size}, rank {rank} of {world_size}: not a valid share.")
        self.size, self.batch_size, self.rank, self.world_size = size, batch_size, rank, world_size
        self.seed, self.drop_last = seed, drop_last
        self.batches = batches_per_epoch(size, batch_size, world_size, drop_last)
        if self.batches == 0:
            raise F2DError(
                f"{size} images make no batch of {batch_size} on each of {world_size} ranks: "
                "lower the batch size or add images."
            )
        self.set_epoch(epoch, start_batch)

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        """Use epoch `epoch`'s order, starting at its batch `start_batch` (0..batches; resume mid-epoch)."""
        if not 0 <= start_batch <= self.batches:
            raise F2DError(f"start_batch {start_batch} is outside the epoch's {self.batches} batches.")
        self.epoch, self.start_batch = epoch, start_batch

    def epoch_order(self) -> np.ndarray:
        """int64 [batches, batch_size]: this rank's image indices of the whole epoch, batch by batch."""
        order = np.random.default_rng([self.seed, self.epoch]).permutation(self.size)
        needed = self.batches * self.batch_size * self.world_size
        if needed > self.size:  # no drop_last: the last batches wrap around to the epoch's start
            order = np.resize(order, needed)
        share = order[self.rank : needed : self.world_size]
        return share.reshape(self.batches, self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.epoch_order()[self.start_batch :]:
            yield batch.tolist()

    def __len__(self) -> int:
        return self.batches - self.start_batch


class _Batches(Dataset):
    """The dataset seen by the DataLoader: a list of indices -> one whole decoded batch."""

    def __init__(self, dataset: FaceRecognitionDataset) -> None:
        self.dataset = dataset

    def __getitem__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        return self.dataset.batch(indices)

    def __len__(self) -> int:
        return len(self.dataset)


def _one_thread(_: int) -> None:
    """Worker start: one torch thread each (the workers are the parallelism)."""
    torch.set_num_threads(1)


def make_training_loader(
    dataset: FaceRecognitionDataset,
    batch_size: int,
    *,
    rank: int = 0,
    world_size: int = 1,
    seed: int = 0,
    epoch: int = 0,
    start_batch: int = 0,
    workers: int,
    pin_memory: bool,
    drop_last: bool = True,
    start_method: str | None = None,
) -> DataLoader:
    """Batches (uint8 [B, 3, 112, 112] RGB, int64 [B]) of this rank's share of epoch `epoch`, from `start_batch`.

    batch_size is per rank (the global batch is batch_size x world_size). workers: decode processes
    (0 decodes on the calling thread, for tests); they persist across epochs: call
    `loader.sampler.set_epoch(epoch, start_batch)` before iterating again. `len(loader)` is the
    number of batches left in the epoch. start_method: how workers start ("fork", "spawn", "forkserver";
    None: the platform's default: spawn on Windows and macOS, forkserver on Linux from Python 3.14). Under
    spawn and forkserver the dataset is pickled to each worker: a record file's map is not (each worker
    maps the file again), in-memory crops go through shared memory. Raises F2DError for a batch no rank can fill.
    """
    sampler = ShardedBatchSampler(
        len(dataset),
        batch_size,
        rank=rank,
        world_size=world_size,
        seed=seed,
        epoch=epoch,
        start_batch=start_batch,
        drop_last=drop_last,
    )
    return DataLoader(
        _Batches(dataset),
        batch_size=None,
        sampler=sampler,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        worker_init_fn=_one_thread if workers > 0 else None,
        multiprocessing_context=start_method if workers > 0 else None,
    )
