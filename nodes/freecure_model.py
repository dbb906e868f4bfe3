"""FreeCure's hooks into a ComfyUI model: which self-attention layers, the attn1_replace patch on a clone,
and one KSampler run exactly as core's KSampler does it."""

from __future__ import annotations

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.sample
import comfy.utils
import latent_preview
import torch
from comfy.ldm.modules.attention import SpatialTransformer, attention_pytorch
from comfy.ldm.modules.diffusionmodules.openaimodel import Upsample

from ..f2d_core.errors import F2DError
from ..f2d_core.freecure.patch import FasaPatch

LAYER_CHOICES = ("F2D default (last two up levels)", "all up-blocks")
LayerKey = tuple[str, int, int]


class FreeCureModelError(F2DError, ValueError):
    """The model or face is not one FreeCure can run on: not SD1.x, or no up-block self-attention to patch."""


SD1_CONTEXT_DIM = 768  # SD1.x's cross-attention width: CLIP ViT-L/14's hidden size, F2D's S* width
SDXL_INSTEAD = "For SDXL, use Apply F2D Tokens with a KSampler (FreeCure on SDXL is not supported yet)."


def check_sd1_freecure(model, face_family: str) -> None:
    """Refuse what FreeCure here is not for: a face from an SDXL mapper, or a MODEL that is not an SD1.x UNet.

    F2D's FreeCure (its paper's F2D setting, docs/freecure.md) patches SD1.x's up-block self-attention and
    builds the person's conditioning without SDXL's pooled vector. A MODEL counts as SD1.x when its UNet's
    cross-attention width is 768 (SD2.x: 1024, SDXL: 2048, SDXL refiner: 1280; Flux and SD3 have no UNet).
    Raises FreeCureModelError naming what was given.
    """
    if face_family == "sdxl":
        raise FreeCureModelError(
            "F2D FreeCure runs SD1.x Face2Diffusion, and this face comes from an SDXL mapper. " + SDXL_INSTEAD
        )
    base = model.model
    width = base.model_config.unet_config.get("context_dim")
    if width != SD1_CONTEXT_DIM:
        raise FreeCureModelError(
            f"F2D FreeCure runs on SD1.x checkpoints, and this MODEL is {type(base).__name__} (cross-attention "
            f"width {width}, SD1.x's is {SD1_CONTEXT_DIM}): load an SD1.x checkpoint (e.g. SD1.5). " + SDXL_INSTEAD
        )


def up_block_layers(model, which: str = LAYER_CHOICES[0]) -> list[LayerKey]:
    """The attn1_replace keys ("output", block, depth index) of the UNet's up-block transformers.

    The default is FreeCure's F2D setting: the last two resolution levels that have transformers (SD1.x:
    output blocks 6-11, 32x32 and 64x64 at 512x512); "all up-blocks" adds the earlier ones (SD1.x: 3-11).
    Read from the model, so any UNet of this structure works. Raises FreeCureModelError when none exist.
    """
    unet = model.get_model_object("diffusion_model")
    blocks = getattr(unet, "output_blocks", None)
    found: list[tuple[int, LayerKey]] = []
    level = 0
    for i, block in enumerate(blocks or []):
        for module in block:
            if isinstance(module, SpatialTransformer):
                found += [(level, ("output", i, d)) for d in range(len(module.transformer_blocks))]
        if any(isinstance(m, Upsample) for m in block):
            level += 1
    if not found:
        raise FreeCureModelError(
            "F2D FreeCure: this model has no up-block self-attention to patch (no UNet output blocks with "
            "transformers); FreeCure needs an SD1.x checkpoint, as F2D does."
        )
    if which == LAYER_CHOICES[1]:
        return [key for _, key in found]
    levels = sorted({lv for lv, _ in found})[-2:]
    return [key for lv, key in found if lv in levels]


class PlainAttention:
    """plain(q, k, v, extra_options): what the layer computes without FreeCure: an attn1_replace patch already
    on the model for that block (chained), else the user's attention backend, called as core calls it."""

    def __init__(self, model) -> None:
        self.replaced = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn1", {})

    def previous(self, eo: dict):
        """The attn1_replace patch the model had for this block, or None."""
        block = tuple(eo["block"])
        return self.replaced.get((*block, eo.get("block_index", 0))) or self.replaced.get(block)

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, eo: dict) -> torch.Tensor:
        previous = self.previous(eo)
        if previous is not None:
            return previous(q, k, v, eo)
        return comfy_attention.optimized_attention(
            q, k, v, eo["n_heads"], attn_precision=eo["attn_precision"], transformer_options=eo
        )

    def rows_independent(self, eo: dict) -> bool:
        """True where the backend attends each row on its own (any subset of rows gives those rows' output);
        a chained patch may read the batch layout (cond_or_uncond), so it always gets the whole batch."""
        return self.previous(eo) is None


def patched(model, patch: FasaPatch, layers: list[LayerKey]):
    """A clone of `model` with `patch` as attn1_replace on `layers`; `model` itself is left untouched."""
    clone = model.clone()
    for name, number, index in layers:
        clone.set_model_attn1_replace(patch, name, number, index)
    return clone


def masked_attention():
    """The attention function for FASA's masked rows: ComfyUI's attention_pytorch (SDPA) whatever the user's
    backend, since sage/flash/xformers/sub-quad treat float masks differently (specification Sec. 5.4)."""
    return attention_pytorch


def ksample(
    model,
    seed: int,
    steps: int,
    cfg: float,
    sampler_name: str,
    scheduler: str,
    positive: list,
    negative: list,
    latent: dict,
    denoise: float = 1.0,
    disable_noise: bool = False,
    start_step: int | None = None,
    last_step: int | None = None,
    force_full_denoise: bool = False,
) -> torch.Tensor:
    """Core KSampler's sampling (nodes.common_ksampler), returning the samples tensor."""
    latent_image = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    if disable_noise:
        noise = torch.zeros(latent_image.size(), dtype=latent_image.dtype, layout=latent_image.layout, device="cpu")
    else:
        noise = comfy.sample.prepare_noise(latent_image, seed, latent.get("batch_index"))
    callback = latent_preview.prepare_callback(model, steps)
    return comfy.sample.sample(
        model, noise, steps, cfg, sampler_name, scheduler, positive, negative, latent_image,
        denoise=denoise, disable_noise=disable_noise, start_step=start_step, last_step=last_step,
        force_full_denoise=force_full_denoise, noise_mask=latent.get("noise_mask"), callback=callback,
        disable_pbar=not comfy.utils.PROGRESS_BAR_ENABLED, seed=seed,
    )  # fmt: skip


def cache_budget(model) -> int:
    """Bytes of recorded foundation keys kept on the sampling device: a quarter of its free memory (ComfyUI's
    `get_free_memory`, which counts memory torch has reserved but not in use). Asked by FoundationCache at its
    first record, inside stage 1's first UNet call, so the UNet's weights are already resident."""
    device = model.load_device
    if torch.device(device).type == "cpu":
        return 1 << 62
    return int(comfy.model_management.get_free_memory(device) * 0.25)
