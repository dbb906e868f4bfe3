"""The trainer's diffusion backend on ComfyUI objects: a MODEL (UNet) and a CLIP, both kept frozen.

ComfyUI loads weights under `torch.inference_mode()`, and such tensors cannot be saved for backward;
its CLIP layers also add in place. So the backend trains through private, non-inference copies of the
UNet and the CLIP-L text model, and runs the text model with out-of-place residual adds. The UNet copy
is in the training dtype (`f2d_core.training.precision`): bf16 or fp32, or ComfyUI's fp16 with a loss
scale, never a plain fp16 backward. The user's MODEL and CLIP are never modified.

Memory: the copies are first taken to the CPU in the weights' own dtype (with the MODEL's patches,
e.g. LoRAs, applied, as ComfyUI loaded it), the user's models are unloaded, and only then do the
copies go to the device, one tensor at a time, in the training dtype. The device's peak is one UNet
in the training dtype (SD1.5: 3.4 GB fp32, 1.7 GB bf16) plus the text encoder, never two UNets.
Gradient checkpointing swaps the blocks' class for a checkpointing subclass (no reference cycle), so
the copies are freed the moment the backend is dropped.

Attention: the UNet copy runs every attention through PyTorch's scaled_dot_product_attention
(`optimized_attention_override`, which ComfyUI's `wrap_attn` honours), because the global backend
ComfyUI was started with may have no backward (--use-sage-attention, --use-flash-attention).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Sequence
from dataclasses import dataclass

import comfy.ldm.modules.attention as comfy_attention
import comfy.model_management
import comfy.model_sampling
import torch
from comfy.cli_args import args as comfy_args
from comfy.ldm.modules.attention import attention_pytorch, optimized_attention_for_device
from torch import nn
from torch.utils.checkpoint import checkpoint

from ...f2d_core.conditioning.injection import DEFAULT_IDENTIFIER, find_identifier
from ...f2d_core.errors import F2DError
from ...f2d_core.training.backend import TextCond
from ...f2d_core.training.data.cache import module_fingerprint
from ...f2d_core.training.placement import cpu_training_warning
from ...f2d_core.training.precision import dtype_name, resolve_training_dtype
from ..clip_tokens import check_sd1_clip, identifier_ids, special_tokens

log = logging.getLogger(__name__)

# Gradient checkpointing's granularity -> the UNet classes whose forward is recomputed in backward (docs/sdxl.md
# 3.5). "block": each ResBlock and whole SpatialTransformer (SDXL's level-3 one holds 10 transformer blocks, the
# per-sample peak while it is recomputed); "transformer_block": each ResBlock and each BasicTransformerBlock inside
# the SpatialTransformers (not the SpatialTransformer itself: nested, its blocks would be recomputed twice).
CHECKPOINT_GRANULARITIES: dict[str, tuple[str, ...]] = {
    "block": ("ResBlock", "SpatialTransformer"),
    "transformer_block": ("ResBlock", "BasicTransformerBlock"),
}


def host_copy(module: nn.Module) -> nn.Module:
    """A frozen copy of `module` that can be saved for backward, every tensor on the CPU in its own dtype.

    Built tensor by tensor (deepcopy with the copies pre-seeded), so the device `module` is on holds
    nothing new; move it with `to_training_device` once the original is unloaded.
    """
    memo: dict[int, object] = {}
    with torch.inference_mode(False):
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            clone = tensor.detach().to("cpu", copy=True)
            memo[id(tensor)] = nn.Parameter(clone, requires_grad=False) if isinstance(tensor, nn.Parameter) else clone
        return copy.deepcopy(module, memo).requires_grad_(False).eval()


def to_training_device(module: nn.Module, device: torch.device, dtype: torch.dtype | None = None) -> nn.Module:
    """`module` moved to `device` (floating tensors cast to `dtype`) one tensor at a time: the peak is its new size."""
    with torch.inference_mode(False):
        return module.to(device=device, dtype=dtype)


def prediction_type(model_sampling) -> str:
    """'eps' for a noise-predicting model; otherwise what it predicts ('v', 'x0', 'flow', ...)."""
    kind = type(model_sampling)
    if (
        isinstance(model_sampling, comfy.model_sampling.EPS)
        and kind.calculate_denoised is comfy.model_sampling.EPS.calculate_denoised
        and kind.calculate_input is comfy.model_sampling.EPS.calculate_input
    ):
        return "eps"
    if isinstance(model_sampling, comfy.model_sampling.V_PREDICTION):
        return "v"
    if isinstance(model_sampling, comfy.model_sampling.X0):
        return "x0"
    if isinstance(model_sampling, comfy.model_sampling.CONST):
        return "flow"
    return kind.__name__


def check_trainable_model(model, family: str = "SD1.x", examples: str = "SD1.4 or SD1.5") -> None:
    """Refuse what CGDR mapper training cannot use: a UNet that is not text-to-image or not eps-predicting.

    family / examples name the model family in the messages ("SDXL", "SDXL base 1.0").
    """
    base = model.model
    channels = base.model_config.unet_config.get("in_channels", 4)
    if channels != 4:
        raise F2DError(
            f"Mapper training needs a text-to-image {family} UNet (4 latent input channels); this MODEL's UNet takes "
            f"{channels} (an inpainting or instruct-pix2pix checkpoint). Train with its base checkpoint (e.g. "
            f"{examples.split(' or ')[-1]}): the mapper it gives also works with the inpainting checkpoint."
        )
    predicts = prediction_type(model.get_model_object("model_sampling"))
    if predicts != "eps":
        raise F2DError(
            f"Mapper training needs an eps-prediction {family} model (the CGDR loss compares predicted noise); this "
            f"MODEL predicts {predicts} (a v-prediction checkpoint, or a ModelSamplingDiscrete node set to it). "
            f"Train with an eps-prediction checkpoint such as {examples}."
        )


def _cpu_reason() -> str:
    """Why ComfyUI keeps the UNet's weights on the CPU."""
    if comfy_args.cpu:
        return "ComfyUI was started with --cpu"
    if comfy.model_management.vram_state == comfy.model_management.VRAMState.NO_VRAM:
        return "ComfyUI was started with --novram, which keeps the model's weights in system memory"
    return "ComfyUI left this model's weights in system memory (--lowvram, or not enough free VRAM)"


