"""What the trainer needs from a diffusion model, whatever runs it (ComfyUI in the nodes and the CLI)."""

from __future__ import annotations

from typing import Protocol

import torch


class DiffusionBackend(Protocol):
    """A frozen text encoder + UNet that the mapper's gradients flow through."""

    device: torch.device
    training_dtype: torch.dtype  # what the UNet's forward and backward compute in; fp16 means loss scaling

    def text_context(self, prompt: str, s_star: torch.Tensor | None = None) -> torch.Tensor:
        """Cross-attention context [B, 77, 768]; with s_star [B, 2, 768] the identifier carries S* (differentiably)."""

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t of VAE latents (as the VAE encodes them) at integer DDPM timesteps [B]."""

    def predict_noise(self, noisy: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The UNet's eps prediction for z_t."""

    def frozen_fingerprint(self) -> str:
        """A hash of every frozen weight, to prove training left them untouched."""
