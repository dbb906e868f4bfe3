"""Progress of a loop over a batch, reported to whoever runs it; the same call lets them stop it.

A loop over images calls `progress(done, total)` after each image (or chunk of images). The caller's
callback shows it (ComfyUI's progress bar) and may raise to stop the loop: ComfyUI's nodes pass one
that raises ComfyUI's interrupt exception once the user pressed Cancel, so a batch of hundreds of
frames stops within one image's work instead of at its end. f2d_core never imports ComfyUI: it only
calls what it is given.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import torch

# progress(done, total): `done` of `total` items finished (ints, 0 <= done <= total). May raise to stop.
Progress = Callable[[int, int], None]

# Images per forward pass in the scoring and expression loops: small enough that one chunk of a large
# model on a CPU takes about a second, so a Cancel lands within about a second.
CHUNK = 8


def no_progress(done: int, total: int) -> None:
    """The default callback: reports nothing, never stops."""


def in_chunks(batch: torch.Tensor, progress: Progress | None = None, size: int | None = None) -> Iterator[torch.Tensor]:
    """`batch` [N, ...] in chunks of `size` (default CHUNK) along dim 0, reporting `progress(done, N)` after each.

    The report for a chunk comes when the caller asks for the next one (and after the last), so it
    counts work done. Raises whatever `progress` raises (a caller's "stop").
    """
    report = progress or no_progress
    total, size = int(batch.shape[0]), size or CHUNK
    for start in range(0, total, size):
        yield batch[start : start + size]
        report(min(start + size, total), total)