_checkpointed_classes: dict[type, type] = {}


def _checkpointed_class(cls: type) -> type:
    """A subclass of `cls` whose forward recomputes its activations in backward (same name; isinstance holds)."""
    if cls not in _checkpointed_classes:

        def forward(self, *args, **kwargs):
            return checkpoint(super(subclass, self).forward, *args, use_reentrant=False, **kwargs)

        namespace = {"forward": forward, "__module__": cls.__module__, "_f2d_checkpointed": True}
        subclass = type(cls.__name__, (cls,), namespace)
        _checkpointed_classes[cls] = subclass
    return _checkpointed_classes[cls]


def check_checkpoint_granularity(granularity: str) -> str:
    """`granularity` when it is a key of CHECKPOINT_GRANULARITIES; else F2DError naming the choices."""
    if granularity not in CHECKPOINT_GRANULARITIES:
        raise F2DError(
            f"checkpoint_granularity must be one of {tuple(CHECKPOINT_GRANULARITIES)}, not {granularity!r}: "
            "'block' recomputes each ResBlock and SpatialTransformer, 'transformer_block' each transformer block."
        )
    return granularity


def enable_gradient_checkpointing(unet: nn.Module, granularity: str = "block") -> int:
    """Recompute the activations of the `granularity`'s blocks in backward (less memory, ~30% more compute).

    granularity: a key of CHECKPOINT_GRANULARITIES ("block": ResBlock / SpatialTransformer; "transformer_block":
    ResBlock / BasicTransformerBlock, a smaller recomputed peak). Each block's class is swapped for a
    checkpointing subclass: unlike a patched `block.forward` (a bound method kept in the block's own __dict__),
    this makes no reference cycle, so the copy is freed as soon as the last reference goes. Returns the number
    of blocks. Raises F2DError for an unknown granularity.
    """
    names = CHECKPOINT_GRANULARITIES[check_checkpoint_granularity(granularity)]
    count = 0
    for block in unet.modules():
        if type(block).__name__ in names and not getattr(type(block), "_f2d_checkpointed", False):
            block.__class__ = _checkpointed_class(type(block))
            count += 1
    return count


