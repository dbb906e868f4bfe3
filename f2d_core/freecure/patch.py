"""The attn1-replace callable that applies FASA inside a UNet's self-attention, in three modes.

Called as ComfyUI's attn1_replace patches are: `out = patch(q, k, v, extra_options)`, q, k, v
[B, N, heads*dim] (already projected), returning [B, N, heads*dim]. extra_options carries `n_heads`,
`cond_or_uncond`, `sigmas`, `block`, `block_index`, `activations_shape` and `original_shape`; nothing
here imports ComfyUI: the caller passes the attention functions.

Modes:
- "pairs": the batch holds [PD x k, FD x k] per chunk (the straightforward two-stage port, stage 2).
- "record": the batch holds FD x k per chunk (stage 1 of the fast route): output is plain; the FD keys and
  values are stored in a FoundationCache.
- "cached": the batch holds PD x k per chunk (stage 2 of the fast route): FD keys and values come from the
  cache, gathered to the masks.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .attention import COND, UNCOND, AttentionFn, fasa_attention, fasa_attention_cached
from .foundation_cache import FoundationCache
from .gating import SigmaWindow
from .masks import LayerMasks

log = logging.getLogger(__name__)

PlainAttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, dict], torch.Tensor]
MODES = ("pairs", "record", "cached")


@dataclass
class PatchStats:
    """What the patch did, for reports and tests."""

    fasa_calls: int = 0  # layer calls where FASA changed rows (or recorded, in "record" mode)
    plain_calls: int = 0  # layer calls left plain (gated out, wrong layout, cropped area)
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, why: str) -> None:
        self.plain_calls += 1
        self.skipped[why] = self.skipped.get(why, 0) + 1


class FasaPatch:
    """One callable for every FASA layer (the layer is read from extra_options)."""

    def __init__(
        self,
        mode: str,
        pairs: int,
        plain_attention: PlainAttentionFn,
        attention: AttentionFn,
        window: SigmaWindow | None = None,
        omega: float = 0.5,
        style_fidelity: float = 1.0,
        masks: LayerMasks | None = None,
        cache: FoundationCache | None = None,
        latent_hw: tuple[int, int] | None = None,
        rows_independent: Callable[[dict], bool] | None = None,
    ) -> None:
        """rows_independent(extra_options): whether plain_attention computes each row on its own at that layer
        (ComfyUI's attention backends: yes; another node's patch: not known), so that the "cached" mode can
        leave out the plain attention of the rows FASA replaces. None: never assumed."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if mode == "pairs" and masks is None:
            raise ValueError("mode 'pairs' needs masks")
        if mode in ("record", "cached") and cache is None:
            raise ValueError(f"mode {mode!r} needs a FoundationCache")
        self.mode, self.pairs = mode, pairs
        self.plain_attention, self.attention = plain_attention, attention
        self.window, self.omega, self.style_fidelity = window or SigmaWindow(), float(omega), float(style_fidelity)
        self.masks, self.cache, self.latent_hw = masks, cache, latent_hw
        self.rows_independent = rows_independent
        self.kinds = {COND} if self.style_fidelity == 1.0 else {COND, UNCOND}
        self.stats = PatchStats()

    def __deepcopy__(self, memo: dict) -> FasaPatch:
        """The same object: ComfyUI deep-copies model options when it clones a model during sampling, and the
        recorded foundation keys must reach the run that replays them."""
        return self

    def _plain_reason(self, q: torch.Tensor, eo: dict) -> tuple[str | None, tuple[int, int]]:
        """Why this call stays plain (None: FASA applies), and the layer's (h, w)."""
        h, w = (int(s) for s in eo["activations_shape"][-2:])
        cu = eo["cond_or_uncond"]
        rows = 2 * self.pairs if self.mode == "pairs" else self.pairs
        if h * w != q.shape[1]:
            return "tokens are not the layer's h*w", (h, w)
        if self.latent_hw is not None and tuple(eo["original_shape"][-2:]) != tuple(self.latent_hw):
            return "cropped input (area conditioning)", (h, w)
        if len(cu) == 0 or q.shape[0] != len(cu) * rows:
            return "batch is not the PD/FD layout", (h, w)
        if not self.window.contains(float(eo["sigmas"].reshape(-1)[0])):
            return "outside the sigma window", (h, w)
        return None, (h, w)

    def _key(self, eo: dict, kind: int, ordinal: int) -> tuple:
        layer = (*eo["block"], eo.get("block_index", 0))
        return (layer, kind, ordinal, float(eo["sigmas"].reshape(-1)[0]))

    def _ordinals(self, cu: list[int]) -> list[int]:
        """For each chunk, how many chunks of its kind come before it in this call."""
        seen: dict[int, int] = {}
        out = []
        for kind in cu:
            out.append(seen.get(kind, 0))
            seen[kind] = out[-1] + 1
        return out

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, extra_options: dict) -> torch.Tensor:
        eo = extra_options
        why, (h, w) = self._plain_reason(q, eo)
        if why is not None:
            self.stats.skip(why)
            return self.plain_attention(q, k, v, eo)
        cu = list(eo["cond_or_uncond"])
        heads = int(eo["n_heads"])
        if self.mode == "cached":
            foundation = {}
            for c, (kind, ordinal) in enumerate(zip(cu, self._ordinals(cu), strict=True)):
                if kind in self.kinds:
                    tokens = self.cache.next(self._key(eo, kind, ordinal))
                    if tokens is not None:
                        foundation[c] = tokens
            plain, plain_rows = None, None
            if self.rows_independent is not None and self.rows_independent(eo):
                plain_rows = self._plain_rows(q, k, v, eo)  # the rows FASA replaces get no plain attention
            else:
                plain = self.plain_attention(q, k, v, eo)
            out = fasa_attention_cached(
                q, k, v, heads, cu, foundation, self.omega, self.style_fidelity, self.attention, plain, plain_rows
            )
            self.stats.fasa_calls += 1
            return out
        plain = self.plain_attention(q, k, v, eo)
        if self.mode == "pairs":
            out = fasa_attention(
                q, k, v, heads, cu, self.pairs, self.masks.all_tokens(h, w), self.omega, self.style_fidelity,
                self.attention, plain,
            )  # fmt: skip
        else:  # record
            for c, (kind, ordinal) in enumerate(zip(cu, self._ordinals(cu), strict=True)):
                if kind in self.kinds:
                    rows = slice(c * self.pairs, (c + 1) * self.pairs)
                    self.cache.record(self._key(eo, kind, ordinal), k[rows], v[rows], (h, w))
            out = plain
        self.stats.fasa_calls += 1
        return out

    def _plain_rows(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eo: dict):
        """plain_rows(rows) for fasa_attention_cached: the plain attention of some rows (None: the whole batch)."""

        def plain_rows(rows: torch.Tensor | None) -> torch.Tensor:
            if rows is None:
                return self.plain_attention(q, k, v, eo)
            return self.plain_attention(q[rows], k[rows], v[rows], eo)

        return plain_rows
