"""Run a function on several gloo ranks of one machine (torch.multiprocessing spawn), for tests of sharding."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _rank_main(rank: int, world_size: int, folder: str, function: Callable, args: tuple) -> None:
    dist.init_process_group("gloo", init_method=f"file://{folder}/rendezvous", rank=rank, world_size=world_size)
    try:
        torch.save(function(rank, world_size, *args), Path(folder) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_on_ranks(function: Callable, world_size: int, folder: Path, *args) -> list:
    """`function(rank, world_size, *args)` on each of `world_size` gloo ranks; their results (tensors, lists,
    dicts of them) in rank order. `function` must be importable (defined at a module's top level)."""
    folder.mkdir(parents=True, exist_ok=True)
    mp.spawn(_rank_main, args=(world_size, str(folder), function, args), nprocs=world_size, join=True)
    return [torch.load(folder / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]