@dataclass
class TrainingCopies:
    """What `training_copies` gives a backend: its private UNet and text-model copies on the training device."""

    unet: nn.Module  # in the training dtype
    text_models: list[nn.Module]  # in their loaded dtype (fp32 compute through ComfyUI's manual_cast)
    training_dtype: torch.dtype
    device: torch.device
    checkpointing: str | None  # the granularity gradient checkpointing recomputes at; None when it is off


def training_copies(
    model,
    clip,
    frozen: Sequence[nn.Module],
    training_dtype: str = "auto",
    gradient_checkpointing: bool = False,
    checkpoint_granularity: str = "block",
    unet_label: str = "UNet",
) -> TrainingCopies:
    """Private trainable copies of `frozen` (the MODEL's UNet first, then CLIP's text models), for either family.

    Loads MODEL and CLIP as ComfyUI does (their weight patches, e.g. a LoRA, applied), copies each module to
    the CPU in its own dtype (`host_copy`), unloads the user's models, then moves the copies to the device the
    UNet was on: the UNet in the resolved `training_dtype` (precision.resolve_training_dtype), the text models
    in theirs. With `gradient_checkpointing`, the UNet copy's blocks of `checkpoint_granularity` recompute in
    backward. Logs the CPU-training warning (placement.cpu_training_warning) and the dtypes (`unet_label`
    names the UNet in that line). Raises F2DError for an unknown granularity or training dtype.
    """
    check_checkpoint_granularity(checkpoint_granularity)  # before minutes of loading and copying
    comfy.model_management.load_models_gpu([model, clip.patcher], force_full_load=True)  # applies patches
    device = next(frozen[0].parameters()).device
    dtype = resolve_training_dtype(training_dtype, device)
    copies = [host_copy(m) for m in frozen]
    # Training runs on the private copies: ComfyUI moves the originals off the device before they arrive.
    comfy.model_management.unload_all_models()
    comfy.model_management.soft_empty_cache()
    unet = to_training_device(copies[0], device, dtype)
    text_models = [to_training_device(m, device) for m in copies[1:]]
    del copies
    if gradient_checkpointing:
        blocks = enable_gradient_checkpointing(unet, checkpoint_granularity)
        log.info("gradient checkpointing on %d UNet blocks (%s)", blocks, checkpoint_granularity)
    device = next(unet.parameters()).device
    gpu_expected = torch.cuda.is_available() or comfy.model_management.get_torch_device().type != "cpu"
    warning = cpu_training_warning(device, gpu_expected, _cpu_reason())
    if warning is not None:
        log.warning("%s", warning)
    weights = dtype_name(next(frozen[0].parameters()).dtype)
    log.info("%s weights in %s; training computes in %s", unet_label, weights, dtype_name(dtype))
    return TrainingCopies(unet, text_models, dtype, device, checkpoint_granularity if gradient_checkpointing else None)


def computation_record(backend) -> dict[str, object]:
    """How a backend computes, for a trained mapper's `training_settings` (the node's and the CLI's alike):
    `training_dtype` as resolved ("fp32", "bf16", "fp16"), `gradient_checkpointing` and `checkpoint_granularity`
    (None when checkpointing is off)."""
    return {
        "training_dtype": dtype_name(backend.training_dtype),
        "gradient_checkpointing": backend.checkpointing is not None,
        "checkpoint_granularity": backend.checkpointing,
    }


_FORWARD_ONLY_ATTENTION = {"attention_sage": "--use-sage-attention", "attention_flash": "--use-flash-attention"}


