"""Library script (run by tests/support/comfy_library_run.py): gradient checkpointing's granularities.

For the tiny SD1.5 and the tiny SDXL (each loaded as ComfyUI loads a checkpoint, fp32): the gradient of a
CGDR-like loss with respect to S* through the backend's text path and UNet, with the UNet copy
un-checkpointed and then checkpointed at each granularity ("block", "transformer_block"; a deep copy of
the same weights each time), and which module classes were swapped for checkpointing ones. The SD1
backend is also built with `checkpoint_granularity` through `make_backend`, as the node and the CLI do.
"""

from __future__ import annotations

import copy
import json
from collections import Counter
from pathlib import Path

import comfy.sd
import torch
from comfyui_face2diffusion.nodes.training.comfy_backend import CHECKPOINT_GRANULARITIES, enable_gradient_checkpointing
from comfyui_face2diffusion.nodes.training.comfy_backend_sdxl import make_backend

PROMPT = "A photo of f l"


def _s_star_grad(backend, s_star) -> torch.Tensor:
    """d loss / d S* for a fixed noisy latent, timestep and target (batch 2)."""
    g = torch.Generator().manual_seed(3)
    s_star = (
        {k: v.clone().requires_grad_(True) for k, v in s_star.items()}
        if isinstance(s_star, dict)
        else (s_star.clone().requires_grad_(True))
    )
    cond = backend.text_context(PROMPT, s_star, pooled=True)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    timesteps = torch.tensor([100, 700])
    sizes = torch.tensor([[700.0, 700.0, 0.0, 0.0, 64.0, 64.0]] * 2)
    noisy = backend.noisy_latents(latents, noise, timesteps)
    loss = (backend.predict_noise(noisy, timesteps, cond, sizes) - noise).square().mean()
    leaves = list(s_star.values()) if isinstance(s_star, dict) else [s_star]
    return torch.cat([t.flatten() for t in torch.autograd.grad(loss, leaves)])


def _swapped(unet: torch.nn.Module) -> dict[str, int]:
    """Class name -> how many modules of the UNet are checkpointing subclasses."""
    return dict(Counter(type(m).__name__ for m in unet.modules() if getattr(type(m), "_f2d_checkpointed", False)))


def _granularities(backend, s_star) -> dict:
    reference = _s_star_grad(backend, s_star)
    plain = backend.unet
    out = {
        "modules": dict(Counter(type(m).__name__ for m in plain.modules())),
        "grad_norm": reference.norm().item(),
    }
    for granularity in CHECKPOINT_GRANULARITIES:
        backend.unet = copy.deepcopy(plain)
        count = enable_gradient_checkpointing(backend.unet, granularity)
        grad = _s_star_grad(backend, s_star)
        out[granularity] = {
            "count": count,
            "swapped": _swapped(backend.unet),
            "max_rel_diff": ((grad - reference).abs().max() / reference.abs().max()).item(),
        }
        backend.unet = plain
    out["plain_unet_swapped"] = _swapped(plain)
    return out


def main(sd1_checkpoint: str, sdxl_checkpoint: str, te_options: str) -> dict:
    g = torch.Generator().manual_seed(0)
    out: dict = {}
    with torch.inference_mode(False):
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(sd1_checkpoint, output_vae=False)
        backend = make_backend(model, clip, training_dtype="fp32")
        out["sd1"] = _granularities(backend, 0.02 * torch.randn(2, 2, 768, generator=g))
        del backend
        threaded = make_backend(
            model, clip, training_dtype="fp32", gradient_checkpointing=True, checkpoint_granularity="transformer_block"
        )
        out["sd1_through_make_backend"] = _swapped(threaded.unet)
        del threaded
        options = {**json.loads(Path(te_options).read_text()), "dtype": torch.float32}
        model, clip, _, _ = comfy.sd.load_checkpoint_guess_config(
            sdxl_checkpoint, output_vae=False, te_model_options=options
        )
        backend = make_backend(model, clip, training_dtype="fp32")
        s_star = {"l": 0.02 * torch.randn(2, 2, 768, generator=g), "g": 0.02 * torch.randn(2, 2, 1280, generator=g)}
        out["sdxl"] = _granularities(backend, s_star)
    return out
