"""The foundation branch's self-attention keys and values, recorded while it is sampled alone (stage 1)
and replayed to the personalised branch's FASA (stage 2), so that stage 2 samples only the PD rows.

An entry is keyed by (layer, chunk kind, ordinal of that kind in the UNet call, sigma); a list per key
keeps repeated evaluations at one sigma (heun evaluates sigma_{i+1} twice) in call order. Stage 2 runs the
same sampler over the same schedule, so it asks for the keys in the same order. Once the masks are known,
`gather` keeps only the in-mask tokens (a fraction of the full 0.7 GB per 512x512 image at 30 steps, fp16).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable

import torch

from .masks import LayerMasks

CacheKey = tuple[Hashable, int, int, float]  # (layer, kind, ordinal, sigma)
FoundationTokens = list[tuple[torch.Tensor, torch.Tensor]]  # per pair: (keys [m_j, D], values [m_j, D])


class FoundationCache:
    """Recorded FD keys/values, full ([pairs, N, D]) until `gather`, then per pair in-mask only."""

    def __init__(
        self, storage_device: torch.device | str | None = None, budget_bytes: int | Callable[[], int] | None = None
    ) -> None:
        """storage_device: where records go (None: where they were computed). budget_bytes: once the records
        would exceed it, later ones go to the CPU instead (a GPU's memory is kept for sampling). A callable is
        asked once, at the first record: by then the sampler has loaded the UNet, so free memory it reads no
        longer counts the UNet's weights."""
        self.storage_device = storage_device
        self.budget_bytes = budget_bytes
        self._held = 0
        self._full: dict[CacheKey, list[tuple[torch.Tensor, torch.Tensor, tuple[int, int]]]] = defaultdict(list)
        self._gathered: dict[CacheKey, list[FoundationTokens]] = {}
        self._next: dict[CacheKey, int] = defaultdict(int)
        self.misses = 0

    def record(self, key: CacheKey, keys: torch.Tensor, values: torch.Tensor, hw: tuple[int, int]) -> None:
        """Store one call's FD rows: keys, values [pairs, N, D] at layer resolution hw = (h, w)."""
        device = self.storage_device or keys.device
        size = keys.nbytes + values.nbytes
        if callable(self.budget_bytes):
            self.budget_bytes = int(self.budget_bytes())
        if self.budget_bytes is not None and self._held + size > self.budget_bytes:
            device = "cpu"
        else:
            self._held += size
        self._full[key].append((keys.detach().to(device, copy=True), values.detach().to(device, copy=True), hw))

    def gather(self, masks: LayerMasks) -> None:
        """Keep only the tokens inside each pair's mask (drops the full tensors). Idempotent."""
        for key, calls in self._full.items():
            self._gathered[key] = [
                [(k[j, idx.to(k.device)], v[j, idx.to(v.device)]) for j, idx in enumerate(masks.all_tokens(*hw))]
                for k, v, hw in calls
            ]
        self._full.clear()
        self.rewind()

    def clear(self) -> None:
        """Drop every record now (their memory goes back to the allocator), e.g. when sampling stops early: a
        patch or a traceback that still refers to this cache then holds nothing."""
        self._full.clear()
        self._gathered.clear()
        self._held = 0
        self.rewind()

    def rewind(self) -> None:
        """Replay from the first recorded call again."""
        self._next.clear()
        self.misses = 0

    def next(self, key: CacheKey) -> FoundationTokens | None:
        """The next recorded call's gathered tokens for `key`, or None (counted in `misses`)."""
        calls = self._gathered.get(key)
        i = self._next[key]
        if calls is None or i >= len(calls):
            self.misses += 1
            return None
        self._next[key] = i + 1
        return calls[i]

    @property
    def calls(self) -> int:
        """How many layer calls are stored."""
        return sum(len(c) for c in self._full.values()) + sum(len(c) for c in self._gathered.values())

    @property
    def nbytes(self) -> int:
        """Bytes held now."""
        full = sum(k.nbytes + v.nbytes for calls in self._full.values() for k, v, _ in calls)
        gathered = sum(k.nbytes + v.nbytes for calls in self._gathered.values() for pairs in calls for k, v in pairs)
        return full + gathered