def check_trainable_attention() -> None:
    """F2DError when this ComfyUI cannot take the training override and its global attention has no backward.

    ComfyUI honours `optimized_attention_override` since its `wrap_attn` (PR #9639, autumn 2025);
    an older one always runs its global attention, and sage / flash attention cannot backpropagate.
    """
    name = getattr(comfy_attention.optimized_attention, "__name__", "")
    if not hasattr(comfy_attention, "wrap_attn") and name in _FORWARD_ONLY_ATTENTION:
        raise F2DError(
            f"ComfyUI was started with {_FORWARD_ONLY_ATTENTION[name]}, whose attention has no backward, and this "
            "ComfyUI is too old to let training use another one. Update ComfyUI, or start it without that flag "
            "to train (sampling works either way)."
        )


def differentiable_attention(func, *args, **kwargs) -> torch.Tensor:
    """`optimized_attention_override` for training: PyTorch's SDPA (has a backward), whatever ComfyUI's global is.

    ComfyUI's `wrap_attn` calls it as `override(func, q, k, v, heads, ...)`; `func` (the global
    backend, e.g. sage or flash attention, which may be forward-only) is not used.
    """
    return attention_pytorch(*args, **kwargs)


def dropped_model_patches(model) -> list[str]:
    """The MODEL's patches training does not run, as "name (count)" for a message; [] when there are none.

    Weight patches (a LoRA from Load LoRA, merged weights) are in the UNet copy (`load_models_gpu` applies
    them before the copy is taken). What ComfyUI runs around or inside the UNet's forward only while it
    samples is not: transformer_options' block and attention patches (FreeU's output_block_patch, an
    attention replacement), `model_function_wrapper`, the MODEL's wrappers, and hook patches (a LoRA hook).
    """
    options = getattr(model, "model_options", None) or {}
    transformer = options.get("transformer_options") or {}
    dropped = [f"{name} ({len(items)})" for name, items in sorted((transformer.get("patches") or {}).items()) if items]
    replaced = transformer.get("patches_replace") or {}
    dropped += [f"{name} replacement ({len(blocks)} block(s))" for name, blocks in sorted(replaced.items()) if blocks]
    if options.get("model_function_wrapper") is not None:
        dropped.append("model_function_wrapper")
    wrappers = {**(transformer.get("wrappers") or {}), **(getattr(model, "wrappers", None) or {})}
    dropped += [f"{kind} wrapper" for kind, by_key in sorted(wrappers.items()) if any(by_key.values())]
    if getattr(model, "hook_patches", None):
        dropped.append(f"hook patches ({len(model.hook_patches)}, e.g. a LoRA hook)")
    return dropped


