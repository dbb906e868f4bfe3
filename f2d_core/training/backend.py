"""What the trainer needs from a diffusion model, whatever runs it (ComfyUI in the nodes and the CLI).

SD1.x and SDXL share one trainer through this seam: a backend's `family` says which text path and
UNet conditioning it runs, its `text_context` returns a `TextCond` (cross-attention context, and for
SDXL the bigG pooled vector), and `predict_noise` takes that and, for SDXL, each sample's size
conditioning (`size_conditioning.size_ids`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import torch

FAMILIES = ("sd1", "sdxl")
POOLED_SOURCES = ("class_prompt", "identity_prompt")  # docs/sdxl.md D5: where SDXL's pooled vector comes from

SStar = torch.Tensor | Mapping[str, torch.Tensor]  # SD1: [B, 2, 768]; SDXL: {"l": [B, 2, 768], "g": [B, 2, 1280]}


@dataclass
class TextCond:
    """A prompt's conditioning as the UNet takes it.

    context: [B, 77, 768] (SD1) or [B, 77, 2048] (SDXL, CLIP-L 768 | bigG 1280), float32.
    pooled: [B, 1280] bigG projected pooled vector (SDXL), None for SD1.
    """

    context: torch.Tensor
    pooled: torch.Tensor | None = None

    def detach(self) -> TextCond:
        """Both tensors without autograd history."""
        return TextCond(self.context.detach(), None if self.pooled is None else self.pooled.detach())

    def expand(self, batch: int) -> TextCond:
        """A batch-1 conditioning repeated (as a view) to `batch` rows."""
        pooled = None if self.pooled is None else self.pooled.expand(batch, -1)
        return TextCond(self.context.expand(batch, -1, -1), pooled)

    def with_pooled(self, pooled: torch.Tensor | None) -> TextCond:
        """The same context with another pooled vector [B, 1280] (or None)."""
        return TextCond(self.context, pooled)


class DiffusionBackend(Protocol):
    """A frozen text encoder + UNet that the mapper's gradients flow through."""

    family: str  # one of FAMILIES
    device: torch.device
    training_dtype: torch.dtype  # what the UNet's forward and backward compute in; fp16 means loss scaling

    def text_context(self, prompt: str, s_star: SStar | None = None, pooled: bool = False) -> TextCond:
        """The prompt's conditioning; with s_star the identifier carries S* (differentiably).

        pooled: also compute the pooled vector from this prompt (SDXL; always for a prompt without S*).
        """

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t of VAE latents (as the VAE encodes them) at integer DDPM timesteps [B]."""

    def predict_noise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: TextCond, size_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The UNet's eps prediction for z_t; size_ids [B, 6] is SDXL's size conditioning (ignored by SD1)."""

    def frozen_fingerprint(self) -> str:
        """A hash of every frozen weight, to prove training left them untouched."""