class ComfyDiffusionBackend:
    """`f2d_core.training.DiffusionBackend` for an SD1.x (eps-prediction) ComfyUI MODEL and CLIP."""

    family = "sd1"

    def __init__(
        self,
        model,
        clip,
        gradient_checkpointing: bool = False,
        identifier: str = DEFAULT_IDENTIFIER,
        training_dtype: str = "auto",
        checkpoint_granularity: str = "block",
    ) -> None:
        check_sd1_clip(clip, clip.tokenize(identifier))
        check_trainable_model(model)
        check_trainable_attention()
        dropped = dropped_model_patches(model)
        if dropped:
            log.warning(
                "Training runs the UNet without these patches of its MODEL: %s. Weight patches (a LoRA from Load "
                "LoRA) are trained with; attention and block patches, wrappers and hooks run only while sampling, "
                "so the mapper learns for the UNet without them. Connect the MODEL from before those nodes to "
                "train for the plain UNet, or keep them knowing they are left out.",
                ", ".join(dropped),
            )
        base = model.model
        self._frozen = (base.diffusion_model, clip.cond_stage_model.clip_l.transformer.text_model)
        copies = training_copies(
            model, clip, self._frozen, training_dtype, gradient_checkpointing, checkpoint_granularity
        )
        self.unet, (self.text_model,) = copies.unet, copies.text_models
        self.training_dtype, self.device = copies.training_dtype, copies.device
        self.checkpointing = copies.checkpointing  # granularity, None when off
        self.model_sampling = model.get_model_object("model_sampling")  # honours ModelSamplingDiscrete patches
        self.latent_format = base.latent_format
        self.clip, self.identifier = clip, identifier
        self.layer_idx = clip.layer_idx  # CLIPSetLastLayer (clip skip) is honoured, as in CLIPTextEncode

    def frozen_fingerprint(self) -> str:
        """Hash of the user's UNet and text encoder weights (SDXL: both towers), not the private copies."""
        return "".join(module_fingerprint(m) for m in self._frozen)

    def _token_ids(self, prompt: str) -> tuple[torch.Tensor, list[int]]:
        chunks = self.clip.tokenize(prompt)["l"]
        if len(chunks) != 1:
            raise F2DError(f"The training prompt {prompt!r} is longer than 75 tokens; shorten it.")
        ids = torch.tensor([int(t) for t, *_ in chunks[0]], device=self.device)
        occurrences = find_identifier(chunks, identifier_ids(self.clip, self.identifier), special_tokens(self.clip))
        return ids, [pos for occurrence in occurrences for _, pos in occurrence]

    def text_context(self, prompt: str, s_star: torch.Tensor | None = None, pooled: bool = False) -> TextCond:
        """Last-layer CLIP-L states [B, 77, 768] (no pooled vector: SD1 has none); S* [B, 2, 768] replaces
        token + position embedding at the identifier."""
        ids, positions = self._token_ids(prompt)
        embeddings = self.text_model.embeddings
        x = embeddings.token_embedding(ids[None], out_dtype=torch.float32)
        x = x + embeddings.position_embedding.weight.to(self.device, torch.float32)[None]
        if s_star is not None:
            if len(positions) % 2 or not positions:
                raise F2DError(f"The training prompt {prompt!r} must contain the identifier {self.identifier!r}.")
            x = x.expand(s_star.shape[0], -1, -1).clone()
            for k, pos in enumerate(positions):
                x[:, pos] = s_star[:, k % 2].to(x.dtype)
        return TextCond(self._encode(x))

    def _encode(self, x: torch.Tensor) -> torch.Tensor:
        """The text transformer without in-place adds, stopping at the clip-skip layer like ComfyUI."""
        layers = self.text_model.encoder.layers
        last = len(layers) - 1 if self.layer_idx is None else len(layers) + self.layer_idx
        mask = torch.full((x.shape[1], x.shape[1]), -torch.finfo(x.dtype).max, dtype=x.dtype, device=x.device)
        mask = mask.triu_(1)
        attention = optimized_attention_for_device(x.device, mask=True, small_input=True)
        for i, layer in enumerate(layers):
            x = x + layer.self_attn(layer.layer_norm1(x), mask, attention)
            x = x + layer.mlp(layer.layer_norm2(x))
            if i == last:
                break
        return self.text_model.final_layer_norm(x)

    def noisy_latents(self, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
        """z_t = x0 + sigma(t) * eps in ComfyUI's sigma parameterisation (x0 scaled as the model expects)."""
        sigma = self.model_sampling.sigma(timesteps)
        x0 = self.latent_format.process_in(latents.float())
        return self.model_sampling.noise_scaling(sigma, noise.float(), x0)

    def unet_inputs(self, noisy: torch.Tensor, timesteps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """(x_in in the training dtype, the model's timestep, fresh transformer_options) for z_t."""
        sigma = self.model_sampling.sigma(timesteps)
        x_in = self.model_sampling.calculate_input(sigma, noisy).to(self.training_dtype)
        t = self.model_sampling.timestep(sigma).float()
        return x_in, t, {"optimized_attention_override": differentiable_attention}  # a fresh dict: the UNet writes

    def predict_noise(
        self, noisy: torch.Tensor, timesteps: torch.Tensor, cond: TextCond, size_ids: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The UNet's eps for z_t (what `apply_model` computes before turning it into x0); size_ids unused."""
        x_in, t, options = self.unet_inputs(noisy, timesteps)
        return self.unet(x_in, t, context=cond.context.to(self.training_dtype), transformer_options=options).float()
